import { ReactWidget } from '@jupyterlab/ui-components';
import React, { useState } from 'react';

import type { IGpuModel } from '../tokens';
import { EnvironmentList, UseEnvironment } from './EnvironmentList';
import type { OpenTerminal } from './EnvironmentTerminals';
import type { OpenDashboard } from './GpuCard';
import { GpuSection } from './GpuSection';
import { KernelSection } from './KernelList';
import { KernelNotices } from './KernelNotices';
import type { OpenNotebook } from './ProcessList';
import { Section } from './Section';
import { useModel } from './useModel';

/** The side panel: restarted kernels (if any), GPUs, kernels that hold or parked GPU memory, then environments. */
export class GpuPanel extends ReactWidget {
  constructor(
    private _model: IGpuModel,
    private _onUse: UseEnvironment,
    private _onTerminal?: OpenTerminal,
    private _onDashboard?: OpenDashboard,
    private _onOpenNotebook?: OpenNotebook
  ) {
    super();
    this.id = 'jupyter-gpuenv-panel';
    this.addClass('jp-GpuEnv-panel');
    this.title.caption = 'GPUs';
  }

  protected render(): JSX.Element {
    return (
      <PanelBody
        model={this._model}
        onUse={this._onUse}
        onTerminal={this._onTerminal}
        onDashboard={this._onDashboard}
        onOpenNotebook={this._onOpenNotebook}
      />
    );
  }
}

function PanelBody(props: {
  model: IGpuModel;
  onUse: UseEnvironment;
  onTerminal?: OpenTerminal;
  onDashboard?: OpenDashboard;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { model } = props;
  const [compact, setCompact] = useState(false);
  useModel(model);
  const reply = model.status.kind === 'ready' ? model.status.reply : null;
  const driver = reply?.driver_version
    ? `Driver ${reply.driver_version} · CUDA ${reply.cuda_driver_version ?? '–'}`
    : null;
  return (
    <div className="jp-GpuEnv-body">
      <KernelNotices model={model} />
      <Section
        id="gpus"
        title="GPUs"
        extra={
          <>
            {driver ? <span className="jp-GpuEnv-driver">{driver}</span> : null}
            <button
              className="jp-GpuEnv-compactToggle"
              aria-pressed={compact}
              title={compact ? 'Show each GPU in full' : 'Two lines per GPU: memory and utilization (many GPUs)'}
              onClick={() => setCompact(!compact)}
            >
              Compact
            </button>
          </>
        }
      >
        <GpuSection
          model={model}
          compact={compact}
          onDashboard={props.onDashboard}
          onOpenNotebook={props.onOpenNotebook}
        />
      </Section>
      <KernelSection model={model} onOpenNotebook={props.onOpenNotebook} />
      <Section id="envs" title="Environments">
        <EnvironmentList
          model={model}
          onUse={props.onUse}
          onTerminal={props.onTerminal}
          onOpenNotebook={props.onOpenNotebook}
        />
      </Section>
    </div>
  );
}
