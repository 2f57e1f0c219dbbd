/** The history behind each GPU card's chart and dashboard. Pure: plain arrays in, plain arrays out. */
import type { ISeries } from './tokens';
import type { IGpusReply, IHistorySample } from './wire';

interface IPoint {
  t: number;
  memory: number; // fraction of total
  memoryUsed: number | null; // bytes
  memoryTotal: number | null;
  utilization: number; // percent
  temperature: number | null;
  power: number | null;
  pcieTx: number | null; // MB/s
  pcieRx: number | null;
}

/** Per GPU index, the points of the last `window` seconds (the server's whole history), at most `length`. */
export class History {
  constructor(
    private _length: number,
    private _window: number | null = null
  ) {}

  get length(): number {
    return this._length;
  }

  set length(value: number) {
    this._length = Math.max(2, Math.floor(value));
    this._trim();
  }

  /** Seconds of history kept: the server's window (its interval × history length); null keeps `length` points. */
  get window(): number | null {
    return this._window;
  }

  set window(value: number | null) {
    this._window = value !== null && value > 0 ? value : null;
    this._trim();
  }

  /** Time of the newest sample kept, or null when empty. */
  get lastTime(): number | null {
    return this._last;
  }

  /** Add samples newer than what is kept; older or repeated ones are ignored. */
  add(samples: IHistorySample[]): void {
    for (const sample of samples) {
      if (this._last !== null && sample.t <= this._last) {
        continue;
      }
      this._last = sample.t;
      for (const gpu of sample.gpus) {
        let points = this._points.get(gpu.index);
        if (!points) {
          points = [];
          this._points.set(gpu.index, points);
        }
        const total = gpu.memory_total ?? 0;
        points.push({
          t: sample.t,
          memory: total > 0 && gpu.memory_used !== null ? gpu.memory_used / total : 0,
          memoryUsed: gpu.memory_used,
          memoryTotal: gpu.memory_total,
          utilization: gpu.utilization_gpu ?? 0,
          temperature: gpu.temperature_c ?? null,
          power: gpu.power_w ?? null,
          pcieTx: gpu.pcie_mb_s?.tx ?? null,
          pcieRx: gpu.pcie_mb_s?.rx ?? null
        });
      }
    }
    this._trim();
  }

  series(index: number): ISeries {
    const points = this._points.get(index) ?? [];
    return {
      t: points.map(p => p.t),
      memory: points.map(p => p.memory),
      memoryUsed: points.map(p => p.memoryUsed),
      memoryTotal: points.length ? points[points.length - 1].memoryTotal : null,
      utilization: points.map(p => p.utilization),
      temperature: points.map(p => p.temperature),
      power: points.map(p => p.power),
      pcieTx: points.map(p => p.pcieTx),
      pcieRx: points.map(p => p.pcieRx),
      seconds: points.length > 1 ? points[points.length - 1].t - points[0].t : 0
    };
  }

  private _trim(): void {
    for (const points of this._points.values()) {
      let drop = Math.max(0, points.length - this._length);
      if (this._window !== null && this._last !== null) {
        const oldest = this._last - this._window;
        while (drop < points.length - 2 && points[drop].t < oldest) {
          drop++;
        }
      }
      points.splice(0, drop);
    }
  }

  private _points = new Map<number, IPoint[]>();
  private _last: number | null = null;
}

/** The history sample a GPU snapshot stands for, so steady polling needs no history request. */
export function sampleOf(reply: IGpusReply): IHistorySample | null {
  if (!reply.available || !reply.sampled_at) {
    return null;
  }
  return {
    t: reply.sampled_at,
    gpus: (reply.gpus ?? [])
      .filter(g => !g.error)
      .map(g => ({
        index: g.index,
        uuid: g.uuid,
        memory_used: g.memory?.used ?? null,
        memory_total: g.memory?.total ?? null,
        utilization_gpu: g.utilization?.gpu ?? null,
        utilization_memory: g.utilization?.memory ?? null,
        temperature_c: g.temperature_c,
        power_w: g.power_w,
        pcie_mb_s: g.pcie_mb_s ?? null
      }))
  };
}

/** SVG polyline points for values in 0..max, drawn into width x height (y grows downwards). */
export function polyline(values: number[], width: number, height: number, max: number): string {
  if (values.length === 0) {
    return '';
  }
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((v, i) => {
      const y = height - (Math.min(max, Math.max(0, v)) / max) * height;
      const x = values.length > 1 ? i * step : width;
      return `${round(x)},${round(y)}`;
    })
    .join(' ');
}

const round = (v: number): number => Math.round(v * 10) / 10;

/** SVG polyline points for values placed by their time `t` (gaps stay gaps in width), y as in `polyline`. */
export function polylineAt(t: number[], values: number[], width: number, height: number, max: number): string {
  const first = t[0];
  const span = t.length > 1 ? t[t.length - 1] - first : 0;
  return values
    .map((v, i) => {
      const x = span > 0 ? ((t[i] - first) / span) * width : width;
      const y = height - (Math.min(max, Math.max(0, v)) / max) * height;
      return `${round(x)},${round(y)}`;
    })
    .join(' ');
}

/** The index of the sample nearest to `fraction` (0..1) of the way from the first time to the last. */
export function nearestIndex(t: number[], fraction: number): number {
  if (t.length === 0) {
    return -1;
  }
  const at = t[0] + Math.min(1, Math.max(0, fraction)) * (t[t.length - 1] - t[0]);
  let best = 0;
  for (let i = 1; i < t.length; i++) {
    if (Math.abs(t[i] - at) < Math.abs(t[best] - at)) {
      best = i;
    }
  }
  return best;
}
