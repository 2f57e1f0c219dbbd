/**
 * The one source of data for every widget: a single Poll (standby while the tab is hidden, back-off on
 * errors), so any number of views costs one GPU request per interval. Steady state: GET gpus; the
 * history is read once at start and after a gap, kernels every KERNELS_EVERY seconds, environments every
 * ENVIRONMENTS_EVERY seconds (every tick while an image is being pulled, or the notebook in focus waits for a
 * kernel, whose image may be the one being pulled). While a kernel is parking or resuming, the poll ticks every
 * SETTLE_INTERVAL and reads the kernels each time (GPUs still once per interval) until it has settled.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { EnvironmentsReads } from './environments';
import { History, sampleOf } from './history';
import { parkErrorText, ParkAction, parkState } from './park';
import { NotebookNames } from './sessions';
import {
  EnvironmentsStatus,
  GpuStatus,
  ICurrentNotebook,
  IGpuModel,
  IParkRequest,
  IPrepareState,
  ISeries,
  ISessionSource,
  ISettings,
  KernelsStatus
} from './tokens';
import { ApiError, IEnvironmentsReply, IGpuApi, IGpusReply, IKernel, IKernelExit } from './wire';

export const DEFAULT_SETTINGS: ISettings = { refreshInterval: 2, historyLength: 600 };
const ENVIRONMENTS_EVERY = 30; // seconds
const ENVIRONMENTS_RETRY = 5; // seconds: after a failed read, so a slow engine call is not reported for long
const KERNELS_EVERY = 10; // seconds: how soon a kernel restarted by its memory limit is reported
const MAX_BACKOFF = 60_000; // ms
const SETTLE_INTERVAL = 500; // ms: how often a kernel that is parking or resuming is read
const EXPECT_RESUME_FOR = 15_000; // ms: after a cell runs in a parked kernel, until the server says it resumes

export interface IModelOptions {
  api: IGpuApi;
  sessions?: ISessionSource | null;
  settings?: Partial<ISettings>;
  /** Milliseconds; tests pass a clock. */
  now?: () => number;
  /** False in tests that drive `refresh()` themselves. */
  autoStart?: boolean;
  /** Milliseconds between reads while a kernel parks or resumes; tests shorten it. */
  settleInterval?: number;
}

export class GpuModel implements IGpuModel {
  constructor(options: IModelOptions) {
    this._api = options.api;
    this._now = options.now ?? Date.now;
    this._settings = { ...DEFAULT_SETTINGS, ...options.settings };
    this._settleInterval = options.settleInterval ?? SETTLE_INTERVAL;
    this._history = new History(this._settings.historyLength);
    this._names = new NotebookNames(options.sessions ?? null, () => this._changed.emit());
    this._sessions = options.sessions ?? null;
    // a notebook switched, restarted or shut down its kernel: its row (and Terminal button) follow at once
    this._sessions?.runningChanged.connect(this._readKernelsNow, this);
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
    return this._envReads.status;
  }

  get retryIn(): number | null {
    return this._retryIn;
  }

