/** The short history behind each GPU card's sparkline. Pure: plain arrays in, plain arrays out. */
import type { IGpusReply, IHistorySample, ISeries } from './tokens';

interface IPoint {
  t: number;
  memory: number; // fraction of total
  utilization: number; // percent
}

/** Per GPU index, the last `length` points, oldest first. */
export class History {
  constructor(private _length: number) {}

  get length(): number {
    return this._length;
  }

  set length(value: number) {
    this._length = Math.max(2, Math.floor(value));
    for (const points of this._points.values()) {
      points.splice(0, Math.max(0, points.length - this._length));
    }
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
          utilization: gpu.utilization_gpu ?? 0
        });
        if (points.length > this._length) {
          points.splice(0, points.length - this._length);
        }
      }
    }
  }

  series(index: number): ISeries {
    const points = this._points.get(index) ?? [];
    return {
      memory: points.map(p => p.memory),
      utilization: points.map(p => p.utilization),
      seconds: points.length > 1 ? points[points.length - 1].t - points[0].t : 0
    };
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
        power_w: g.power_w
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
