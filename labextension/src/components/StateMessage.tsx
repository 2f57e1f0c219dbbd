import React from 'react';

/** Loading, empty and error states: always a sentence, never a blank area. */
export function StateMessage(props: {
  title: string;
  detail?: React.ReactNode;
  tone?: 'info' | 'warn' | 'error';
  busy?: boolean;
  testId?: string;
}): JSX.Element {
  const tone = props.tone ?? 'info';
  return (
    <div
      className={`jp-GpuEnv-state jp-mod-${tone}`}
      role={tone === 'error' ? 'alert' : 'status'}
      aria-busy={props.busy ? 'true' : undefined}
      data-state={props.testId}
    >
      <div className="jp-GpuEnv-stateTitle">
        {props.busy ? <span className="jp-GpuEnv-pulse" aria-hidden="true" /> : null}
        {props.title}
      </div>
      {props.detail ? <div className="jp-GpuEnv-stateDetail">{props.detail}</div> : null}
    </div>
  );
}
