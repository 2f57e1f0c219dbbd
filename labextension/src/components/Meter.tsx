import React from 'react';

/** A labelled horizontal bar; screen readers get it as a meter with the same words sighted users read. */
export function Meter(props: { label: string; value: number; text: string; warnAt?: number }): JSX.Element {
  const pct = Math.round(Math.min(1, Math.max(0, props.value)) * 1000) / 10;
  const warn = props.value >= (props.warnAt ?? 0.9);
  return (
    <div className="jp-GpuEnv-meter">
      <div className="jp-GpuEnv-meterText">
        <span className="jp-GpuEnv-meterLabel">{props.label}</span>
        <span className="jp-GpuEnv-meterValue">{props.text}</span>
      </div>
      <div
        className={`jp-GpuEnv-bar${warn ? ' jp-mod-warn' : ''}`}
        role="meter"
        aria-label={props.label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={pct}
        aria-valuetext={props.text}
      >
        <div className="jp-GpuEnv-barFill" style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}
