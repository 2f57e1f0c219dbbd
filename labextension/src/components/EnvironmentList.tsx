import React from 'react';

import { canPrepare, pullingFor, warmMark, whyNot } from '../environments';
import { basename, environmentState, gpuPolicy, sentence } from '../format';
import type { ICurrentNotebook, IGpuModel } from '../tokens';
import type { IEnvironment, IEnvironmentsReply } from '../wire';
import { EnvironmentTerminals, OpenTerminal } from './EnvironmentTerminals';
import type { OpenNotebook } from './ProcessList';
import { PullBar } from './PullBar';
import { Reason } from './Reason';
import { StateMessage } from './StateMessage';

export type UseEnvironment = (env: IEnvironment) => void;

/** The container environments, each with "Use for this notebook". */
export function EnvironmentList(props: {
  model: IGpuModel;
  onUse: UseEnvironment;
  onTerminal?: OpenTerminal;
  onOpenNotebook?: OpenNotebook;
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
      const waiting = pullingFor(envs, model.current);
      return (
        <>
          {status.stale ? (
            <div className="jp-GpuEnv-stale" role="status" data-state="env-stale" title={status.stale}>
              Could not refresh; showing the last list. {status.stale}
            </div>
          ) : null}
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
                  An administrator adds one with <code>jupyter gpuenv add pytorch-2.6-cuda12.4</code>; it appears here
                  and in the Launcher without a restart.
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
                  terminals={status.reply.terminals ?? null}
                  waiting={waiting === env ? (model.current?.path ?? null) : null}
                  onUse={props.onUse}
                  onTerminal={props.onTerminal}
                  onOpenNotebook={props.onOpenNotebook}
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
  terminals: IEnvironmentsReply['terminals'];
  /** The notebook in focus waits for this environment's image: its path. */
  waiting: string | null;
  onUse: UseEnvironment;
  onTerminal?: OpenTerminal;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { env, current } = props;
  const blocked = whyNot(env, current, props.dockerDown);
  const warm = warmMark(env);
  const state = env.state ?? 'unavailable';
  const name = env.display_name ?? env.name;
  return (
    <li className="jp-GpuEnv-env" data-environment={env.name} aria-label={name}>
      <div className="jp-GpuEnv-envHeader">
        <span className="jp-GpuEnv-envName" title={name}>
          {name}
        </span>
        <span className={`jp-GpuEnv-pill jp-mod-${state}${env.can_start ? ' jp-mod-can-start' : ''}`}>
          {environmentState(state, env.can_start)}
        </span>
        {warm ? (
          <span className="jp-GpuEnv-pill jp-mod-warm" title={warm} data-state="env-warm">
            warm
          </span>
        ) : null}
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
      {props.waiting ? (
        <div className="jp-GpuEnv-envWaiting" role="status">
          {basename(props.waiting)} waits for this image: its kernel starts in {name} once it is pulled.
        </div>
      ) : null}
      {env.pull_error && !env.pull_progress ? (
        <Reason className="jp-GpuEnv-pullError" role="alert" text={`the last pull failed: ${env.pull_error.message}`} />
      ) : null}
      {/* a startable environment's reason is a note (e.g. the first start pulls the image; a bar says it better) */}
      {env.can_start && env.reason && state !== 'ready' && !env.pull_progress ? (
        <Reason className="jp-GpuEnv-envReason" text={env.reason} />
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
      {blocked ? <Reason className="jp-GpuEnv-why" id={`jp-GpuEnv-why-${env.name}`} text={blocked} /> : null}
      {props.onTerminal ? (
        <EnvironmentTerminals
          model={props.model}
          env={env}
          dockerDown={props.dockerDown}
          terminals={props.terminals}
          onTerminal={props.onTerminal}
          onOpenNotebook={props.onOpenNotebook}
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
      {/* a pull that failed is said once: by the row's "the last pull failed", once the server reports it */}
      {request.error && !env.pull_error ? (
        <Reason className="jp-GpuEnv-pullError" role="alert" text={request.error} />
      ) : null}
    </>
  );
}
