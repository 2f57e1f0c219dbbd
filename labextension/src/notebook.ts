/** The notebook in focus: what the model highlights, and switching its kernel. */
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

import type { ICurrentNotebook, IGpuModel } from './tokens';

function describe(panel: NotebookPanel | null): ICurrentNotebook | null {
  if (!panel) {
    return null;
  }
  const session = panel.sessionContext.session;
  return {
    path: panel.context.path,
    kernelId: session?.kernel?.id ?? null,
    kernelName: session?.kernel?.name ?? null
  };
}

/** Keep `model.current` on the notebook in focus and its kernel (which changes on restart or switch). */
export function followCurrentNotebook(tracker: INotebookTracker, model: IGpuModel): void {
  const update = (): void => {
    model.current = describe(tracker.currentWidget);
  };
  let watched: NotebookPanel | null = null;
  const follow = (): void => {
    watched?.sessionContext.kernelChanged.disconnect(update);
    watched?.sessionContext.sessionChanged.disconnect(update);
    watched = tracker.currentWidget;
    watched?.sessionContext.kernelChanged.connect(update);
    watched?.sessionContext.sessionChanged.connect(update);
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
