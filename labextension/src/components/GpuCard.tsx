import React from 'react';

import { celsius, fraction, memoryUsage, percent, power } from '../format';
import type { IGpuModel } from '../tokens';
import type { IGpu } from '../wire';
import { Meter } from './Meter';
import { OpenNotebook, ProcessList } from './ProcessList';
import { HistoryChart } from './HistoryChart';

export type OpenDashboard = (index: number) => void;

/** One GPU: memory, utilization, temperature and power, its history, and who uses it. */
export function GpuCard(props: {
  gpu: IGpu;
  model: IGpuModel;
  compact?: boolean;
  /** The server's time of the sample (seconds since the epoch), for how long each process has run. */
  now?: number | null;
  onDashboard?: OpenDashboard;
  onOpenNotebook?: OpenNotebook;
}): JSX.Element {
  const onDashboard = props.onDashboard;
  const { gpu, model } = props;
  const title = `GPU ${gpu.index}`;
  const migCount = gpu.mig_devices?.length ?? 0;
  return (
    <article className="jp-GpuEnv-card" aria-label={`${title}: ${gpu.name ?? 'unknown model'}`}>
      <header className="jp-GpuEnv-cardHeader">
        <span className="jp-GpuEnv-index">{title}</span>
        <span className="jp-GpuEnv-name" title={describe(gpu)}>
          {shortName(gpu.name)}
        </span>
        {gpu.mig_mode ? (
          <span className="jp-GpuEnv-badge" title={`MIG mode on: ${migCount} GPU instance${migCount === 1 ? '' : 's'}`}>
            MIG{migCount ? ` · ${migCount}` : ''}
          </span>
        ) : null}
        {onDashboard ? (
          <button
            className="jp-GpuEnv-dashboardButton jp-mod-styled"
            title={`Open ${title} as a dashboard in the main area: utilization, memory, power, temperature`}
            aria-label={`Open ${title} dashboard`}
            onClick={() => onDashboard(gpu.index)}
          >
            <span aria-hidden="true">⤢</span>
          </button>
        ) : null}
      </header>
      {gpu.error ? (
        <div className="jp-GpuEnv-gpuError" role="alert">
          This GPU does not answer: {gpu.error}
        </div>
      ) : (
        <>
          <Meter
            label="Memory"
            value={fraction(gpu.memory?.used, gpu.memory?.total)}
            text={memoryUsage(gpu.memory?.used, gpu.memory?.total)}
          />
          <Meter
            label="Utilization"
            value={(gpu.utilization?.gpu ?? 0) / 100}
            text={percent(gpu.utilization?.gpu)}
            warnAt={2}
          />
          {props.compact ? null : (
            <>
              <dl className="jp-GpuEnv-stats">
                <div>
                  <dt>Temperature</dt>
                  <dd>{celsius(gpu.temperature_c)}</dd>
                </div>
                <div>
                  <dt>Power</dt>
                  <dd>{power(gpu.power_w, gpu.power_limit_w)}</dd>
                </div>
              </dl>
              <HistoryChart series={model.series(gpu.index)} />
              <ProcessList
                processes={gpu.processes ?? []}
                model={model}
                now={props.now ?? null}
                onOpenNotebook={props.onOpenNotebook}
              />
            </>
          )}
        </>
      )}
    </article>
  );
}

/** "NVIDIA H100 80GB HBM3" -> "H100 80GB HBM3": the vendor is the same on every card and costs width. */
function shortName(name: string | null): string {
  return name ? name.replace(/^NVIDIA\s+/, '') : 'Unknown GPU';
}

function describe(gpu: IGpu): string {
  const clocks = gpu.clocks_mhz?.sm ? `, SM clock ${gpu.clocks_mhz.sm} MHz` : '';
  return `${gpu.name ?? 'Unknown GPU'}${gpu.pci_bus_id ? ` at ${gpu.pci_bus_id}` : ''}${clocks}`;
}
