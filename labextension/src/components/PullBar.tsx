import React from 'react';

import { pullLayers, pullSummary } from '../format';
import type { IPullProgress } from '../wire';

/** A pull under way: a progress bar, "layers 2 of 5", and bytes, rate and time left in words. */
export function PullBar(props: { progress: IPullProgress; label: string; compact?: boolean }): JSX.Element {
  const p = props.progress;
  const known = p.percent !== null && p.phase === 'downloading';
  const pct = p.phase === 'extracting' ? 100 : (p.percent ?? 0);
  const summary = pullSummary(p);
  const layers = pullLayers(p);
  return (
    <div className={`jp-GpuEnv-pull${props.compact ? ' jp-mod-compact' : ''}`}>
      {props.compact ? null : (
        <div className="jp-GpuEnv-meterText">
          <span className="jp-GpuEnv-meterLabel">
            {props.label}
            {layers ? ` · ${layers}` : ''}
          </span>
          <span className="jp-GpuEnv-meterValue">{known ? `${Math.floor(p.percent ?? 0)} %` : ''}</span>
        </div>
      )}
      <div
        className={`jp-GpuEnv-bar${known || p.phase === 'extracting' ? '' : ' jp-mod-indeterminate'}`}
        role="progressbar"
        aria-label={`${props.label} ${p.image}`}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={known ? Math.floor(p.percent ?? 0) : undefined}
        aria-valuetext={summary}
      >
        <div className="jp-GpuEnv-barFill" style={known || p.phase === 'extracting' ? { width: `${pct}%` } : {}} />
      </div>
      {props.compact ? null : <div className="jp-GpuEnv-pullText">{summary}</div>}
    </div>
  );
}
