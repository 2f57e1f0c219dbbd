import { ReactWidget } from '@jupyterlab/ui-components';
import React from 'react';

import { pullingFor } from '../environments';
import { duration } from '../format';
import type { IGpuModel } from '../tokens';
import type { IEnvironment } from '../wire';
import { PullBar } from './PullBar';
import { useModel } from './useModel';

/** The image pull the notebook in focus waits for, in the status bar next to Lab's kernel status. */
export class PullStatusItem extends ReactWidget {
  constructor(private _model: IGpuModel) {
    super();
    this.addClass('jp-GpuEnv-pullStatus');
  }

  protected render(): JSX.Element {
    return <PullStatusText model={this._model} />;
  }
}

/** The environment being pulled for the notebook in focus, or null (the status bar then hides the item). */
export function waitingFor(model: IGpuModel): IEnvironment | null {
  const envs = model.environments.kind === 'ready' ? (model.environments.reply.environments ?? []) : [];
  return pullingFor(envs, model.current);
}

function PullStatusText(props: { model: IGpuModel }): JSX.Element | null {
  useModel(props.model);
  const env = waitingFor(props.model);
  const p = env?.pull_progress;
  if (!env || !p) {
    return null;
  }
  const pct = p.percent !== null && p.phase === 'downloading' ? ` ${Math.floor(p.percent)} %` : '';
  const left = p.eta_s !== null ? ` · ${duration(p.eta_s)} left` : p.phase === 'extracting' ? ' · unpacking' : '';
  // Lab's own kernel status still names the old kernel and says "Starting": say which environment is prepared
  const name = env.display_name ?? env.name;
  const text = `Preparing ${name}: pulling image${pct}${left}`;
  return (
    <span title={`The notebook's kernel starts in ${name} when ${p.image} is pulled`} aria-label={text}>
      <PullBar progress={p} label="Pulling" compact />
      {text}
    </span>
  );
}
