/** The notebook in focus: what the model highlights, and switching its kernel. */
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

import type { ICurrentNotebook, IGpuModel } from './tokens';

function describe(panel: NotebookPanel | null): ICurrentNotebook | null {
  if (!panel) {
    return null;
  }
  const context = panel.sessionContext;
  const session = context.session;
  const starting = ['starting', 'initializing', 'restarting'].includes(context.kernelDisplayStatus);
  return {
    path: panel.context.path,
    kernelId: session?.kernel?.id ?? null,
    kernelName: session?.kernel?.name ?? null,
    starting: starting ? context.kernelDisplayName : null
  };
}

/** Keep `model.current` on the notebook in focus and its kernel (which changes on restart or switch), and say
 * while Lab starts one (a kernel whose image is pulled waits for it). */
export function followCurrentNotebook(tracker: INotebookTracker, model: IGpuModel): void {
  const update = (): void => {
    model.current = describe(tracker.currentWidget);
  };
  let watched: NotebookPanel | null = null;
  const follow = (): void => {
    watched?.sessionContext.kernelChanged.disconnect(update);
    watched?.sessionContext.sessionChanged.disconnect(update);
    watched?.sessionContext.statusChanged.disconnect(update);
    watched = tracker.currentWidget;
    watched?.sessionContext.kernelChanged.connect(update);
    watched?.sessionContext.sessionChanged.connect(update);
    watched?.sessionContext.statusChanged.connect(update);
    update();
  };
  tracker.currentChanged.connect(follow);
  follow();
}

/** Start the notebook in focus with another kernelspec (Lab's "Change kernel", from the panel). */
export async function useKernelspec(tracker: INotebookTracker, kernelspec: string): Promise<void> {
  const panel = tracker.currentWidget;
  if (!panel) {
    throw new Error('Open a notebook first.');
  }
  await panel.sessionContext.changeKernel({ name: kernelspec });
}
