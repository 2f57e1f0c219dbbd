/**
 * One REST resource read by its own Poll, as JupyterLab's kernelspec manager reads its specs: standby while the
 * tab is hidden, back-off when a read throws, `refresh()` to read now. A subclass reads in `read()` and sets
 * its own pace; the panel's model composes one per resource.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

export const MAX_BACKOFF = 60_000; // ms: the longest wait between two reads after errors

export abstract class PolledResource {
  /** `interval` in ms; `autoStart` false in tests that read through `refresh()` alone. */
  constructor(name: string, interval: number, autoStart: boolean) {
    this._poll = new Poll({
      factory: () => this.read(),
      frequency: { interval, backoff: true, max: MAX_BACKOFF },
      name: `jupyter-gpuenv:${name}`,
      standby: 'when-hidden',
      auto: autoStart
    });
    this._poll.ticked.connect(this._onTicked, this);
  }

  /** After each read, and whenever what this resource shows changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Milliseconds between two reads while they succeed. */
  get interval(): number {
    return this._poll.frequency.interval;
  }

  /** Seconds until the next attempt after a failed read, or null. */
  get retryIn(): number | null {
    return this._retryIn;
  }

  /** Read now; resolves once read. The poll goes on from there at its pace. */
  async refresh(): Promise<void> {
    if (this.isDisposed) {
      return;
    }
    await this._poll.refresh();
    await this._poll.tick.catch(() => undefined); // rejects only when disposed meanwhile
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    Signal.clearData(this);
    void this._poll.stop(); // clears the timer of the next tick, which dispose() alone leaves running until it fires
    this._poll.dispose();
  }

  /** One read. Throw to make the poll back off; record first what the widgets should show. */
  protected abstract read(): Promise<void>;

  /** The interval between reads while they succeed, from the next one on. */
  protected setPace(ms: number): void {
    const interval = Math.min(Math.round(ms), this._poll.frequency.max);
    if (!this.isDisposed && interval !== this._poll.frequency.interval) {
      this._poll.frequency = { ...this._poll.frequency, interval };
    }
  }

  protected emitChanged(): void {
    this._changed.emit();
  }

  private _onTicked(_: Poll, state: { phase: string; interval: number }): void {
    const retry = state.phase === 'rejected' ? state.interval / 1000 : null;
    if (retry !== this._retryIn) {
      this._retryIn = retry;
      this._changed.emit();
    }
  }

  private _poll: Poll;
  private _changed = new Signal<this, void>(this);
  private _retryIn: number | null = null;
}
