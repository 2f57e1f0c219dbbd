import React from 'react';

import { whyNot } from '../environments';
import { environmentState, gpuPolicy, sentence } from '../format';
import type { ICurrentNotebook, IEnvironment, IGpuModel } from '../tokens';
import { StateMessage } from './StateMessage';

export type UseEnvironment = (env: IEnvironment) => void;

/** The container environments, each with "Use for this notebook". */
export function EnvironmentList(props: { model: IGpuModel; onUse: UseEnvironment }): JSX.Element {
  const { model } = props;
  const status = model.environments;
  switch (status.kind) {
    case 'loading':
      return <StateMessage title="Reading environments…" busy testId="env-loading" />;
    case 'not-available':
      return (
        <StateMessage
          title="Container kernels are not available"
          detail="This server offers no container environments; notebooks run with its local kernels."
          testId="env-not-available"
        />
      );
    case 'error':
      return (
        <StateMessage tone="error" title="Environments could not be read" detail={status.message} testId="env-error" />
      );
    case 'ready': {
      const docker = status.reply.docker;
      const envs = status.reply.environments ?? [];
      const dockerDown = docker !== null && !docker.available;
      return (
        <>
          {dockerDown ? (
            <StateMessage
              tone="warn"
              title="Docker is not available"
              detail={sentence(docker?.reason ?? 'the Docker engine does not answer')}
              testId="env-no-docker"
            />
          ) : null}
          {envs.length === 0 ? (
            <StateMessage
              title="No container environments are defined"
              detail={
                <>
                  An administrator adds one with <code>jupyter gpuenv add pytorch-2.6-cuda12.4</code>, then restarts the
                  server.
                </>
              }
              testId="env-empty"
            />
          ) : (
            <ul className="jp-GpuEnv-envs">
              {envs.map(env => (
                <Environment
                  key={env.name}
                  env={env}
                  current={model.current}
                  dockerDown={dockerDown}
                  onUse={props.onUse}
                />
              ))}
            </ul>
          )}
        </>
      );
    }
  }
}

function Environment(props: {
  env: IEnvironment;
  current: ICurrentNotebook | null;
  dockerDown: boolean;
  onUse: UseEnvironment;
}): JSX.Element {
  const { env, current } = props;
  const blocked = whyNot(env, current, props.dockerDown);
  const state = env.state ?? 'unavailable';
  const name = env.display_name ?? env.name;
  return (
    <li className="jp-GpuEnv-env" data-environment={env.name} aria-label={name}>
      <div className="jp-GpuEnv-envHeader">
        <span className="jp-GpuEnv-envName">{name}</span>
        <span className={`jp-GpuEnv-pill jp-mod-${state}${env.can_start ? ' jp-mod-can-start' : ''}`}>
          {environmentState(state, env.can_start)}
        </span>
      </div>
      <div className="jp-GpuEnv-envImage" title={env.image ?? undefined}>
        {env.image ?? '–'}
      </div>
      <div className="jp-GpuEnv-envMeta">
        {gpuPolicy(env.gpus)}
        {env.cuda_version ? ` · CUDA ${env.cuda_version}` : ''}
        {env.availability ? ` · ${env.availability}` : ''}
        {state === 'pulling' && env.pull_progress ? ` · ${env.pull_progress}` : ''}
      </div>
      {/* a startable environment's reason is a note (e.g. the first start pulls the image); else it is the why */}
      {env.can_start && env.reason && state !== 'ready' ? (
        <div className="jp-GpuEnv-envReason">{sentence(env.reason)}</div>
      ) : null}
      <button
        className="jp-GpuEnv-use jp-mod-styled jp-mod-accept"
        disabled={blocked !== null}
        title={blocked ?? `Restart this notebook's kernel in ${name}`}
        aria-describedby={blocked ? `jp-GpuEnv-why-${env.name}` : undefined}
        onClick={() => props.onUse(env)}
      >
        Use for this notebook
      </button>
      {blocked ? (
        <div className="jp-GpuEnv-why" id={`jp-GpuEnv-why-${env.name}`}>
          {blocked}
        </div>
      ) : null}
    </li>
  );
}
