import React from 'react';

import { canPrepare, whyNot } from '../environments';
import { environmentState, gpuPolicy, sentence } from '../format';
import type { ICurrentNotebook, IEnvironment, IGpuModel } from '../tokens';
import { EnvironmentTerminals, OpenTerminal } from './EnvironmentTerminals';
import { PullBar } from './PullBar';
import { StateMessage } from './StateMessage';

export type UseEnvironment = (env: IEnvironment) => void;

/** The container environments, each with "Use for this notebook". */
export function EnvironmentList(props: {
  model: IGpuModel;
  onUse: UseEnvironment;
  onTerminal?: OpenTerminal;
}): JSX.Element {
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
                  model={model}
                  env={env}
                  current={model.current}
                  dockerDown={dockerDown}
                  onUse={props.onUse}
                  onTerminal={props.onTerminal}
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
  model: IGpuModel;
  env: IEnvironment;
  current: ICurrentNotebook | null;
  dockerDown: boolean;
  onUse: UseEnvironment;
  onTerminal?: OpenTerminal;
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
      </div>
      {env.pull_progress ? <PullBar progress={env.pull_progress} label="Pulling" /> : null}
      {env.pull_error && !env.pull_progress ? (
        <div className="jp-GpuEnv-pullError" role="alert">
          {sentence(`the last pull failed: ${env.pull_error.message}`)}
        </div>
      ) : null}
      {/* a startable environment's reason is a note (e.g. the first start pulls the image; a bar says it better) */}
      {env.can_start && env.reason && state !== 'ready' && !env.pull_progress ? (
        <div className="jp-GpuEnv-envReason">{sentence(env.reason)}</div>
      ) : null}
      {canPrepare(env, props.dockerDown) ? <Prepare model={props.model} env={env} /> : null}
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
      {props.onTerminal ? (
        <EnvironmentTerminals
          model={props.model}
          env={env}
          dockerDown={props.dockerDown}
          onTerminal={props.onTerminal}
        />
      ) : null}
    </li>
  );
}

/** "Prepare": pull the image now, so the first start does not wait for it. */
function Prepare(props: { model: IGpuModel; env: IEnvironment }): JSX.Element {
  const { model, env } = props;
  const request = model.prepareState(env.name);
  return (
    <>
      <button
        className="jp-GpuEnv-prepare jp-mod-styled"
        disabled={request.busy}
        title={`Pull ${env.image} now, so that the first start does not wait for it`}
        onClick={() => void model.prepare(env.name)}
      >
        {request.busy ? 'Preparing…' : 'Prepare'}
      </button>
      {request.error ? (
        <div className="jp-GpuEnv-pullError" role="alert">
          {sentence(request.error)}
        </div>
      ) : null}
    </>
  );
}
