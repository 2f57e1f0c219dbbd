/**
 * This server's kernels and the park, resume and restart requests made on them: GET kernels every KERNELS_EVERY
 * (how soon a kernel restarted by its memory limit is reported), by its own Poll; every SETTLE_INTERVAL while a
 * kernel parks or resumes, or a cell was just run in a parked one, until it has settled.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { parkErrorText, ParkAction, parkState } from './park';
import { PolledResource } from './polledResource';
import type { IParkRequest, KernelsStatus } from './tokens';
import { errorText, IGpuApi, IKernel, IKernelExit } from './wire';

export const KERNELS_EVERY = 10_000; // ms
export const SETTLE_INTERVAL = 500; // ms
const EXPECT_RESUME_FOR = 15_000; // ms: after a cell runs in a parked kernel, until the server says it resumes

export interface IKernelsOptions {
  api: IGpuApi;
  /** Seconds between two GPU reads: the kernels are not read more often than that, nor settle more slowly. */
  refreshInterval: number;
  /** Milliseconds between reads while a kernel parks or resumes; tests shorten it. */
  settleInterval?: number;
  /** Milliseconds; tests pass a clock. */
  now?: () => number;
  autoStart?: boolean;
}

export class KernelsModel extends PolledResource {
  constructor(options: IKernelsOptions) {
    super('kernels', Math.max(KERNELS_EVERY, options.refreshInterval * 1000), options.autoStart ?? true);
    this._api = options.api;
    this._now = options.now ?? Date.now;
    this._refreshInterval = options.refreshInterval;
    this._settleInterval = options.settleInterval ?? SETTLE_INTERVAL;
  }

  /** A kernel's GPU memory moved (its park state changed, or a park, resume or restart ended): read the GPUs. */
  get memoryMoved(): ISignal<this, void> {
    return this._memoryMoved;
  }

  /** The running kernels, as last read; empty until then. */
  get kernels(): IKernel[] {
    return this._kernels;
  }

  get status(): KernelsStatus {
    return this._status;
  }

  kernel(kernelId: string | null): IKernel | null {
    return (kernelId && this._kernels.find(k => k.kernel_id === kernelId)) || null;
  }

  lastExit(kernelId: string | null): IKernelExit | null {
    return this.kernel(kernelId)?.last_exit || null;
  }

  park(kernelId: string): Promise<void> {
    return this._request(kernelId, 'park', () => this._api.park(kernelId));
  }

  resume(kernelId: string): Promise<void> {
    return this._request(kernelId, 'resume', () => this._api.resume(kernelId));
  }

  restart(kernelId: string): Promise<void> {
    return this._request(kernelId, 'restart', () => this._api.restart(kernelId));
  }

  parkRequest(kernelId: string): IParkRequest {
    return this._requests.get(kernelId) ?? { busy: null, error: null };
  }

  /** A cell was run in a parked kernel: the server resumes it, so read it often until it has. */
  expectResume(kernelId: string): void {
    if (parkState(this.kernel(kernelId)) !== 'parked' || this.isDisposed) {
      return;
    }
    this._expecting.set(kernelId, this._now() + EXPECT_RESUME_FOR);
    this._pace();
    void this.refresh();
  }

  configure(refreshInterval: number): void {
    this._refreshInterval = refreshInterval;
    this._pace();
  }

  /** GET kernels; on an error the last list stays, said not to be current, and the Poll backs off. */
  protected async read(): Promise<void> {
    try {
      const reply = await this._api.kernels();
      this._setKernels(reply.kernels ?? []);
      this._status = { kind: 'ready', parking: reply.parking ?? null };
    } catch (error) {
      const s = this._status;
      this._status = { kind: 'error', message: errorText(error), parking: s.kind === 'loading' ? null : s.parking };
      this._pace();
      this.emitChanged();
      throw error;
    }
    this._pace();
    this.emitChanged();
  }

  /** New rows; a kernel whose park state changed moved its GPU memory. */
  private _setKernels(kernels: IKernel[]): void {
    const before = new Map(this._kernels.map(k => [k.kernel_id, parkState(k)]));
    const moved = kernels.some(k => before.has(k.kernel_id) && before.get(k.kernel_id) !== parkState(k));
    this._kernels = kernels;
    for (const id of this._requests.keys()) {
      if (!this._requests.get(id)?.busy && !kernels.some(k => k.kernel_id === id)) {
        this._requests.delete(id); // the kernel is gone, and its last error with it
      }
    }
    if (moved) {
      this._memoryMoved.emit();
    }
  }

  private async _request(kernelId: string, action: ParkAction, call: () => Promise<IKernel | void>): Promise<void> {
    const request = this.parkRequest(kernelId);
    if (request.busy) {
      return;
    }
    this._requests.set(kernelId, { busy: action, error: request.error });
    this.emitChanged();
    try {
      const row = await call();
      if (row && row.kernel_id === kernelId && row.park) {
        this._setKernels(this._kernels.map(k => (k.kernel_id === kernelId ? row : k)));
      }
      this._requests.delete(kernelId);
    } catch (error) {
      this._requests.set(kernelId, { busy: null, error: parkErrorText(action, error) });
    }
    if (this.isDisposed) {
      return;
    }
    // its memory moved (or it restarted): the GPUs and every kernel are read now, then often while it settles
    this._memoryMoved.emit();
    this._pace();
    this.emitChanged();
    void this.refresh();
  }

  /** Whether a kernel is parking or resuming, or a cell was just run in a parked one. */
  private _settling(): boolean {
    const now = this._now();
    for (const [id, until] of this._expecting) {
      if (now > until || parkState(this.kernel(id)) !== 'parked') {
        this._expecting.delete(id);
      }
    }
    return this._expecting.size > 0 || this._kernels.some(k => ['parking', 'resuming'].includes(parkState(k)));
  }

  private _pace(): void {
    const interval = this._refreshInterval * 1000;
    this.setPace(this._settling() ? Math.min(this._settleInterval, interval) : Math.max(KERNELS_EVERY, interval));
  }

  private _api: IGpuApi;
  private _now: () => number;
  private _refreshInterval: number; // seconds
  private _settleInterval: number; // ms
  private _memoryMoved = new Signal<this, void>(this);
  private _kernels: IKernel[] = [];
  private _status: KernelsStatus = { kind: 'loading' };
  private _requests = new Map<string, IParkRequest>();
  private _expecting = new Map<string, number>(); // kernel id -> until when (ms) a resume is expected
}
