/**
 * The container environments and the pulls asked for ("Prepare"): GET environments every ENVIRONMENTS_EVERY, by
 * its own Poll; once per refresh interval while an image is being pulled or the notebook in focus waits for a
 * kernel (whose image may be the one being pulled). A failed read keeps the last list and is tried again after
 * ENVIRONMENTS_RETRY; once failures have repeated (the section then says so), the Poll backs off.
 */
import { EnvironmentsReads, FAILURES_BEFORE_DOWN } from './environments';
import { PolledResource } from './polledResource';
import type { EnvironmentsStatus, IPrepareState } from './tokens';
import { ApiError, errorText, IGpuApi } from './wire';

export const ENVIRONMENTS_EVERY = 30_000; // ms
export const ENVIRONMENTS_RETRY = 5_000; // ms: after a failed read, so a slow engine call is not reported for long

export interface IEnvironmentsOptions {
  api: IGpuApi;
  /** Seconds between two GPU reads: the environments are not read more often than that. */
  refreshInterval: number;
  autoStart?: boolean;
}

export class EnvironmentsModel extends PolledResource {
  constructor(options: IEnvironmentsOptions) {
    super('environments', Math.max(ENVIRONMENTS_EVERY, options.refreshInterval * 1000), options.autoStart ?? true);
    this._api = options.api;
    this._refreshInterval = options.refreshInterval;
  }

  get status(): EnvironmentsStatus {
    return this._reads.status;
  }

  /** Lab is starting a kernel for the notebook in focus: read once per refresh interval until it has. */
  get kernelStarting(): boolean {
    return this._kernelStarting;
  }

  set kernelStarting(value: boolean) {
    if (value !== this._kernelStarting) {
      this._kernelStarting = value;
      this._pace();
    }
  }

  /** Pull an environment's image ahead of its first start; its progress then comes with the next reads. */
  async prepare(name: string): Promise<void> {
    if (this.prepareState(name).busy) {
      return;
    }
    this._prepares.set(name, { busy: true, error: null });
    this.emitChanged();
    try {
      await this._api.pull(name);
      this._prepares.delete(name);
    } catch (error) {
      this._prepares.set(name, { busy: false, error: errorText(error) });
    }
    if (this.isDisposed) {
      return;
    }
    this.emitChanged();
    void this.refresh(); // the pull's progress, or the image that is there now
  }

  prepareState(name: string): IPrepareState {
    return this._prepares.get(name) ?? { busy: false, error: null };
  }

  configure(refreshInterval: number): void {
    this._refreshInterval = refreshInterval;
    this._pace();
  }

  /** GET environments; throws once failures have repeated, so the Poll backs off from there. */
  protected async read(): Promise<void> {
    try {
      this._reads.replied(await this._api.environments());
    } catch (error) {
      const message = errorText(error);
      const notHere = error instanceof ApiError && error.status === 404;
      this._reads.failed(notHere ? { kind: 'not-available' } : { kind: 'error', message }, message);
    }
    this._pace();
    this.emitChanged();
    if (this._reads.failures >= FAILURES_BEFORE_DOWN) {
      throw new Error(`environments: ${this._reads.failures} failed reads in a row`);
    }
  }

  private _pace(): void {
    const status = this._reads.status;
    const pulling = status.kind === 'ready' && (status.reply.environments ?? []).some(e => e.state === 'pulling');
    const interval = this._refreshInterval * 1000;
    let pace = Math.max(this._reads.failures > 0 ? ENVIRONMENTS_RETRY : ENVIRONMENTS_EVERY, interval);
    if (pulling || this._kernelStarting) {
      pace = interval;
    }
    this.setPace(pace);
  }

  private _api: IGpuApi;
  private _refreshInterval: number; // seconds
  private _reads = new EnvironmentsReads();
  private _kernelStarting = false;
  private _prepares = new Map<string, IPrepareState>();
}
