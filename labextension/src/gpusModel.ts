/**
 * The GPUs and their history: GET gpus once per refresh interval, by its own Poll; GET gpus/history at the start
 * and after a gap (the tab was hidden, the server was away), so steady polling costs one request per interval.
 */
import { History, sampleOf } from './history';
import { PolledResource } from './polledResource';
import type { GpuStatus, ISeries } from './tokens';
import { ApiError, errorText, IGpuApi, IGpuProcess, IGpusReply } from './wire';

export interface IGpusOptions {
  api: IGpuApi;
  /** Seconds between two reads. */
  refreshInterval: number;
  /** Samples kept per GPU for its chart. */
  historyLength: number;
  /** Milliseconds; tests pass a clock. */
  now?: () => number;
  autoStart?: boolean;
}

export class GpusModel extends PolledResource {
  constructor(options: IGpusOptions) {
    super('gpus', options.refreshInterval * 1000, options.autoStart ?? true);
    this._api = options.api;
    this._now = options.now ?? Date.now;
    this._refreshInterval = options.refreshInterval;
    this._history = new History(options.historyLength);
  }

  get status(): GpuStatus {
    return this._status;
  }

  /** History series by GPU index (the cards' charts). */
  series(index: number): ISeries {
    return this._history.series(index);
  }

  /** GPU memory (bytes) held by a kernel's processes over every GPU, as last read; 0 when none. */
  kernelMemory(kernelId: string | null): number {
    let total = 0;
    for (const p of this._processes()) {
      if (kernelId && p.kernel_id === kernelId) {
        total += p.used_memory ?? 0;
      }
    }
    return total;
  }

  /** The kernels that GPU processes belong to, as last read. */
  kernelIds(): string[] {
    return this._processes().flatMap(p => (p.kernel_id ? [p.kernel_id] : []));
  }

  configure(settings: { refreshInterval: number; historyLength: number }): void {
    this._refreshInterval = settings.refreshInterval;
    this._history.length = settings.historyLength;
    this.setPace(settings.refreshInterval * 1000);
    this.emitChanged();
  }

  /** GET gpus; throws its error after recording it, so the Poll backs off. */
  protected async read(): Promise<void> {
    const now = this._now();
    // a read that comes late (the tab was hidden, the server was away) leaves a hole the history fills
    const late = this._readAt !== null && now - this._readAt > 2.5 * this._refreshInterval * 1000;
    this._readAt = now;
    let reply: IGpusReply;
    try {
      reply = await this._api.gpus();
    } catch (error) {
      this._status = statusOfError(error, this._lastReply);
      this.emitChanged();
      throw error;
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
    }
    this.emitChanged();
  }

  private async _readHistory(): Promise<void> {
    try {
      const history = await this._api.history(this._history.lastTime ?? undefined);
      this._history.window = history.window ?? null; // the charts cover the server's whole window
      this._history.add(history.samples);
    } catch {
      // the sparkline is decoration: it fills up from the snapshots instead
    }
  }

  private _processes(): IGpuProcess[] {
    return (this._lastReply?.gpus ?? []).flatMap(gpu => gpu.processes ?? []);
  }

  private _api: IGpuApi;
  private _now: () => number;
  private _refreshInterval: number; // seconds
  private _history: History;
  private _status: GpuStatus = { kind: 'loading' };
  private _lastReply: IGpusReply | null = null;
  private _readAt: number | null = null; // when the GPUs were last read
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
  return { kind: 'error', message: errorText(error), reply: last };
}