  /** Milliseconds until the next tick while all is well: shorter while a kernel parks or resumes. */
  get interval(): number {
    return this._poll.frequency.interval;
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

  get kernelsStatus(): KernelsStatus {
    return this._kernelsStatus;
  }

  kernel(kernelId: string | null): IKernel | null {
    return (kernelId && this._kernels.find(k => k.kernel_id === kernelId)) || null;
  }

  park(kernelId: string): Promise<void> {
    return this._parkRequest(kernelId, 'park', () => this._api.park(kernelId));
  }

  resume(kernelId: string): Promise<void> {
    return this._parkRequest(kernelId, 'resume', () => this._api.resume(kernelId));
  }

  restart(kernelId: string): Promise<void> {
    return this._parkRequest(kernelId, 'restart', () => this._api.restart(kernelId));
  }

  parkRequest(kernelId: string): IParkRequest {
    return this._parkRequests.get(kernelId) ?? { busy: null, error: null };
  }

  expectResume(kernelId: string): void {
    const state = parkState(this.kernel(kernelId));
    if (state !== 'parked' || this.isDisposed) {
      return;
    }
    this._expecting.set(kernelId, this._now() + EXPECT_RESUME_FOR);
    this._pace();
    void this._poll.refresh();
  }

  lastExit(kernelId: string | null): IKernelExit | null {
    return (kernelId && this._kernels.find(k => k.kernel_id === kernelId)?.last_exit) || null;
  }

  configure(settings: Partial<ISettings>): void {
    this._settings = { ...this._settings, ...settings };
    this._history.length = this._settings.historyLength;
    this._pace();
    this._changed.emit();
  }

  /** Read now (the panel's refresh button); the poll continues from here. */
  refresh(): Promise<void> {
    this._gpusNow = true;
    return this._poll.refresh();
  }

  /** Read everything now, kernels and environments too (the "Refresh GPUs" command). */
  reload(): Promise<void> {
    this._kernelsAt = null;
    this._environmentsAt = null;
    return this.refresh();
  }

  /** One tick, for tests driving the model without timers. */
  tick(): Promise<void> {
    return this._tick();
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    this._sessions?.runningChanged.disconnect(this._readKernelsNow, this);
    this._poll.dispose();
    this._names.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    const now = this._now();
    const settling = this._settling(now);
    if (settling) {
      await this._readKernels(now); // first: what they say decides whether the GPUs are read again now
    }
    if (!settling || this._gpusDue(now)) {
      await this._readGpus(now);
    }
    if (!settling && (this._kernelsAt === null || now - this._kernelsAt >= KERNELS_EVERY * 1000)) {
      await this._readKernels(now);
    }
    if (this._environmentsDue(now)) {
      await this._readEnvironments(now);
    }
    this._pace();
    this._changed.emit();
  }

  private _readKernelsNow(): void {
    if (!this.isDisposed) {
      this._kernelsAt = null;
      void this._poll.refresh();
    }
  }

  /** GET gpus; throws its error after recording it, so the Poll backs off. */
  private async _readGpus(now: number): Promise<void> {
    // a read that comes late (the tab was hidden, the server was away) leaves a hole the history fills
    const late = this._gpusAt !== null && now - this._gpusAt > 2.5 * this._settings.refreshInterval * 1000;
    this._gpusAt = now;
    this._gpusNow = false;
    let reply: IGpusReply;
    try {
      this._requests++;
      reply = await this._api.gpus();
    } catch (error) {
      this._status = statusOfError(error, this._lastReply);
      if (this._environmentsDue(now)) {
        await this._readEnvironments(now); // so that section, too, says what is wrong instead of loading
      }
      this._pace();
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
  }

  private async _readKernels(now: number): Promise<void> {
    this._kernelsAt = now;
    try {
      this._requests++;
      const reply = await this._api.kernels();
      this._setKernels(reply.kernels ?? []);
      this._kernelsStatus = { kind: 'ready', parking: reply.parking ?? null };
      // to name the restart notices and the parked kernels, which no GPU process names
      this._names.lookUp(this._kernels.filter(k => k.last_exit || k.park).map(k => k.kernel_id));
    } catch (error) {
      // keep the last list: the GPU section reports the server, the kernels' section says it is not current
      const s = this._kernelsStatus;
      this._kernelsStatus = {
        kind: 'error',
        message: messageOf(error),
        parking: s.kind === 'loading' ? null : s.parking
      };
    }
  }

  /** New rows; a kernel whose park state changed moved its GPU memory, so the GPUs are read again at once. */
  private _setKernels(kernels: IKernel[]): void {
    const before = new Map(this._kernels.map(k => [k.kernel_id, parkState(k)]));
    if (kernels.some(k => before.has(k.kernel_id) && before.get(k.kernel_id) !== parkState(k))) {
      this._gpusNow = true;
    }
    this._kernels = kernels;
    for (const id of this._parkRequests.keys()) {
      if (!this._parkRequests.get(id)?.busy && !kernels.some(k => k.kernel_id === id)) {
        this._parkRequests.delete(id); // the kernel is gone, and its last error with it
      }
    }
  }

  private async _parkRequest(kernelId: string, action: ParkAction, call: () => Promise<IKernel | void>): Promise<void> {
    const request = this.parkRequest(kernelId);
    if (request.busy) {
      return;
    }
    this._parkRequests.set(kernelId, { busy: action, error: request.error });
    this._changed.emit();
    try {
      this._requests++;
      const row = await call();
      if (row && row.kernel_id === kernelId && row.park) {
        this._setKernels(this._kernels.map(k => (k.kernel_id === kernelId ? row : k)));
      }
      this._parkRequests.delete(kernelId);
    } catch (error) {
      this._parkRequests.set(kernelId, { busy: null, error: parkErrorText(action, error) });
    }
    // its memory moved (or it restarted): read the GPUs and every kernel now, then often while it settles
    this._gpusNow = true;
    this._kernelsAt = null;
    this._pace();
    this._changed.emit();
    if (!this.isDisposed) {
      await this._poll.refresh();
    }
  }

  /** Whether a kernel is parking or resuming, or a cell was just run in a parked one. */
  private _settling(now: number): boolean {
    for (const [id, until] of this._expecting) {
      if (now > until || parkState(this.kernel(id)) !== 'parked') {
        this._expecting.delete(id);
      }
    }
    return this._expecting.size > 0 || this._kernels.some(k => ['parking', 'resuming'].includes(parkState(k)));
  }

  /** While settling, the GPUs are still read once per interval, and at once when a kernel's memory moved. */
  private _gpusDue(now: number): boolean {
    const interval = this._settings.refreshInterval * 1000;
    return this._gpusNow || this._gpusAt === null || now - this._gpusAt >= interval - this._settleInterval / 2;
  }

  /** The poll's interval: short while a kernel settles, the setting's otherwise. */
  private _pace(): void {
    const normal = this._settings.refreshInterval * 1000;
    const interval = this._settling(this._now()) ? Math.min(this._settleInterval, normal) : normal;
    if (interval !== this._poll.frequency.interval && !this._poll.isDisposed) {
      this._poll.frequency = { ...this._poll.frequency, interval };
    }
  }

  private async _readHistory(): Promise<void> {
    try {
      this._requests++;
      const history = await this._api.history(this._history.lastTime ?? undefined);
      this._history.window = history.window ?? null; // the charts cover the server's whole window
      this._history.add(history.samples);
    } catch {
      // the sparkline is decoration: it fills up from the snapshots instead
    }
  }

  private _environmentsDue(now: number): boolean {
    const env = this._envReads.status;
    if (this._environmentsAt === null) {
      return true;
    }
    if (this._envReads.failures > 0 && now - this._environmentsAt >= ENVIRONMENTS_RETRY * 1000) {
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
      this._envReads.replied(reply);
    } catch (error) {
      const message = messageOf(error);
      this._envReads.failed(
        error instanceof ApiError && error.status === 404 ? { kind: 'not-available' } : { kind: 'error', message },
        message
      );
    }
  }

  private _api: IGpuApi;
  private _now: () => number;
  private _settings: ISettings;
  private _history: History;
  private _names: NotebookNames;
  private _sessions: ISessionSource | null;
  private _poll: Poll;
  private _changed = new Signal<IGpuModel, void>(this);
  private _status: GpuStatus = { kind: 'loading' };
  private _envReads = new EnvironmentsReads();
  private _environmentsAt: number | null = null;
  private _kernels: IKernel[] = [];
  private _kernelsAt: number | null = null;
  private _kernelsStatus: KernelsStatus = { kind: 'loading' };
  private _parkRequests = new Map<string, IParkRequest>();
  private _expecting = new Map<string, number>(); // kernel id -> until when (ms) a resume is expected
  private _settleInterval: number;
  private _lastReply: IGpusReply | null = null;
  private _gpusAt: number | null = null; // when the GPUs were last read
  private _gpusNow = false; // read them at the next tick, even while settling
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
