/** What the panel and a terminal's tab say about terminals, and which Lab settings a tab takes. Pure: no DOM. */
import type { ITerminal } from '@jupyterlab/terminal';

import { basename } from './format';
import type { IKernel, ITerminalModel } from './wire';

/** The Lab terminal settings a tab takes over (font, theme, scrollback, …); never `shutdownOnClose`. */
const LAB_OPTIONS: (keyof ITerminal.IOptions)[] = [
  'fontFamily',
  'fontSize',
  'lineHeight',
  'theme',
  'scrollback',
  'closeOnExit',
  'cursorBlink',
  'screenReaderMode',
  'pasteWithCtrlV',
  'macOptionIsMeta'
];

export function labTerminalOptions(settings: Partial<Record<string, unknown>>): Partial<ITerminal.IOptions> {
  const options: Record<string, unknown> = {};
  for (const key of LAB_OPTIONS) {
    if (settings[key] !== undefined && settings[key] !== null) {
      options[key] = settings[key];
    }
  }
  return options as Partial<ITerminal.IOptions>;
}

/** The running container kernels of an environment: each can have a terminal in its container. */
export function kernelsOf(kernels: IKernel[], environment: string): IKernel[] {
  return kernels.filter(k => k.environment === environment && !!k.container_id);
}

/** The tab's label: whose container (or which terminal), then the environment (the shell's own title would not say). */
export function tabLabel(model: ITerminalModel, notebook: string | null, environmentName: string): string {
  // what tells two tabs of one environment apart comes first: a cut-off title still shows it
  if (model.kernel_id) {
    return `${notebook ? basename(notebook) : `kernel ${model.kernel_id.slice(0, 8)}`} · ${environmentName}`;
  }
  return `Terminal ${model.name.slice(0, 4)} · ${environmentName}`;
}

/** What the tab's bar says: where the shell runs. */
export function whereItRuns(model: ITerminalModel, notebook: string | null, environmentName: string): string {
  if (model.kernel_id) {
    const kernel = notebook ? basename(notebook) : `kernel ${model.kernel_id.slice(0, 8)}`;
    return `${environmentName} · in the container of ${kernel}`;
  }
  return `${environmentName} · in a container of its own`;
}
