/**
 * The panel's model, the one every widget reads (`IGpuModel`). It composes three resources, each read by its own
 * Poll (standby while the tab is hidden, back-off on errors), so any number of views costs one request per
 * resource and interval, and holds the notebook in focus, which the app sets:
 *  - the GPUs and their history (`gpusModel.ts`): once per refresh interval;
 *  - the kernels and park requests (`kernelsModel.ts`): every 10 s, every 500 ms while one parks or resumes;
 *  - the environments and Prepare (`environmentsModel.ts`): every 30 s, once per refresh interval while an image
 *    is pulled or the notebook in focus waits for a kernel.
 * What ties them together is here: a kernel whose GPU memory moved has the GPUs read at once, Lab's session
 * changes have the kernels read at once, and a kernel starting for the notebook in focus has the environments
 * read at once and then often. Processes and kernels are named by their notebooks from Lab's sessions.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { EnvironmentsModel } from './environmentsModel';
import { GpusModel } from './gpusModel';
import { KernelsModel } from './kernelsModel';
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
import type { IGpuApi, IKernel, IKernelExit } from './wire';

export const DEFAULT_SETTINGS: ISettings = { refreshInterval: 2, historyLength: 600 };

export interface IModelOptions {
  api: IGpuApi;
  sessions?: ISessionSource | null;
  settings?: Partial<ISettings>;
  /** Milliseconds; tests pass a clock. */
  now?: () => number;
  /** False in tests that read through `reload()` and `refresh()` alone. */
  autoStart?: boolean;
  /** Milliseconds between kernel reads while one parks or resumes; tests shorten it. */
  settleInterval?: number;
}

export class PanelModel implements IGpuModel {
  constructor(options: IModelOptions) {
    const { api, now, autoStart } = options;
    const settings = { ...DEFAULT_SETTINGS, ...options.settings };
    const { refreshInterval } = settings;
    this._settings = settings;
    this._gpus = new GpusModel({ api, now, autoStart, ...settings });
    this._kernels = new KernelsModel({ api, now, autoStart, refreshInterval, settleInterval: options.settleInterval });
    this._environments = new EnvironmentsModel({ api, autoStart, refreshInterval });
    this._names = new NotebookNames(options.sessions ?? null, () => this._changed.emit());
    this._sessions = options.sessions ?? null;
    this._gpus.changed.connect(this._onGpus, this);
    this._kernels.changed.connect(this._onKernels, this);
    this._kernels.memoryMoved.connect(this._readGpusNow, this);
    this._environments.changed.connect(this._emit, this);
    // a notebook switched, restarted or shut down its kernel: its row (and Terminal button) follow at once
    this._sessions?.runningChanged.connect(this._readKernelsNow, this);
  }

  get changed(): ISignal<IGpuModel, void> {
    return this._changed;
  }

  // -- the GPUs ----------------------------------------------------------------------------------------------

  get status(): GpuStatus {
    return this._gpus.status;
  }

  get retryIn(): number | null {
    return this._gpus.retryIn;
  }

  series(index: number): ISeries {
    return this._gpus.series(index);
  }

  kernelMemory(kernelId: string | null): number {
    return this._gpus.kernelMemory(kernelId);
  }

  notebookOf(kernelId: string | null): string | null {
    return this._names.pathOf(kernelId);
  }

  // -- the kernels -------------------------------------------------------------------------------------------

  get kernels(): IKernel[] {
    return this._kernels.kernels;
  }

  get kernelsStatus(): KernelsStatus {
    return this._kernels.status;
  }

  kernel(kernelId: string | null): IKernel | null {
    return this._kernels.kernel(kernelId);
  }

  lastExit(kernelId: string | null): IKernelExit | null {
    return this._kernels.lastExit(kernelId);
  }

  park(kernelId: string): Promise<void> {
    return this._kernels.park(kernelId);
  }

  resume(kernelId: string): Promise<void> {
    return this._kernels.resume(kernelId);
  }

  restart(kernelId: string): Promise<void> {
    return this._kernels.restart(kernelId);
  }

  parkRequest(kernelId: string): IParkRequest {
    return this._kernels.parkRequest(kernelId);
  }

  expectResume(kernelId: string): void {
    this._kernels.expectResume(kernelId);
  }

  // -- the environments --------------------------------------------------------------------------------------

  get environments(): EnvironmentsStatus {
    return this._environments.status;
  }

  prepare(name: string): Promise<void> {
    return this._environments.prepare(name);
  }

  prepareState(name: string): IPrepareState {
    return this._environments.prepareState(name);
  }

  // -- the notebook in focus ---------------------------------------------------------------------------------

  get current(): ICurrentNotebook | null {
    return this._current;
  }

  set current(value: ICurrentNotebook | null) {
    const old = this._current;
    if (
      old?.path === value?.path &&
      old?.kernelId === value?.kernelId &&
      old?.kernelName === value?.kernelName &&
      (old?.starting ?? null) === (value?.starting ?? null)
    ) {
      return;
    }
    this._current = value;
    this._environments.kernelStarting = !!value?.starting;
    this._changed.emit();
    if (value?.starting && !old?.starting && !this.isDisposed) {
      void this._environments.refresh(); // its kernel may wait for an image: show the pull without waiting
    }
  }

  // -- all of them -------------------------------------------------------------------------------------------

  configure(settings: Partial<ISettings>): void {
    this._settings = { ...this._settings, ...settings };
    this._gpus.configure(this._settings);
    this._kernels.configure(this._settings.refreshInterval);
    this._environments.configure(this._settings.refreshInterval);
    this._changed.emit();
  }

  /** Read the GPUs now (the panel's refresh button); their poll continues from there. */
  refresh(): Promise<void> {
    return this._gpus.refresh();
  }

  /** Read everything now: GPUs, kernels and environments (the "Refresh GPUs" command). */
  async reload(): Promise<void> {
    await Promise.all([this._gpus.refresh(), this._kernels.refresh(), this._environments.refresh()]);
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._sessions?.runningChanged.disconnect(this._readKernelsNow, this);
    this._gpus.dispose();
    this._kernels.dispose();
    this._environments.dispose();
    this._names.dispose();
    Signal.clearData(this);
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _onGpus(): void {
    if (this._gpus.status.kind === 'ready') {
      this._names.lookUp(this._gpus.kernelIds());
    }
    this._changed.emit();
  }

  private _onKernels(): void {
    // to name the restart notices and the parked kernels, which no GPU process names
    this._names.lookUp(this._kernels.kernels.filter(k => k.last_exit || k.park).map(k => k.kernel_id));
    this._changed.emit();
  }

  private _readGpusNow(): void {
    void this._gpus.refresh();
  }

  private _readKernelsNow(): void {
    void this._kernels.refresh();
  }

  private _settings: ISettings;
  private _gpus: GpusModel;
  private _kernels: KernelsModel;
  private _environments: EnvironmentsModel;
  private _names: NotebookNames;
  private _sessions: ISessionSource | null;
  private _changed = new Signal<IGpuModel, void>(this);
  private _current: ICurrentNotebook | null = null;
  private _disposed = false;
}
