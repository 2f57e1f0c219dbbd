import React from 'react';

import { basename, bytes } from '../format';
import { lastExitText } from '../kernels';
import type { IGpuModel, IGpuProcess } from '../tokens';

/** The processes on one GPU, named by the notebook whose kernel runs them. */
export function ProcessList(props: { processes: IGpuProcess[]; model: IGpuModel }): JSX.Element {
  const { processes, model } = props;
  if (processes.length === 0) {
    return <div className="jp-GpuEnv-noProcesses">No processes</div>;
  }
  const current = model.current?.kernelId ?? null;
  const sorted = [...processes].sort((a, b) => (b.used_memory ?? 0) - (a.used_memory ?? 0));
  return (
    <table className="jp-GpuEnv-processes">
      <thead>
        <tr>
          <th scope="col">Process</th>
          <th scope="col" className="jp-GpuEnv-num">
            Memory
          </th>
        </tr>
      </thead>
      <tbody>
        {sorted.map(p => {
          const path = model.notebookOf(p.kernel_id);
          const mine = current !== null && p.kernel_id === current;
          const restarted = lastExitText(model.lastExit(p.kernel_id));
          return (
            <tr
              key={`${p.pid}-${p.gpu_instance ?? ''}`}
              className={mine ? 'jp-mod-current' : undefined}
              aria-current={mine ? 'true' : undefined}
            >
              <td title={describe(p, path)}>
                <span className="jp-GpuEnv-procName">{processName(p, path)}</span>
                <span className="jp-GpuEnv-pid">
                  pid {p.pid}
                  {p.container_id ? ` · container ${p.container_id.slice(0, 12)}` : ''}
                </span>
                {restarted ? <span className="jp-GpuEnv-lastExit">{restarted}</span> : null}
              </td>
              <td className="jp-GpuEnv-num">{bytes(p.used_memory)}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

/** What a process is to the person looking: their notebook, their kernel, someone else's kernel, or other. */
export function processName(p: IGpuProcess, path: string | null): string {
  if (path) {
    return basename(path);
  }
  if (p.kernel_id) {
    return 'kernel without notebook';
  }
  if (p.user) {
    return p.user === 'another user' ? "another user's kernel" : `${p.user}'s kernel`;
  }
  return 'other process';
}

function describe(p: IGpuProcess, path: string | null): string {
  const owner =
    path ?? (p.kernel_id ? `kernel ${p.kernel_id}` : p.user ? processName(p, null) : 'not a kernel of this server');
  return `${owner} — pid ${p.pid}${p.type ? `, ${p.type}` : ''}${p.gpu_instance ? `, MIG ${p.gpu_instance}` : ''}`;
}
