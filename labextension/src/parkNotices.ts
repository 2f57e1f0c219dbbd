/**
 * Notices in the notebook about parking: once when the idle policy parked the kernel of the notebook in focus,
 * and "Resuming GPU state…" while a cell run in a parked kernel waits for its memory to come back. The app passes
 * Lab's `Notification`; tests pass a fake.
 */
import { idleParkText, parkState, resumeOutcome } from './park';
import type { IGpuModel } from './tokens';

/** An action button in a notice. */
export interface INoticeAction {
  label: string;
  callback: () => void;
}

/** The part of Lab's `Notification` (from `@jupyterlab/apputils`) that the notices use. */
export interface INotifier {
  info(message: string, options?: { autoClose?: number | false }): string;
  success(message: string, options?: { autoClose?: number | false }): string;
  emit(message: string, type: 'in-progress', options?: { autoClose?: number | false }): string;
  update(args: {
    id: string;
    message: string;
    type?: 'success' | 'error' | 'info';
    autoClose?: number | false;
    actions?: INoticeAction[];
  }): boolean;
  dismiss(id: string): void;
}

const RESUMED_SHOWN_FOR = 4000; // ms
const STILL_PARKED_AFTER = 60_000; // ms: the server has not started resuming: say so instead of waiting on

export class ParkNotices {
  constructor(
    private _model: IGpuModel,
    private _notify: INotifier,
    private _now: () => number = Date.now
  ) {
    _model.changed.connect(this._update, this);
  }

  /**
   * A cell was scheduled in a notebook whose kernel is `kernelId`. When that kernel is parked, the server resumes
   * it before the cell runs: say so until it has, and read its state often meanwhile.
   */
  cellScheduled(kernelId: string | null): void {
    const state = parkState(this._model.kernel(kernelId));
    if (!kernelId || (state !== 'parked' && state !== 'resuming')) {
      return;
    }
    this._model.expectResume(kernelId);
    if (!this._resuming.has(kernelId)) {
      const id = this._notify.emit('Resuming GPU state…', 'in-progress', { autoClose: false });
      this._resuming.set(kernelId, { id, since: this._now() });
    }
  }

  dispose(): void {
    this._model.changed.disconnect(this._update, this);
  }

  private _update(): void {
    this._tellIdlePark();
    for (const [kernelId, notice] of this._resuming) {
      const kernel = this._model.kernel(kernelId);
      const outcome = resumeOutcome(kernel);
      if (outcome?.type === 'success') {
        // a new notice rather than an update of the in-progress one: Lab's toasts start an updated notice's
        // auto-close timer only when its slide-in animation ends, which a busy page (a cell just run) can miss
        this._notify.dismiss(notice.id);
        this._notify.success(outcome.message, { autoClose: RESUMED_SHOWN_FOR });
      } else if (outcome) {
        const restart = { label: 'Restart kernel', callback: () => void this._model.restart(kernelId) };
        this._notify.update({
          id: notice.id,
          message: outcome.message,
          type: 'error',
          autoClose: false,
          actions: kernel ? [restart] : []
        });
      } else if (parkState(kernel) === 'parked' && this._now() - notice.since > STILL_PARKED_AFTER) {
        this._notify.update({
          id: notice.id,
          message: 'The kernel is still parked; resume it from the GPU panel.',
          type: 'info',
          autoClose: false
        });
      } else {
        continue;
      }
      this._resuming.delete(kernelId);
    }
  }

  /** Once per parking: when the idle policy parked the kernel of the notebook in focus. */
  private _tellIdlePark(): void {
    for (const [kernelId, id] of this._idleNotices) {
      if (parkState(this._model.kernel(kernelId)) !== 'parked') {
        this._notify.dismiss(id); // it resumes (or is gone): the notice no longer holds
        this._idleNotices.delete(kernelId);
      }
    }
    const kernel = this._model.kernel(this._model.current?.kernelId ?? null);
    const park = kernel?.park;
    if (!kernel || park?.state !== 'parked' || park.by !== 'idle policy') {
      return;
    }
    const key = `${kernel.kernel_id}@${park.since ?? ''}`;
    if (this._told.has(key)) {
      return;
    }
    this._told.add(key);
    const status = this._model.kernelsStatus;
    const text = idleParkText(status.kind === 'loading' ? null : status.parking);
    this._idleNotices.set(kernel.kernel_id, this._notify.info(text, { autoClose: false }));
  }

  private _told = new Set<string>(); // kernel@since: each parking is told once
  private _idleNotices = new Map<string, string>(); // kernel id -> its notice, while it is parked
  private _resuming = new Map<string, { id: string; since: number }>();
}
