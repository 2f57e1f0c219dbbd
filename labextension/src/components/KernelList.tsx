import React from 'react';

import { sentence } from '../format';
import { autoParkText, kernelLabel, parkRows, parkView } from '../park';
import type { IGpuModel, IParkRequest } from '../tokens';
import type { IKernel, IParking } from '../wire';
import { OpenNotebook, opensNotebook } from './ProcessList';
import { Section } from './Section';
import { StateMessage } from './StateMessage';

/**
 * The kernels that hold GPU memory, or whose memory is parked in host memory, each with Park, Resume or (when a
 * move failed) Restart. Nothing at all from a server that cannot park, or where the GPU section already says
 * there is no GPU.
 */
export function KernelSection(props: {
  model: IGpuModel;
  now?: number;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element | null {
  const { model } = props;
  const status = model.kernelsStatus;
  const gpus = model.status.kind;
  const parking = status.kind === 'loading' ? null : status.parking;
  const memoryOf = (k: IKernel) => Math.max(model.kernelMemory(k.kernel_id), k.gpu_memory ?? 0);
  const rows = parkRows(model.kernels, memoryOf);
  if (rows.length === 0 && (gpus === 'loading' || gpus === 'no-gpu' || gpus === 'no-extension')) {
    return null;
  }
  if (status.kind === 'ready' && !parking && rows.length === 0) {
    return null; // a server without park and resume
  }
  const now = props.now ?? Date.now();
  const auto = autoParkText(parking);
  return (
    <Section id="kernels" title="Kernels" className="jp-GpuEnv-kernelSection">
      {status.kind === 'loading' ? <StateMessage title="Reading kernels…" busy testId="kernels-loading" /> : null}
      {status.kind === 'error' ? (
        <StateMessage
          tone="error"
          title={rows.length ? 'Kernels could not be read again' : 'Kernels could not be read'}
          detail={rows.length ? `${status.message} Their last known state is shown.` : status.message}
          testId="kernels-error"
        />
      ) : null}
      {parking && !parking.available ? (
        <StateMessage
          title="Parking is not available on this server"
          detail={sentence(parking.reason ?? "this server cannot move a kernel's GPU memory to host memory")}
          testId="park-unavailable"
        />
      ) : null}
      {status.kind === 'ready' && parking?.available && rows.length === 0 ? (
        <StateMessage
          title="No kernel holds GPU memory"
          detail={
            'A kernel that does can be parked here: its GPU memory moves to host memory and the GPU is free for ' +
            'others, while its variables stay.'
          }
          testId="kernels-empty"
        />
      ) : null}
      {rows.length > 0 ? (
        <ul
          className={`jp-GpuEnv-kernels${status.kind === 'error' ? ' jp-mod-stale' : ''}`}
          aria-label="Kernels on GPUs"
        >
          {rows.map(k => (
            <KernelRow
              key={k.kernel_id}
              model={model}
              kernel={k}
              parking={parking}
              memory={memoryOf(k)}
              request={model.parkRequest(k.kernel_id)}
              now={now}
              onOpenNotebook={props.onOpenNotebook}
            />
          ))}
        </ul>
      ) : null}
      {auto ? <div className="jp-GpuEnv-autoPark">{auto}</div> : null}
    </Section>
  );
}

/** One kernel: its name, where its memory is, and the one button that fits its state. */
export function KernelRow(props: {
  model: IGpuModel;
  kernel: IKernel;
  parking: IParking | null;
  memory: number;
  request: IParkRequest;
  now: number;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { model, kernel } = props;
  const id = kernel.kernel_id;
  const path = model.notebookOf(id);
  const label = kernelLabel(id, path);
  const view = parkView(kernel, props.parking, props.memory, props.now, props.request);
  const button = view.button;
  // a reason of this kernel's own is written out; "this server cannot park" is said once, above the rows
  const why = button?.disabled && props.parking?.available ? button.title : null;
  const whyId = `jp-GpuEnv-parkWhy-${id}`;
  const mine = model.current?.kernelId === id;
  const opens = opensNotebook(path, props.onOpenNotebook);
  const act = (): void => {
    if (button?.action === 'park') {
      void model.park(id);
    } else if (button?.action === 'resume') {
      void model.resume(id);
    } else if (button?.action === 'restart') {
      void model.restart(id);
    }
  };
  return (
    <li
      className={`jp-GpuEnv-kernel jp-mod-${view.state}${opens ? ' jp-mod-opens' : ''}`}
      data-kernel={id}
      aria-label={label}
      aria-current={mine ? 'true' : undefined}
      aria-busy={view.busy ? 'true' : undefined}
      onClick={opens}
    >
      <div className="jp-GpuEnv-kernelHeader">
        <span className="jp-GpuEnv-kernelName" title={path ? `Open ${path}` : id}>
          {label}
        </span>
        <span className={`jp-GpuEnv-parkBadge jp-mod-${view.state}`} data-gpuenv-park-state={view.state}>
          {view.badge}
        </span>
      </div>
      <div className="jp-GpuEnv-kernelDetail" role={view.busy ? 'status' : undefined}>
        {view.busy ? <span className="jp-GpuEnv-pulse" aria-hidden="true" /> : null}
        {view.detail}
      </div>
      {view.notice ? <div className={`jp-GpuEnv-kernelNotice jp-mod-${view.state}`}>{view.notice}</div> : null}
      {view.error ? (
        <div className="jp-GpuEnv-parkError" role="alert">
          {view.error}
        </div>
      ) : null}
      {button ? (
        <button
          className={`jp-GpuEnv-parkButton jp-mod-styled${button.action === 'resume' ? ' jp-mod-accept' : ''}${
            button.action === 'restart' ? ' jp-mod-warn' : ''
          }`}
          data-gpuenv-action={button.action}
          disabled={button.disabled}
          title={button.title}
          aria-describedby={why ? whyId : undefined}
          onClick={act}
        >
          {button.label}
        </button>
      ) : null}
      {why ? (
        <div className="jp-GpuEnv-why" id={whyId}>
          {why}
        </div>
      ) : null}
    </li>
  );
}
