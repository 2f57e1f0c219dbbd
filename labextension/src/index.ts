import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification, showErrorMessage, WidgetTracker } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { createApi, createTerminalApi } from './api';
import { createDashboard, GpuDashboard } from './components/GpuDashboard';
import { GpuPanel } from './components/Panel';
import { PullStatusItem, waitingFor } from './components/PullStatus';
import { GpuStatusItem, statusOf } from './components/StatusItem';
import { gpuIcon } from './icon';
import { DEFAULT_SETTINGS, PanelModel } from './model';
import { followCurrentNotebook, useKernelspec } from './notebook';
import { addParkCommands, openParkMenu } from './parkCommands';
import { ParkNotices } from './parkNotices';
import { labTerminalOptions } from './terminalInfo';
import { openTerminal, TerminalWidget } from './terminals';
import { IGpuModel } from './tokens';
import { IEnvironment, TerminalTarget } from './wire';

const PLUGIN_ID = 'jupyter-gpuenv:plugin';

namespace CommandIDs {
  export const open = 'gpuenv:open';
  export const refresh = 'gpuenv:refresh';
  export const openTerminal = 'gpuenv:open-terminal';
  export const openDashboard = 'gpuenv:open-dashboard';
}

/** The model (one poll per resource, for every view) and the side panel. */
const panelPlugin: JupyterFrontEndPlugin<IGpuModel> = {
  id: PLUGIN_ID,
  description: 'GPUs, the notebooks using them and container environments, in a side panel.',
  autoStart: true,
  provides: IGpuModel,
  optional: [ISettingRegistry, ILayoutRestorer, INotebookTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    registry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ): IGpuModel => {
    const model = new PanelModel({
      api: createApi(app.serviceManager.serverSettings),
      sessions: app.serviceManager.sessions
    });
    if (notebooks) {
      followCurrentNotebook(notebooks, model);
    }
    const onUse = (env: IEnvironment): void => {
      if (!notebooks || !env.kernelspec) {
        return;
      }
      useKernelspec(notebooks, env.kernelspec).catch(error =>
        showErrorMessage(`Could not start ${env.display_name ?? env.name}`, error)
      );
    };
    const onTerminal = (target: TerminalTarget): void => {
      void app.commands.execute(CommandIDs.openTerminal, target);
    };
    const onOpenNotebook = (path: string): void => {
      void app.commands.execute('docmanager:open', { path });
    };
    const dashboards = new WidgetTracker<MainAreaWidget<GpuDashboard>>({ namespace: 'gpuenv-dashboard' });
    app.commands.addCommand(CommandIDs.openDashboard, {
      label: args => `GPU ${args.index ?? 0} Dashboard`,
      caption: "A GPU's utilization, memory, power and temperature over the server's history, in the main area",
      execute: args => {
        const index = Number(args.index ?? 0);
        const open = dashboards.find(w => w.content.index === index);
        if (open) {
          app.shell.activateById(open.id);
          return open;
        }
        const widget = createDashboard(model, index, onOpenNotebook);
        widget.title.icon = gpuIcon;
        void dashboards.add(widget);
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
        return widget;
      }
    });
    restorer?.restore(dashboards, {
      command: CommandIDs.openDashboard,
      args: widget => ({ index: widget.content.index }),
      name: widget => String(widget.content.index)
    });
    const onDashboard = (index: number): void => {
      void app.commands.execute(CommandIDs.openDashboard, { index });
    };
    const panel = new GpuPanel(model, onUse, onTerminal, onDashboard, onOpenNotebook);
    panel.title.icon = gpuIcon;
    let side: 'left' | 'right' = 'right';
    app.shell.add(panel, side, { rank: 600 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show GPUs',
      icon: gpuIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh GPUs',
      execute: () => model.reload()
    });
    palette?.addItem({ command: CommandIDs.open, category: 'GPU' });
    palette?.addItem({ command: CommandIDs.refresh, category: 'GPU' });

    if (registry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        model.configure({
          refreshInterval: (settings.get('refreshInterval').composite as number) ?? DEFAULT_SETTINGS.refreshInterval,
          historyLength: (settings.get('historyLength').composite as number) ?? DEFAULT_SETTINGS.historyLength
        });
        const wanted = settings.get('side').composite === 'left' ? 'left' : 'right';
        if (wanted !== side) {
          side = wanted;
          app.shell.add(panel, side, { rank: 600 });
        }
      };
      Promise.all([registry.load(PLUGIN_ID), app.restored])
        .then(([settings]) => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.error('jupyter-gpuenv: could not load settings', reason));
    }
    return model;
  }
};

