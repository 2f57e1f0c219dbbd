/** What a GPU's dashboard charts, from its history and its latest snapshot. Pure. */
import { bytes, celsius, power } from './format';
import type { ISeries } from './tokens';
import type { IGpu } from './wire';

export interface IMetric {
  title: string;
  values: (number | null)[];
  max: number;
  format: (v: number) => string;
  scale: string; // the top of the scale, in words
}

/** The charts a GPU's dashboard draws, from its history and its latest snapshot. Pure. */
export function metricsOf(series: ISeries, gpu: IGpu | null): IMetric[] {
  const total = series.memoryTotal ?? gpu?.memory?.total ?? null;
  const limit = gpu?.power_limit_w ?? null;
  const metrics: IMetric[] = [
    { title: 'Utilization', values: series.utilization, max: 100, format: v => `${Math.round(v)} %`, scale: '100 %' },
    {
      title: 'Memory',
      values: series.memoryUsed,
      max: total ?? Math.max(1, ...series.memoryUsed.map(v => v ?? 0)),
      format: v => bytes(v),
      scale: bytes(total)
    },
    {
      title: 'Power',
      values: series.power,
      max: limit ?? Math.max(1, ...series.power.map(v => v ?? 0)),
      format: v => power(v, null),
      scale: limit ? power(limit, null) : 'peak'
    },
    { title: 'Temperature', values: series.temperature, max: 100, format: v => celsius(v), scale: '100 °C' }
  ];
  if (series.pcieTx.some(v => v !== null)) {
    const peak = Math.max(1, ...series.pcieTx.map(v => v ?? 0), ...series.pcieRx.map(v => v ?? 0));
    metrics.push(
      { title: 'PCIe TX', values: series.pcieTx, max: peak, format: v => `${Math.round(v)} MB/s`, scale: 'peak' },
      { title: 'PCIe RX', values: series.pcieRx, max: peak, format: v => `${Math.round(v)} MB/s`, scale: 'peak' }
    );
  }
  return metrics;
}
