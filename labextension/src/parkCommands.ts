/** Park and Resume for the notebook in focus: commands (palette, the status bar's menu) and that menu. */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import type { ICommandPalette } from '@jupyterlab/apputils';
import { Menu } from '@lumino/widgets';

import { currentActions } from './park';
import type { IGpuModel } from './tokens';

type CommandRegistry = JupyterFrontEnd['commands'];

export namespace ParkCommandIDs {
  export const park = 'gpuenv:park-kernel';
  export const resume = 'gpuenv:resume-kernel';
}

const PARK_CAPTION =
  "Move this notebook's kernel's GPU memory to host memory and free its GPU. Its variables stay; running a cell " +
  'resumes it.';
const RESUME_CAPTION = "Bring this notebook's kernel's memory back to its GPU.";

/** The commands; `notifyError` shows why a request failed (the panel's row says it too). */
export function addParkCommands(
  commands: CommandRegistry,
  model: IGpuModel,
  palette: ICommandPalette | null,
  notifyError: (message: string) => void
): void {
  const current = () => model.current?.kernelId ?? null;
  const actions = () => {
    const id = current();
    const status = model.kernelsStatus;
    const parking = status.kind === 'loading' ? null : status.parking;
    return currentActions(model.kernel(id), parking, id ? model.parkRequest(id) : undefined);
  };
  const run = async (request: (id: string) => Promise<void>) => {
    const id = current();
    if (!id) {
      return;
    }
    await request(id);
    const error = model.parkRequest(id).error;
    if (error) {
      notifyError(error);
    }
  };
  commands.addCommand(ParkCommandIDs.park, {
    label: 'Park Kernel (Free Its GPU)',
    caption: () => actions().park ?? PARK_CAPTION,
    isEnabled: () => actions().park === null,
    execute: () => run(id => model.park(id))
  });
  commands.addCommand(ParkCommandIDs.resume, {
    label: 'Resume Parked Kernel',
    caption: () => actions().resume ?? RESUME_CAPTION,
    isEnabled: () => actions().resume === null,
    execute: () => run(id => model.resume(id))
  });
  palette?.addItem({ command: ParkCommandIDs.park, category: 'GPU' });
  palette?.addItem({ command: ParkCommandIDs.resume, category: 'GPU' });

  // menus and the palette ask again only when told: tell them when the answer changes, not on every poll
  let last = '';
  model.changed.connect(() => {
    const now = JSON.stringify(actions());
    if (now !== last) {
      last = now;
      commands.notifyCommandChanged(ParkCommandIDs.park);
      commands.notifyCommandChanged(ParkCommandIDs.resume);
    }
  });
}

/** The status bar item's menu: Park, Resume, and the panel. Made at each click; gone when closed. */
export function openParkMenu(commands: CommandRegistry, anchor: HTMLElement, extra: string[] = []): void {
  const menu = new Menu({ commands });
  menu.addClass('jp-GpuEnv-parkMenu');
  menu.addItem({ command: ParkCommandIDs.park });
  menu.addItem({ command: ParkCommandIDs.resume });
  const more = extra.filter(c => commands.hasCommand(c));
  if (more.length > 0) {
    menu.addItem({ type: 'separator' });
    more.forEach(command => menu.addItem({ command }));
  }
  menu.aboutToClose.connect(() => requestAnimationFrame(() => menu.dispose()));
  const rect = anchor.getBoundingClientRect();
  menu.open(rect.left, rect.top); // opens upwards: at the window's bottom the menu does not fit below
}
