import React from 'react';

import { splitReason } from '../format';

/** A server's reason: what to do in one line, what NVML or the engine said folded behind "Details". */
export function Reason(props: { text: string; className?: string; id?: string; role?: string }): JSX.Element {
  const { lead, details } = splitReason(props.text);
  return (
    <div className={`jp-GpuEnv-reason ${props.className ?? ''}`} id={props.id} role={props.role}>
      <span className="jp-GpuEnv-reasonLead">{lead}</span>
      {details ? (
        <details className="jp-GpuEnv-reasonDetails">
          <summary>Details</summary>
          {details}
        </details>
      ) : null}
    </div>
  );
}
