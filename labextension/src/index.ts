import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { createApi } from './api';
import { GpuPanel } from './components/Panel';
import { GpuStatusItem } from './components/StatusItem';
import { gpuIcon } from './icon';
import { DEFAULT_SETTINGS, GpuModel } from './model';
import { followCurrentNotebook, useKernelspec } from './notebook';
import { IEnvironment, IGpuModel } from './tokens';

const PLUGIN_ID = 'jupyter-gpuenv:plugin';

namespace CommandIDs {
  export const open = 'gpuenv:open';
  export const refresh = 'gpuenv:refresh';
}

/** The model (one poll for every view) and the side panel. */
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
    const model = new GpuModel({
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
    const panel = new GpuPanel(model, onUse);
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
      execute: () => model.refresh()
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

/** The notebook's GPU memory in the status bar. */
const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-gpuenv:status',
  description: 'The GPU memory of the notebook in focus, in the status bar.',
  autoStart: true,
  requires: [IGpuModel],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, model: IGpuModel, statusBar: IStatusBar | null): void => {
    if (!statusBar) {
      return;
    }
    statusBar.registerStatusItem('jupyter-gpuenv:status', {
      item: new GpuStatusItem(model),
      align: 'left',
      rank: 4,
      isActive: () => model.kernelMemory(model.current?.kernelId ?? null) > 0,
      activeStateChanged: model.changed
    });
  }
};

export default [panelPlugin, statusPlugin];
