import React from 'react';

import { restartNotices } from '../kernels';
import type { IGpuModel } from '../tokens';

/**
 * Kernels that were restarted after their container ended on its own, e.g. at its memory limit. Shown
 * above the GPUs because a restarted kernel holds no GPU memory yet, so no GPU card lists it.
 */
export function KernelNotices(props: { model: IGpuModel }): JSX.Element | null {
  const { model } = props;
  const notices = restartNotices(model.kernels, id => model.notebookOf(id));
  if (notices.length === 0) {
    return null;
  }
  const current = model.current?.kernelId ?? null;
  return (
    <ul className="jp-GpuEnv-restarts" aria-label="Restarted kernels">
      {notices.map(n => (
        <li
          key={n.kernelId}
          className="jp-GpuEnv-restart"
          data-kernel={n.kernelId}
          aria-current={n.kernelId === current ? 'true' : undefined}
        >
          <span className="jp-GpuEnv-restartedName">{n.label}</span> {n.text}
        </li>
      ))}
    </ul>
  );
}
