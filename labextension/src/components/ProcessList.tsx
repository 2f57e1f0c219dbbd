import React, { useState } from 'react';

import { basename, bytes, elapsed, percent } from '../format';
import { lastExitText } from '../kernels';
import type { IGpuModel } from '../tokens';
import type { IGpuProcess } from '../wire';

export type OpenNotebook = (path: string) => void;

/** The columns, as nvitop has them: what it is, whose, GPU %, GPU memory, host memory, how long it has run. */
export type SortKey = 'name' | 'user' | 'gpu' | 'memory' | 'host' | 'time';

/** `wide`: a column a narrow side panel folds into the line under the name (CSS container query). */
const COLUMNS: { key: SortKey; label: string; title: string; numeric: boolean; wide: boolean }[] = [
  { key: 'name', label: 'Process', title: 'its notebook, else its command', numeric: false, wide: false },
  { key: 'user', label: 'User', title: 'the account it runs as', numeric: false, wide: true },
  { key: 'gpu', label: 'GPU %', title: "the share of the GPU's SMs it kept busy lately", numeric: true, wide: false },
  { key: 'memory', label: 'GPU mem', title: 'the GPU memory it holds', numeric: true, wide: false },
  { key: 'host', label: 'Host mem', title: 'the host memory it holds (resident)', numeric: true, wide: true },
  { key: 'time', label: 'Time', title: 'how long it has run', numeric: true, wide: true }
];

const cellClass = (c: { numeric: boolean; wide: boolean }): string | undefined =>
  [c.numeric ? 'jp-GpuEnv-num' : '', c.wide ? 'jp-GpuEnv-wide' : ''].filter(Boolean).join(' ') || undefined;

/**
 * The processes on one GPU, named by the notebook whose kernel runs them; sortable by each column, and a row that
 * belongs to a notebook opens it. `now`: the server's time of the sample (seconds), for how long each has run.
 */
