import React from 'react';

import { basename, sentence } from '../format';
import { hostMemoryText, hostMemoryWarning } from '../kernels';
import { kernelsOf } from '../terminalInfo';
import type { IGpuModel } from '../tokens';
import type { IEnvironment, IEnvironmentsReply, TerminalTarget } from '../wire';
import { OpenNotebook, opensNotebook } from './ProcessList';

export type OpenTerminal = (target: TerminalTarget) => void;

const IN_KERNEL =
  "A shell in this kernel's container: its GPUs, files, user and working folder. It ends when the kernel shuts " +
  'down or restarts; a job under tmux keeps running until then.';
const IN_OWN_CONTAINER =
  'A shell in a new container of this environment, started for the terminal alone. Closing the terminal removes ' +
  'the container (tmux and all) and frees its GPUs.';

/**
 * An environment's running kernels, each with its memory against the environment's limit (a warning before the
 * limit) and a terminal in its container; a kernel's row opens its notebook. Then a terminal in a container of
 * its own.
 */
export function EnvironmentTerminals(props: {
  model: IGpuModel;
  env: IEnvironment;
  dockerDown: boolean;
  /** Whether this server opens terminals at all (null: an older server, which says so when one is opened). */
  terminals?: IEnvironmentsReply['terminals'];
  onTerminal: OpenTerminal;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { model, env, onTerminal } = props;
  const kernels = kernelsOf(model.kernels, env.name);
  // e.g. a server that runs as root: its kernels' containers run as root, and a terminal never opens a root shell
  const off =
    props.terminals && !props.terminals.available ? sentence(props.terminals.reason ?? 'terminals are off') : null;
  const own = off
    ? off
    : props.dockerDown
      ? 'Docker is not available.'
      : !env.can_start
        ? (env.reason ?? 'This environment cannot start here.')
        : env.state === 'image-missing' || env.state === 'pulling'
          ? 'Its image is not on this machine yet: prepare it (or start a notebook with it) first.'
          : null;
  return (
    <div className="jp-GpuEnv-terminals">
      {kernels.length > 0 ? (
        <ul className="jp-GpuEnv-envKernels" aria-label={`Kernels running in ${env.display_name ?? env.name}`}>
          {kernels.map(k => {
            const path = model.notebookOf(k.kernel_id);
            const memory = hostMemoryText(k.host_memory);
            const warning = hostMemoryWarning(k.host_memory);
            const opens = opensNotebook(path, props.onOpenNotebook);
            return (
              <li
                key={k.kernel_id}
                className={`jp-GpuEnv-envKernel${opens ? ' jp-mod-opens' : ''}${warning ? ' jp-mod-warn' : ''}`}
                data-kernel={k.kernel_id}
                onClick={opens}
              >
                <span className="jp-GpuEnv-envKernelName" title={path ? `Open ${path}` : k.kernel_id}>
                  {path ? basename(path) : `kernel ${k.kernel_id.slice(0, 8)}`}
                </span>
                {memory ? (
                  <span
                    className="jp-GpuEnv-kernelMemory"
                    title="The memory this kernel's container holds, against the environment's memory limit"
                  >
                    {memory}
                  </span>
                ) : null}
                <button
                  className="jp-GpuEnv-terminal jp-mod-styled"
                  disabled={off !== null}
                  title={off ?? IN_KERNEL}
                  aria-label="Open terminal in this kernel's container"
                  onClick={() => onTerminal({ kernel_id: k.kernel_id })}
                >
                  Terminal
                </button>
                {warning ? (
                  <div className="jp-GpuEnv-memoryWarning" role="alert">
                    {warning}
                  </div>
                ) : null}
              </li>
            );
          })}
        </ul>
      ) : null}
      <button
        className="jp-GpuEnv-terminal jp-mod-styled"
        disabled={own !== null}
        title={own ?? IN_OWN_CONTAINER}
        aria-label="Open terminal in this environment"
        onClick={() => onTerminal({ environment: env.name })}
      >
        Terminal, own container
      </button>
      {off ? <div className="jp-GpuEnv-why jp-GpuEnv-terminalsOff">{off}</div> : null}
    </div>
  );
}
