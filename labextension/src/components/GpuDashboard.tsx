import { MainAreaWidget } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import React, { useState } from 'react';

import { IMetric, metricsOf } from '../dashboard';
import { duration } from '../format';
import { nearestIndex, polylineAt } from '../history';
import type { IGpuModel } from '../tokens';
import { OpenNotebook, ProcessList } from './ProcessList';
import { useModel } from './useModel';

const W = 400;
const H = 80;

/** One GPU in the main area: utilization, memory, power, temperature and PCIe (where NVML gives it) over the
 * server's history window, from the same model (the same polls, one server sampler) as the side panel. */
export class GpuDashboard extends ReactWidget {
  constructor(
    private _model: IGpuModel,
    readonly index: number,
    private _onOpenNotebook?: OpenNotebook
  ) {
    super();
    this.addClass('jp-GpuEnv-dashboard');
  }

  protected render(): JSX.Element {
    return <DashboardBody model={this._model} index={this.index} onOpenNotebook={this._onOpenNotebook} />;
  }
}

export function createDashboard(
  model: IGpuModel,
  index: number,
  onOpenNotebook?: OpenNotebook
): MainAreaWidget<GpuDashboard> {
  const widget = new MainAreaWidget({ content: new GpuDashboard(model, index, onOpenNotebook) });
  widget.id = `jp-GpuEnv-dashboard-${index}`;
  widget.title.label = `GPU ${index}`;
  widget.title.closable = true;
  return widget;
}

function DashboardBody(props: { model: IGpuModel; index: number; onOpenNotebook?: OpenNotebook }): JSX.Element {
  const { model, index } = props;
  useModel(model);
  const reply = model.status.kind === 'ready' ? model.status.reply : null;
  const gpu = reply?.gpus?.find(g => g.index === index) ?? null;
  const series = model.series(index);
  const pcie = series.pcieTx.some(v => v !== null);
  return (
    <div className="jp-GpuEnv-dashboardBody" aria-label={`GPU ${index} dashboard`}>
      <h2>
        GPU {index} · {gpu?.name ?? 'not seen in the last read'}
      </h2>
      <div className="jp-GpuEnv-dashboardCharts">
        {metricsOf(series, gpu).map(m => (
          <MetricChart key={m.title} metric={m} t={series.t} />
        ))}
      </div>
      {pcie ? null : (
        <p className="jp-GpuEnv-dashboardNote">
          PCIe throughput is not read by this server (c.GpuEnv.pcie_throughput; it costs ~20 ms per GPU per sample).
        </p>
      )}
      <section className="jp-GpuEnv-dashboardProcesses" aria-label="Processes">
        <h3>Processes</h3>
        <ProcessList
          processes={gpu?.processes ?? []}
          model={model}
          now={reply?.sampled_at ?? null}
          onOpenNotebook={props.onOpenNotebook}
        />
      </section>
    </div>
  );
}

function MetricChart(props: { metric: IMetric; t: number[] }): JSX.Element {
  const { metric, t } = props;
  const [hover, setHover] = useState<number | null>(null);
  const known = metric.values.map(v => v ?? 0);
  const last = metric.values.length ? metric.values[metric.values.length - 1] : null;
  const i = hover !== null && hover < t.length ? hover : null;
  const span = t.length > 1 ? t[t.length - 1] - t[0] : 0;
  const move = (event: React.PointerEvent<HTMLDivElement>): void => {
    const box = event.currentTarget.getBoundingClientRect();
    setHover(nearestIndex(t, (event.clientX - box.left) / box.width));
  };
  const at = (k: number): string => {
    const v = metric.values[k];
    const ago = t[t.length - 1] - t[k];
    return `${ago < 1 ? 'now' : `${duration(ago)} ago`} · ${v === null ? '–' : metric.format(v)}`;
  };
  return (
    <section className="jp-GpuEnv-metric" aria-label={metric.title}>
      <header>
        <h3>{metric.title}</h3>
        <span className="jp-GpuEnv-metricNow">{last === null ? '–' : metric.format(last)}</span>
      </header>
      <div className="jp-GpuEnv-chartBody">
        <div className="jp-GpuEnv-chartScale" aria-hidden="true">
          <span>{metric.scale}</span>
          <span>0</span>
        </div>
        <div className="jp-GpuEnv-chartPlot" onPointerMove={move} onPointerLeave={() => setHover(null)}>
          <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={`${metric.title} history`}>
            <line className="jp-GpuEnv-grid" x1="0" x2={W} y1={H / 2} y2={H / 2} />
            <polyline className="jp-GpuEnv-lineMem" points={polylineAt(t, known, W, H, metric.max)} />
          </svg>
          {i !== null && span > 0 ? (
            <div className="jp-GpuEnv-cursor" style={{ left: `${((t[i] - t[0]) / span) * 100}%` }} />
          ) : null}
        </div>
      </div>
      <div className="jp-GpuEnv-legend">
        {i !== null ? (
          <span className="jp-GpuEnv-readout" role="status">
            {at(i)}
          </span>
        ) : (
          <span className="jp-GpuEnv-span">−{duration(span)} … now</span>
        )}
      </div>
    </section>
  );
}
