/** Which notebook a kernel belongs to, from Lab's running sessions (GET /api/sessions, polled by Lab). */
import type { ISessionSource } from './tokens';

export class NotebookNames {
  constructor(
    private _source: ISessionSource | null,
    private _onChange: () => void
  ) {
    _source?.runningChanged.connect(this._update, this);
    this._update();
  }

  pathOf(kernelId: string | null): string | null {
    return kernelId ? (this._paths.get(kernelId) ?? null) : null;
  }

  /**
   * Ask Lab for its sessions again when a GPU process names a kernel we have not seen, e.g. one started
   * from another tab; once per kernel, so a kernel outside any session costs one request, not one a tick.
   */
  lookUp(kernelIds: Iterable<string>): void {
    if (!this._source) {
      return;
    }
    let unknown = false;
    for (const id of kernelIds) {
      if (!this._paths.has(id) && !this._asked.has(id)) {
        this._asked.add(id);
        unknown = true;
      }
    }
    if (unknown) {
      void this._source.refreshRunning().catch(() => undefined);
    }
  }

  dispose(): void {
    this._source?.runningChanged.disconnect(this._update, this);
  }

  private _update(): void {
    const paths = new Map<string, string>();
    for (const session of this._source?.running() ?? []) {
      if (session.kernel?.id) {
        paths.set(session.kernel.id, session.path);
      }
    }
    this._paths = paths;
    this._onChange();
  }

  private _paths = new Map<string, string>();
  private _asked = new Set<string>();
}
