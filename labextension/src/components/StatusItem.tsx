import { ReactWidget } from '@jupyterlab/ui-components';
import React from 'react';

import { parkState, statusView } from '../park';
import type { IGpuModel } from '../tokens';
import { useModel } from './useModel';

/**
 * "GPU 4.0 GiB" for the notebook in focus, "GPU parked · 4.6 GiB in host memory" while its kernel is parked;
 * the status bar hides it while the kernel holds no GPU memory and is not parked. A click opens `onOpen`'s menu.
 */
export class GpuStatusItem extends ReactWidget {
  constructor(
    private _model: IGpuModel,
    private _onOpen?: (anchor: HTMLElement) => void
  ) {
    super();
    this.addClass('jp-GpuEnv-status');
    if (_onOpen) {
      this.addClass('jp-mod-highlighted');
    }
  }

  protected render(): JSX.Element {
    const open = this._onOpen;
    return <StatusText model={this._model} onOpen={open ? () => open(this.node) : undefined} />;
  }
}

/** What the item says for the notebook in focus, or null when the status bar should hide it. */
export function statusOf(model: IGpuModel): { text: string; title: string } | null {
  const id = model.current?.kernelId ?? null;
  return statusView(model.kernel(id), model.kernelMemory(id), Date.now());
}

function StatusText(props: { model: IGpuModel; onOpen?: () => void }): JSX.Element | null {
  const { model, onOpen } = props;
  useModel(model);
  const view = statusOf(model);
  if (!view) {
    return null;
  }
  const state = parkState(model.kernel(model.current?.kernelId ?? null));
  const hint = onOpen ? ' Click to park or resume it.' : '';
  return (
    <span
      className={`jp-GpuEnv-statusText jp-mod-${state}`}
      data-gpuenv-park-state={state}
      title={`${view.title}${hint}`}
      aria-label={`${view.text}. ${view.title}`}
      role={onOpen ? 'button' : undefined}
      tabIndex={onOpen ? 0 : undefined}
      aria-haspopup={onOpen ? 'menu' : undefined}
      onClick={onOpen}
      onKeyDown={
        onOpen
          ? event => {
              if (event.key === 'Enter' || event.key === ' ') {
                event.preventDefault();
                onOpen();
              }
            }
          : undefined
      }
    >
      {state === 'parking' || state === 'resuming' ? <span className="jp-GpuEnv-pulse" aria-hidden="true" /> : null}
      {view.text}
    </span>
  );
}
