import React, { useState } from 'react';

import { bytes, duration } from '../format';
import { nearestIndex, polylineAt } from '../history';
import type { ISeries } from '../tokens';

const W = 200;
const H = 40;

/** What the hover readout says of sample `i`: when, memory, utilization. Pure. */
export function readout(series: ISeries, i: number): string {
  const ago = series.t[series.t.length - 1] - series.t[i];
  const when = ago < 1 ? 'now' : `${duration(ago)} ago`;
  const used = series.memoryUsed[i];
  const memory = used !== null ? `${bytes(used)} (${Math.round(series.memory[i] * 100)} %)` : '–';
  return `${when} · memory ${memory} · utilization ${Math.round(series.utilization[i])} %`;
}

/**
 * Memory (share of total) and utilization (%) over the server's whole history window: a 0–100 % scale, the span
 * under it, and a readout of the sample under the pointer.
 */
export function HistoryChart(props: { series: ISeries }): JSX.Element {
  const { series } = props;
  const [hover, setHover] = useState<number | null>(null);
  const { memory, utilization, seconds, t } = series;
  if (memory.length < 2) {
    return <div className="jp-GpuEnv-sparkline jp-mod-empty">Collecting history…</div>;
  }
  const span = seconds < 120 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
  const peak = Math.max(...utilization);
  const label = `last ${span}: memory ${pct(Math.min(...memory))} to ${pct(Math.max(...memory))}, utilization up to ${Math.round(peak)} %`;
  const i = hover !== null && hover < t.length ? hover : null;
  const x = i !== null && seconds > 0 ? ((t[i] - t[0]) / seconds) * 100 : null;
  const move = (event: React.PointerEvent<HTMLDivElement>): void => {
    const box = event.currentTarget.getBoundingClientRect();
    setHover(nearestIndex(t, (event.clientX - box.left) / box.width));
  };
  return (
    <div className="jp-GpuEnv-sparkline jp-GpuEnv-chart">
      <div className="jp-GpuEnv-chartBody">
        <div className="jp-GpuEnv-chartScale" aria-hidden="true">
          <span>100 %</span>
          <span>0</span>
        </div>
        <div className="jp-GpuEnv-chartPlot" onPointerMove={move} onPointerLeave={() => setHover(null)}>
          <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={label}>
            <line className="jp-GpuEnv-grid" x1="0" x2={W} y1={H / 2} y2={H / 2} />
            <polygon className="jp-GpuEnv-areaMem" points={`0,${H} ${polylineAt(t, memory, W, H, 1)} ${W},${H}`} />
            <polyline className="jp-GpuEnv-lineMem" points={polylineAt(t, memory, W, H, 1)} />
            <polyline className="jp-GpuEnv-lineUtil" points={polylineAt(t, utilization, W, H, 100)} />
          </svg>
          {x !== null ? <div className="jp-GpuEnv-cursor" style={{ left: `${x}%` }} aria-hidden="true" /> : null}
        </div>
      </div>
      <div className="jp-GpuEnv-legend">
        {i !== null ? (
          <span className="jp-GpuEnv-readout" role="status">
            {readout(series, i)}
          </span>
        ) : (
          <>
            <span className="jp-GpuEnv-keyMem">memory</span>
            <span className="jp-GpuEnv-keyUtil">utilization</span>
            <span className="jp-GpuEnv-span" title={`The last ${span}, up to now`}>
              {span}
            </span>
          </>
        )}
      </div>
    </div>
  );
}

const pct = (f: number): string => `${Math.round(f * 100)} %`;
