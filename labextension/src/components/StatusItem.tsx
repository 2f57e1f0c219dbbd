import { ReactWidget } from '@jupyterlab/ui-components';
import React from 'react';

import { bytes } from '../format';
import type { IGpuModel } from '../tokens';
import { useModel } from './useModel';

/** "GPU 4.0 GiB" for the notebook in focus; the status bar hides it while the kernel holds none. */
export class GpuStatusItem extends ReactWidget {
  constructor(private _model: IGpuModel) {
    super();
    this.addClass('jp-GpuEnv-status');
  }

  protected render(): JSX.Element {
    return <StatusText model={this._model} />;
  }
}

function StatusText(props: { model: IGpuModel }): JSX.Element {
  const { model } = props;
  useModel(model);
  const used = model.kernelMemory(model.current?.kernelId ?? null);
  const text = `GPU ${bytes(used)}`;
  return (
    <span
      title={`GPU memory held by this notebook's kernel: ${bytes(used)}`}
      aria-label={`GPU memory of this notebook: ${bytes(used)}`}
    >
      {text}
    </span>
  );
}