export function ProcessList(props: {
  processes: IGpuProcess[];
  model: IGpuModel;
  now: number | null;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const { processes, model, onOpenNotebook } = props;
  const [sort, setSort] = useState<{ key: SortKey; down: boolean }>({ key: 'memory', down: true });
  if (processes.length === 0) {
    return <div className="jp-GpuEnv-noProcesses">No processes</div>;
  }
  const now = props.now ?? Date.now() / 1000;
  const current = model.current?.kernelId ?? null;
  const sorted = sortProcesses(processes, sort.key, sort.down, now, p => processName(p, model.notebookOf(p.kernel_id)));
  const sortButton = (c: (typeof COLUMNS)[number]): JSX.Element => (
    <button
      className="jp-GpuEnv-sort"
      title={`Sort by ${c.title}`}
      onClick={() => setSort({ key: c.key, down: sort.key === c.key ? !sort.down : c.numeric })}
    >
      {c.label}
      {/* the arrow is aria-sort's to say: the button keeps its name */}
      <span aria-hidden="true">{sort.key === c.key ? (sort.down ? ' ▾' : ' ▴') : ''}</span>
    </button>
  );
  return (
    <div className="jp-GpuEnv-processTable">
      {/* in a narrow panel the wide columns fold under each name: they are sorted from here */}
      <div className="jp-GpuEnv-narrowSort">
        also by{' '}
        {COLUMNS.filter(c => c.wide).map(c => (
          <React.Fragment key={c.key}>{sortButton(c)} </React.Fragment>
        ))}
      </div>
      <table className="jp-GpuEnv-processes">
        <thead>
          <tr>
            {COLUMNS.map(c => (
              <th
                key={c.key}
                scope="col"
                className={`jp-GpuEnv-col-${c.key} ${cellClass(c) ?? ''}`}
                aria-sort={sort.key === c.key ? (sort.down ? 'descending' : 'ascending') : undefined}
              >
                {sortButton(c)}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {sorted.map(p => {
            const path = model.notebookOf(p.kernel_id);
            const mine = current !== null && p.kernel_id === current;
            const restarted = lastExitText(model.lastExit(p.kernel_id));
            const opens = opensNotebook(path, onOpenNotebook);
            const age = p.started_at ? elapsed(now - p.started_at) : null;
            return (
              <tr
                key={`${p.pid}-${p.gpu_instance ?? ''}`}
                className={`${mine ? 'jp-mod-current' : ''}${opens ? ' jp-mod-opens' : ''}`}
                aria-current={mine ? 'true' : undefined}
                title={opens ? `Open ${path}` : undefined}
                onClick={opens}
              >
                <td className="jp-GpuEnv-procCell" title={describe(p, path)}>
                  <span className="jp-GpuEnv-procName">{processName(p, path)}</span>
                  <span className="jp-GpuEnv-pid">
                    pid {p.pid}
                    {p.container_id ? ` · container ${p.container_id.slice(0, 12)}` : ''}
                    {path && p.command ? ` · ${p.command}` : ''}
                  </span>
                  <span className="jp-GpuEnv-narrowDetail">
                    {[userOf(p), p.host_memory ? `host ${bytes(p.host_memory)}` : null, age]
                      .filter(Boolean)
                      .join(' · ')}
                  </span>
                  {restarted ? <span className="jp-GpuEnv-lastExit">{restarted}</span> : null}
                </td>
                <td className="jp-GpuEnv-user jp-GpuEnv-wide">{userOf(p) ?? '–'}</td>
                <td className="jp-GpuEnv-num">{percent(p.gpu_utilization)}</td>
                <td className="jp-GpuEnv-num">{bytes(p.used_memory)}</td>
                <td className="jp-GpuEnv-num jp-GpuEnv-wide">{bytes(p.host_memory)}</td>
                <td className="jp-GpuEnv-num jp-GpuEnv-wide">{age ?? '–'}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/**
 * A row's click handler that opens its notebook, or undefined when it has none; a click on one of the row's own
 * buttons (Park, Terminal) stays theirs.
 */
export function opensNotebook(
  path: string | null,
  open: OpenNotebook | undefined
): ((event: React.MouseEvent) => void) | undefined {
  if (!path || !open) {
    return undefined;
  }
  return event => {
    if (!(event.target instanceof Element && event.target.closest('button'))) {
      open(path);
    }
  };
}

/** Whose process it is: its account, else (another user's on a shared host) what the broker calls them. */
export function userOf(p: IGpuProcess): string | null {
  return p.owner ?? p.user ?? null;
}

/**
 * Processes in the order asked, by any column (`now`: seconds, for how long each has run). A process without a
 * value in that column (GPU % of one that sleeps, a hidden user) comes last either way. Pure.
 */
export function sortProcesses(
  processes: IGpuProcess[],
  key: SortKey,
  down: boolean,
  now: number,
  nameOf: (p: IGpuProcess) => string
): IGpuProcess[] {
  const value = (p: IGpuProcess): number | string | null => {
    switch (key) {
      case 'name':
        return nameOf(p);
      case 'user':
        return userOf(p);
      case 'gpu':
        return p.gpu_utilization ?? null;
      case 'memory':
        return p.used_memory ?? null;
      case 'host':
        return p.host_memory ?? null;
      case 'time':
        return p.started_at ? now - p.started_at : null;
    }
  };
  return [...processes].sort((a, b) => {
    const [x, y] = [value(a), value(b)];
    if (x === null || y === null) {
      return x === y ? a.pid - b.pid : x === null ? 1 : -1;
    }
    const order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return (down ? -order : order) || a.pid - b.pid;
  });
}

/** What a process is to the person looking: their notebook, their kernel, someone else's kernel, its command. */
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
  return p.command ?? 'other process';
}

function describe(p: IGpuProcess, path: string | null): string {
  const owner =
    path ?? (p.kernel_id ? `kernel ${p.kernel_id}` : p.user ? processName(p, null) : 'not a kernel of this server');
  const what = `${owner} — pid ${p.pid}${p.type ? `, ${p.type}` : ''}${p.gpu_instance ? `, MIG ${p.gpu_instance}` : ''}`;
  return p.command ? `${what}\n${p.command}` : what;
}
