import React, { useState } from 'react';

import { basename, bytes } from '../format';
import { lastExitText } from '../kernels';
import type { IGpuModel } from '../tokens';
import type { IGpuProcess } from '../wire';

export type OpenNotebook = (path: string) => void;

type SortKey = 'memory' | 'name' | 'pid';

/** The processes on one GPU, named by the notebook whose kernel runs them; sortable, a notebook's row opens it. */
export function ProcessList(props: {
  processes: IGpuProcess[];
  model: IGpuModel;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { processes, model, onOpenNotebook } = props;
  const [sort, setSort] = useState<{ key: SortKey; down: boolean }>({ key: 'memory', down: true });
  if (processes.length === 0) {
    return <div className="jp-GpuEnv-noProcesses">No processes</div>;
  }
  const current = model.current?.kernelId ?? null;
  const sorted = sortProcesses(processes, sort.key, sort.down, p => processName(p, model.notebookOf(p.kernel_id)));
  const header = (key: SortKey, label: string, className?: string): JSX.Element => (
    <th
      scope="col"
      className={className}
      aria-sort={sort.key === key ? (sort.down ? 'descending' : 'ascending') : undefined}
    >
      <button
        className="jp-GpuEnv-sort"
        title={`Sort by ${label.toLowerCase()}`}
        onClick={() => setSort({ key, down: sort.key === key ? !sort.down : key === 'memory' })}
      >
        {label}
        {sort.key === key ? (sort.down ? ' ▾' : ' ▴') : ''}
      </button>
    </th>
  );
  return (
    <table className="jp-GpuEnv-processes">
      <thead>
        <tr>
          {header('name', 'Process')}
          {header('memory', 'Memory', 'jp-GpuEnv-num')}
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
              className={`${mine ? 'jp-mod-current' : ''}${path && onOpenNotebook ? ' jp-mod-opens' : ''}`}
              aria-current={mine ? 'true' : undefined}
              onClick={path && onOpenNotebook ? () => onOpenNotebook(path) : undefined}
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

/** Processes in the order asked: by GPU memory, by name (notebook, else what it is), or by pid. Pure. */
export function sortProcesses(
  processes: IGpuProcess[],
  key: SortKey,
  down: boolean,
  nameOf: (p: IGpuProcess) => string
): IGpuProcess[] {
  const value = (p: IGpuProcess): number | string =>
    key === 'memory' ? (p.used_memory ?? 0) : key === 'pid' ? p.pid : nameOf(p);
  return [...processes].sort((a, b) => {
    const [x, y] = [value(a), value(b)];
    const order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return down ? -order : order;
  });
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
