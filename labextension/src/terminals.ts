/**
 * Terminals in an environment, as Lab terminal tabs: Lab's own terminal widget (xterm, its settings and
 * themes) on a `GpuEnvTerminalConnection`. A tab says where its shell runs and what ends it; a page reload
 * finds the same shell again (the tabs are restored by name), and closing the tab closes the shell.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget, Toolbar, WidgetTracker } from '@jupyterlab/apputils';
import type { ServerConnection } from '@jupyterlab/services';
import type { ITerminal } from '@jupyterlab/terminal';
import { Terminal } from '@jupyterlab/terminal';
import { terminalIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { GpuEnvTerminalConnection } from './terminalConnection';
import { tabLabel, whereItRuns } from './terminalInfo';
import type { ITerminalApi, TerminalTarget } from './wire';

export type TerminalWidget = MainAreaWidget<Terminal>;

export interface ITerminalsOptions {
  app: JupyterFrontEnd;
  api: ITerminalApi;
  serverSettings: ServerConnection.ISettings;
  tracker: WidgetTracker<TerminalWidget>;
  /** Lab's terminal settings, as they are now. */
  labOptions: () => Partial<ITerminal.IOptions>;
  /** The notebook a kernel belongs to, and an environment's display name, for the tab's bar. */
  notebookOf: (kernelId: string) => string | null;
  displayName: (environment: string) => string;
}

/**
 * Open a new terminal in `target`, or show terminal `name` again (a reload). Throws the server's refusal
 * (an `ApiError`: "this container runs as root…", 404 for a terminal that has ended).
 */
export async function openTerminal(
  options: ITerminalsOptions,
  target: TerminalTarget | { name: string }
): Promise<TerminalWidget> {
  const { app, api, tracker } = options;
  if ('name' in target) {
    const shown = tracker.find(w => w.content.session.name === target.name);
    if (shown) {
      app.shell.activateById(shown.id);
      return shown;
    }
  }
  const model = 'name' in target ? await api.get(target.name) : await api.open(target);
  const session = new GpuEnvTerminalConnection({ name: model.name, api, serverSettings: options.serverSettings });
  const content = new Terminal(session, { ...options.labOptions(), shutdownOnClose: true });
  // a plain toolbar: the notice shrinks with an ellipsis instead of moving into a "more" menu
  const widget = new MainAreaWidget({ content, toolbar: new Toolbar() });
  const environment = model.environment ? options.displayName(model.environment) : 'Container';
  const notebook = model.kernel_id ? options.notebookOf(model.kernel_id) : null;
  widget.id = `jp-GpuEnv-terminal-${model.name}`;
  widget.addClass('jp-GpuEnv-terminalTab');
  widget.node.dataset.gpuenvTerminal = model.name;
  widget.node.dataset.endsWith = model.ends_with;
  widget.title.icon = terminalIcon;
  const label = tabLabel(model, notebook, environment);
  widget.title.label = label;
  // the widget copies its terminal's title (which the shell sets, e.g. "user@host: ~"); this tab keeps its own
  content.title.changed.connect(() => {
    widget.title.label = label;
  });
  widget.title.caption = `${whereItRuns(model, notebook, environment)}\n${model.notice}`;
  widget.toolbar.addItem('gpuenv-where', new Notice(whereItRuns(model, notebook, environment), model.notice));
  void tracker.add(widget);
  app.shell.add(widget, 'main', { type: 'Terminal' });
  app.shell.activateById(widget.id);
  return widget;
}

/** The tab's bar: where the shell runs, and (always visible) what ends it. */
class Notice extends Widget {
  constructor(where: string, notice: string) {
    super();
    this.addClass('jp-GpuEnv-terminalNotice');
    const strong = document.createElement('strong');
    strong.textContent = where;
    const text = document.createElement('span');
    text.textContent = notice;
    this.node.append(strong, text);
    this.node.title = notice;
  }
}
