/**
 * The one source of data for every widget: a single Poll (standby while the tab is hidden, back-off on
 * errors), so any number of views costs one GPU request per interval. Steady state: GET gpus; the
 * history is read once at start and after a gap, kernels every KERNELS_EVERY seconds, environments every
 * ENVIRONMENTS_EVERY seconds (every tick while an image is being pulled, or the notebook in focus waits for a
 * kernel, whose image may be the one being pulled).
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { History, sampleOf } from './history';
import { NotebookNames } from './sessions';
import {
  ApiError,
  EnvironmentsStatus,
  GpuStatus,
  ICurrentNotebook,
  IEnvironmentsReply,
  IGpuApi,
  IGpuModel,
  IGpusReply,
  IKernel,
  IKernelExit,
  IPrepareState,
  ISeries,
  ISessionSource,
  ISettings
} from './tokens';

export const DEFAULT_SETTINGS: ISettings = { refreshInterval: 2, historyLength: 60 };
const ENVIRONMENTS_EVERY = 30; // seconds
const KERNELS_EVERY = 10; // seconds: how soon a kernel restarted by its memory limit is reported
const MAX_BACKOFF = 60_000; // ms

export interface IModelOptions {
  api: IGpuApi;
  sessions?: ISessionSource | null;
  settings?: Partial<ISettings>;
  /** Milliseconds; tests pass a clock. */
  now?: () => number;
  /** False in tests that drive `refresh()` themselves. */
  autoStart?: boolean;
}