/** Park and resume the notebook in focus's kernel: commands, and notices in the notebook. */
const parkPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-gpuenv:park',
  description: "Park a notebook's kernel (its GPU memory to host memory, freeing the GPU) and resume it.",
  autoStart: true,
  requires: [IGpuModel],
  optional: [ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    model: IGpuModel,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ): void => {
    addParkCommands(app.commands, model, palette, message => Notification.error(message, { autoClose: 8000 }));
    const notices = new ParkNotices(model, Notification);
    if (notebooks) {
      NotebookActions.executionScheduled.connect((_, { notebook }) => {
        const panel = notebooks.find(p => p.content === notebook);
        notices.cellScheduled(panel?.sessionContext.session?.kernel?.id ?? null);
      });
    }
  }
};

/** The notebook's GPU memory (or that its kernel is parked) in the status bar; a click parks or resumes. */
const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-gpuenv:status',
  description: 'The GPU memory of the notebook in focus, and the image pull its kernel waits for, in the status bar.',
  autoStart: true,
  requires: [IGpuModel],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, model: IGpuModel, statusBar: IStatusBar | null): void => {
    if (!statusBar) {
      return;
    }
    const menu = (anchor: HTMLElement) => openParkMenu(app.commands, anchor, [CommandIDs.open]);
    statusBar.registerStatusItem('jupyter-gpuenv:status', {
      item: new GpuStatusItem(model, menu),
      align: 'left',
      rank: 4,
      isActive: () => statusOf(model) !== null,
      activeStateChanged: model.changed
    });
    // while the notebook's kernel waits for its image: the pull, next to Lab's kernel status
    statusBar.registerStatusItem('jupyter-gpuenv:pull', {
      item: new PullStatusItem(model),
      align: 'left',
      rank: 5,
      isActive: () => waitingFor(model) !== null,
      activeStateChanged: model.changed
    });
  }
};

/** Terminals inside an environment: from the panel, the notebook's context menu and the command palette. */
const terminalPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-gpuenv:terminals',
  description: "Terminals whose shell runs in a notebook's container environment.",
  autoStart: true,
  requires: [IGpuModel],
  optional: [ILayoutRestorer, ISettingRegistry, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    model: IGpuModel,
    restorer: ILayoutRestorer | null,
    registry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ): void => {
    const tracker = new WidgetTracker<TerminalWidget>({ namespace: 'gpuenv-terminal' });
    let labSettings: Partial<Record<string, unknown>> = {};
    registry
      ?.load('@jupyterlab/terminal-extension:plugin')
      .then(settings => {
        const read = (): void => {
          labSettings = settings.composite as Partial<Record<string, unknown>>;
          tracker.forEach(w =>
            Object.entries(labTerminalOptions(labSettings)).forEach(([k, v]) => w.content.setOption(k as any, v))
          );
        };
        read();
        settings.changed.connect(read);
      })
      .catch(() => undefined); // no terminal settings (terminals off in Lab): xterm's defaults
    const options = {
      app,
      api: createTerminalApi(app.serviceManager.serverSettings),
      serverSettings: app.serviceManager.serverSettings,
      tracker,
      labOptions: () => labTerminalOptions(labSettings),
      notebookOf: (kernelId: string) => model.notebookOf(kernelId),
      displayName: (name: string) => environmentName(model, name)
    };
    const currentKernel = (): string | null => {
      const id = model.current?.kernelId ?? null;
      return id && model.kernels.some(k => k.kernel_id === id && k.container_id) ? id : null;
    };
    app.commands.addCommand(CommandIDs.openTerminal, {
      label: args =>
        args.environment
          ? `Open Terminal in a New ${environmentName(model, String(args.environment))} Container`
          : "Open Terminal in the Notebook's Environment",
      caption: "A shell in the notebook kernel's container: its GPUs, files and user",
      icon: args => (args.name || args.kernel_id || args.environment ? undefined : gpuIcon),
      isEnabled: args => !!(args.name || args.kernel_id || args.environment) || currentKernel() !== null,
      isVisible: args => !!(args.name || args.kernel_id || args.environment) || currentKernel() !== null,
      execute: async args => {
        const target = args.name
          ? { name: String(args.name) }
          : args.environment
            ? { environment: String(args.environment) }
            : { kernel_id: String(args.kernel_id ?? currentKernel()) };
        try {
          return await openTerminal(options, target);
        } catch (error) {
          if ('name' in target) {
            throw error; // a restored tab whose shell has ended: the restorer forgets it
          }
          await showErrorMessage('Could not open a terminal', error as Error);
        }
      }
    });
    palette?.addItem({ command: CommandIDs.openTerminal, category: 'GPU' });
    if (notebooks) {
      app.contextMenu.addItem({ command: CommandIDs.openTerminal, selector: '.jp-Notebook', rank: 90 });
    }
    restorer?.restore(tracker, {
      command: CommandIDs.openTerminal,
      args: widget => ({ name: widget.content.session.name }),
      name: widget => widget.content.session.name
    });
  }
};

function environmentName(model: IGpuModel, name: string): string {
  const envs = model.environments.kind === 'ready' ? (model.environments.reply.environments ?? []) : [];
  return envs.find(e => e.name === name)?.display_name ?? name;
}

export default [panelPlugin, parkPlugin, statusPlugin, terminalPlugin];
