import React from 'react';

import { noGpuMessage, retryIn } from '../format';
import type { IGpuModel } from '../tokens';
import type { IGpusReply } from '../wire';
import { GpuCard, OpenDashboard } from './GpuCard';
import type { OpenNotebook } from './ProcessList';
import { StateMessage } from './StateMessage';

/** The GPU cards, or the state that stands in for them. */
export function GpuSection(props: {
  model: IGpuModel;
  compact?: boolean;
  onDashboard?: OpenDashboard;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { model } = props;
  const status = model.status;
  switch (status.kind) {
    case 'loading':
      return <StateMessage title="Reading GPUs…" busy testId="loading" />;
    case 'no-extension':
      return (
        <StateMessage
          tone="error"
          testId="no-extension"
          title="The GPU service is not running on this server"
          detail={
            <>
              The panel is installed, but the Jupyter server did not load the <code>jupyter_gpuenv</code> server
              extension. Run <code>jupyter server extension enable jupyter_gpuenv</code> and restart the server.{' '}
              {retryIn(model.retryIn)}
            </>
          }
        />
      );
    case 'no-gpu': {
      const { title, detail } = noGpuMessage(status.reason);
      return <StateMessage title={title} detail={detail} testId="no-gpu" />;
    }
    case 'error':
      return (
        <>
          <StateMessage
            tone="error"
            testId="error"
            title="Lost contact with the GPU service"
            detail={`${status.message} ${retryIn(model.retryIn)}`}
          />
          {status.reply?.available ? <Cards reply={status.reply} stale {...props} /> : null}
        </>
      );
    case 'ready':
      if ((status.reply.gpus ?? []).length === 0) {
        return (
          <StateMessage
            title="No GPU is visible to this server"
            detail="The driver answers, but this server may use none of its GPUs (CUDA_VISIBLE_DEVICES or the server's settings)."
            testId="no-visible-gpu"
          />
        );
      }
      return <Cards reply={status.reply} {...props} />;
  }
}

function Cards(props: {
  reply: IGpusReply;
  model: IGpuModel;
  stale?: boolean;
  compact?: boolean;
  onDashboard?: OpenDashboard;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  return (
    <div className={`jp-GpuEnv-cards${props.stale ? ' jp-mod-stale' : ''}${props.compact ? ' jp-mod-compact' : ''}`}>
      {(props.reply.gpus ?? []).map(gpu => (
        <GpuCard
          key={gpu.uuid ?? gpu.index}
          gpu={gpu}
          model={props.model}
          compact={props.compact}
          now={props.reply.sampled_at}
          onDashboard={props.onDashboard}
          onOpenNotebook={props.onOpenNotebook}
        />
      ))}
    </div>
  );
}