export class GpuModel implements IGpuModel {
  constructor(options: IModelOptions) {
    this._api = options.api;
    this._now = options.now ?? Date.now;
    this._settings = { ...DEFAULT_SETTINGS, ...options.settings };
    this._history = new History(this._settings.historyLength);
    this._names = new NotebookNames(options.sessions ?? null, () => this._changed.emit());
    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: this._settings.refreshInterval * 1000, backoff: true, max: MAX_BACKOFF },
      name: 'jupyter-gpuenv:gpus',
      standby: 'when-hidden',
      auto: options.autoStart ?? true
    });
    this._poll.ticked.connect((_, state) => {
      const retry = state.phase === 'rejected' ? state.interval / 1000 : null;
      if (retry !== this._retryIn) {
        this._retryIn = retry;
        this._changed.emit();
      }
    });
  }

  get changed(): ISignal<IGpuModel, void> {
    return this._changed;
  }

  get status(): GpuStatus {
    return this._status;
  }

  get environments(): EnvironmentsStatus {
    return this._environments;
  }

  get retryIn(): number | null {
    return this._retryIn;
  }

  /** Requests made so far (tests and the bench read it). */
  get requests(): number {
    return this._requests;
  }

  get current(): ICurrentNotebook | null {
    return this._current;
  }

  set current(value: ICurrentNotebook | null) {
    const old = this._current;
    if (
      old?.path !== value?.path ||
      old?.kernelId !== value?.kernelId ||
      old?.kernelName !== value?.kernelName ||
      (old?.starting ?? null) !== (value?.starting ?? null)
    ) {
      const startsNow = !!value?.starting && !old?.starting;
      this._current = value;
      this._changed.emit();
      if (startsNow && !this.isDisposed) {
        void this.refresh(); // its kernel may wait for an image: show the pull without waiting for the next read
      }
    }
  }

  async prepare(name: string): Promise<void> {
    if (this.prepareState(name).busy) {
      return;
    }
    this._prepares.set(name, { busy: true, error: null });
    this._changed.emit();
    try {
      this._requests++;
      await this._api.pull(name);
      this._prepares.delete(name);
    } catch (error) {
      this._prepares.set(name, { busy: false, error: messageOf(error) });
    }
    this._environmentsAt = null; // read them now: the pull's progress, or the image that is there
    this._changed.emit();
    if (!this.isDisposed) {
      await this.refresh();
    }
  }

  prepareState(name: string): IPrepareState {
    return this._prepares.get(name) ?? { busy: false, error: null };
  }

  series(index: number): ISeries {
    return this._history.series(index);
  }

  notebookOf(kernelId: string | null): string | null {
    return this._names.pathOf(kernelId);
  }

  kernelMemory(kernelId: string | null): number {
    const reply = this._lastReply;
    if (!kernelId || !reply) {
      return 0;
    }
    let total = 0;
    for (const gpu of reply.gpus ?? []) {
      for (const p of gpu.processes ?? []) {
        if (p.kernel_id === kernelId) {
          total += p.used_memory ?? 0;
        }
      }
    }
    return total;
  }

  get kernels(): IKernel[] {
    return this._kernels;
  }

  lastExit(kernelId: string | null): IKernelExit | null {
    return (kernelId && this._kernels.find(k => k.kernel_id === kernelId)?.last_exit) || null;
  }

  configure(settings: Partial<ISettings>): void {
    this._settings = { ...this._settings, ...settings };
    this._history.length = this._settings.historyLength;
    const interval = this._settings.refreshInterval * 1000;
    if (interval !== this._poll.frequency.interval) {
      this._poll.frequency = { ...this._poll.frequency, interval };
    }
    this._changed.emit();
  }

  /** Read now (the panel's refresh button); the poll continues from here. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** One tick, for tests driving the model without timers. */
  tick(): Promise<void> {
    return this._tick();
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    this._poll.dispose();
    this._names.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    const now = this._now();
    // a tick that comes late (the tab was hidden, the server was away) leaves a hole the history fills
    const late = this._lastTick !== null && now - this._lastTick > 2.5 * this._settings.refreshInterval * 1000;
    this._lastTick = now;
    let reply: IGpusReply;
    try {
      this._requests++;
      reply = await this._api.gpus();
    } catch (error) {
      this._status = statusOfError(error, this._lastReply);
      if (this._environmentsDue(now)) {
        await this._readEnvironments(now); // so that section, too, says what is wrong instead of loading
      }
      this._changed.emit();
      throw error; // the Poll backs off
    }
    this._lastReply = reply;
    this._status = statusOf(reply);
    if (this._status.kind === 'ready') {
      if (this._history.lastTime === null || late) {
        await this._readHistory();
      }
      const sample = sampleOf(reply);
      if (sample) {
        this._history.add([sample]);
      }
      this._names.lookUp(kernelIdsOf(reply));
    }
    if (this._kernelsAt === null || now - this._kernelsAt >= KERNELS_EVERY * 1000) {
      await this._readKernels(now);
    }
    if (this._environmentsDue(now)) {
      await this._readEnvironments(now);
    }
    this._changed.emit();
  }

  private async _readKernels(now: number): Promise<void> {
    this._kernelsAt = now;
    try {
      this._requests++;
      this._kernels = (await this._api.kernels()).kernels ?? [];
      this._names.lookUp(this._kernels.filter(k => k.last_exit).map(k => k.kernel_id)); // to name the notices
    } catch {
      // kernels only add warnings to the panel: keep the last list, the GPU section reports the server
    }
  }

  private async _readHistory(): Promise<void> {
    try {
      this._requests++;
      const history = await this._api.history(this._history.lastTime ?? undefined);
      this._history.add(history.samples);
    } catch {
      // the sparkline is decoration: it fills up from the snapshots instead
    }
  }

  private _environmentsDue(now: number): boolean {
    const env = this._environments;
    if (this._environmentsAt === null) {
      return true;
    }
    if (env.kind === 'ready' && (env.reply.environments ?? []).some(e => e.state === 'pulling')) {
      return true;
    }
    if (this._current?.starting) {
      return true;
    }
    return now - this._environmentsAt >= ENVIRONMENTS_EVERY * 1000;
  }

  private async _readEnvironments(now: number): Promise<void> {
    this._environmentsAt = now;
    try {
      this._requests++;
      const reply: IEnvironmentsReply = await this._api.environments();
      this._environments = { kind: 'ready', reply };
    } catch (error) {
      this._environments =
        error instanceof ApiError && error.status === 404
          ? { kind: 'not-available' }
          : { kind: 'error', message: messageOf(error) };
    }
  }

  private _api: IGpuApi;
  private _now: () => number;
  private _settings: ISettings;
  private _history: History;
  private _names: NotebookNames;
  private _poll: Poll;
  private _changed = new Signal<IGpuModel, void>(this);
  private _status: GpuStatus = { kind: 'loading' };
  private _environments: EnvironmentsStatus = { kind: 'loading' };
  private _environmentsAt: number | null = null;
  private _kernels: IKernel[] = [];
  private _kernelsAt: number | null = null;
  private _lastReply: IGpusReply | null = null;
  private _lastTick: number | null = null;
  private _retryIn: number | null = null;
  private _current: ICurrentNotebook | null = null;
  private _prepares = new Map<string, IPrepareState>();
  private _requests = 0;
}

export function statusOf(reply: IGpusReply): GpuStatus {
  if (reply.available) {
    return { kind: 'ready', reply };
  }
  if (!reply.sampled_at) {
    return { kind: 'loading' }; // the server's sampler has not finished its first read
  }
  return { kind: 'no-gpu', reason: reply.reason ?? '' };
}

export function statusOfError(error: unknown, last: IGpusReply | null): GpuStatus {
  if (error instanceof ApiError && error.status === 404) {
    return { kind: 'no-extension' };
  }
  return { kind: 'error', message: messageOf(error), reply: last };
}

function messageOf(error: unknown): string {
  if (error instanceof ApiError) {
    return error.status === 0
      ? 'The server cannot be reached.'
      : `The server answered ${error.status}: ${error.message}`;
  }
  return error instanceof Error ? error.message : String(error);
}

function kernelIdsOf(reply: IGpusReply): string[] {
  const ids: string[] = [];
  for (const gpu of reply.gpus ?? []) {
    for (const p of gpu.processes ?? []) {
      if (p.kernel_id) {
        ids.push(p.kernel_id);
      }
    }
  }
  return ids;
}
