import React from 'react';

import { polyline } from '../history';
import type { ISeries } from '../tokens';

const W = 200;
const H = 32;

/** Memory (fraction) and utilization (%) over the last samples, a few lines of SVG. */
export function Sparkline(props: { series: ISeries }): JSX.Element {
  const { memory, utilization, seconds } = props.series;
  const span = `last ${seconds < 120 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`}`;
  if (memory.length < 2) {
    return <div className="jp-GpuEnv-sparkline jp-mod-empty">Collecting history…</div>;
  }
  const peak = Math.max(...utilization);
  const label = `${span}: memory ${pct(Math.min(...memory))} to ${pct(Math.max(...memory))}, utilization up to ${Math.round(peak)} %`;
  return (
    <div className="jp-GpuEnv-sparkline">
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={label}>
        <polygon className="jp-GpuEnv-areaMem" points={`0,${H} ${polyline(memory, W, H, 1)} ${W},${H}`} />
        <polyline className="jp-GpuEnv-lineMem" points={polyline(memory, W, H, 1)} />
        <polyline className="jp-GpuEnv-lineUtil" points={polyline(utilization, W, H, 100)} />
      </svg>
      <div className="jp-GpuEnv-legend" aria-hidden="true">
        <span className="jp-GpuEnv-keyMem">memory</span>
        <span className="jp-GpuEnv-keyUtil">utilization</span>
        <span className="jp-GpuEnv-span">{span}</span>
      </div>
    </div>
  );
}

const pct = (f: number): string => `${Math.round(f * 100)} %`;
