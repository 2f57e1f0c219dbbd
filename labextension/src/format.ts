/** How numbers read in the panel. Pure: no DOM, no Lab imports. */
import type { IPullProgress } from './wire';

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

const isNum = (v: number | null | undefined): v is number => typeof v === 'number' && Number.isFinite(v);

/** 6966738944 -> "6.5"; one decimal, like nvidia-smi's GiB columns. */
export function gib(bytes: number | null | undefined): string {
  return isNum(bytes) ? (bytes / GIB).toFixed(1) : '–';
}

/** "6.5 / 79.6 GiB" */
export function memoryUsage(used: number | null | undefined, total: number | null | undefined): string {
  return `${gib(used)} / ${gib(total)} GiB`;
}

/** A process's memory: "4.0 GiB", or "500 MiB" under one GiB so small allocations do not read as 0.0. */
export function bytes(value: number | null | undefined): string {
  if (!isNum(value)) {
    return '–';
  }
  return value >= GIB ? `${(value / GIB).toFixed(1)} GiB` : `${Math.round(value / MIB)} MiB`;
}

export function percent(value: number | null | undefined): string {
  return isNum(value) ? `${Math.round(value)} %` : '–';
}

export function celsius(value: number | null | undefined): string {
  return isNum(value) ? `${Math.round(value)} °C` : '–';
}

/** "312 / 700 W", "312 W" without a limit. */
export function power(watts: number | null | undefined, limit: number | null | undefined): string {
  if (!isNum(watts)) {
    return '–';
  }
  return isNum(limit) ? `${Math.round(watts)} / ${Math.round(limit)} W` : `${Math.round(watts)} W`;
}

/** used / total clamped to 0..1; 0 when unknown. */
export function fraction(used: number | null | undefined, total: number | null | undefined): number {
  if (!isNum(used) || !isNum(total) || total <= 0) {
    return 0;
  }
  return Math.min(1, Math.max(0, used / total));
}

/** The file name of a notebook path: "work/analysis.ipynb" -> "analysis.ipynb". */
export function basename(path: string): string {
  const parts = path.split('/');
  return parts[parts.length - 1] || path;
}

/** Capitalised, ends with a full stop: server reasons are lower-case clauses. */
export function sentence(text: string): string {
  const trimmed = text.trim();
  if (!trimmed) {
    return trimmed;
  }
  const first = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

/**
 * A server's sentence split where the server splits it: the first line says what to do, the lines after it what
 * a lower layer said (NVML, the engine), which the panel folds behind a toggle.
 */
export function splitReason(text: string): { lead: string; details: string | null } {
  const at = text.indexOf('\n');
  if (at < 0) {
    return { lead: sentence(text), details: null };
  }
  const details = text.slice(at + 1).trim();
  return { lead: sentence(text.slice(0, at)), details: details ? sentence(details) : null };
}

/** Why the panel has no GPUs to show, in words a notebook user acts on. */
export function noGpuMessage(reason: string | null): { title: string; detail: string } {
  const text = reason ?? '';
  // describe() on the server gives "NVML: <NVML's words> — <what it means>"; the meaning is what users need
  const meaning = text.includes(' — ') ? text.slice(text.indexOf(' — ') + 3) : text;
  if (/LibraryNotFound|libnvidia-ml|no NVIDIA driver/i.test(text)) {
    return {
      title: 'No GPU on this machine',
      detail: sentence(meaning || 'no NVIDIA driver was found') + ' Notebooks here run on the CPU.'
    };
  }
  return { title: 'GPUs cannot be read', detail: sentence(meaning || 'NVML gave no reason') };
}

/** GPU policy of an environment in words: "all" -> "all GPUs", "exclusive:1" -> "1 GPU of its own". */
export function gpuPolicy(policy: string | null): string {
  if (!policy || policy === 'none') {
    return 'no GPU';
  }
  if (policy === 'all') {
    return 'all GPUs';
  }
  const exclusive = /^exclusive:(\d+)$/.exec(policy);
  if (exclusive) {
    const n = Number(exclusive[1]);
    return n === 1 ? '1 GPU of its own' : `${n} GPUs of its own`;
  }
  if (/^\d+$/.test(policy)) {
    return Number(policy) === 1 ? 'any 1 GPU' : `any ${policy} GPUs`;
  }
  return `GPU ${policy.split(',').join(', ')}`;
}

/** An environment's state as a short label; a missing image that the first start pulls is no fault. */
export function environmentState(state: string | null, canStart: boolean): string {
  switch (state) {
    case 'ready':
      return 'ready';
    case 'image-missing':
      return canStart ? 'pulled on first start' : 'image missing';
    case 'pulling':
      return 'pulling';
    case 'incompatible':
      return 'incompatible';
    case 'runtime-missing':
      return 'needs kernel runtime';
    case 'invalid':
      return 'misconfigured';
    default:
      return 'unavailable';
  }
}

/** Sizes as registries and `docker pull` count them: "361 MB", "7.6 GB". */
export function size(value: number | null | undefined): string {
  if (!isNum(value)) {
    return '–';
  }
  return value >= 1e9 ? `${(value / 1e9).toFixed(1)} GB` : `${Math.round(value / 1e6)} MB`;
}

/** "3 s", "2 min 5 s", "1 h 3 min" */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  }
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** How long a process has run, as a column reads it: "42 s", "12 min 5 s", "2 h 5 min", "3 d 4 h". */
export function elapsed(seconds: number | null | undefined): string {
  if (!isNum(seconds)) {
    return '–';
  }
  const s = Math.max(0, seconds);
  return s < 86400 ? duration(s) : `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A pull in one line: "48 / 115 MB · 19.6 MB/s · 3 s left", or what it is doing when bytes do not tell. */
export function pullSummary(p: IPullProgress): string {
  if (p.phase === 'resolving') {
    return 'asking the registry…';
  }
  if (p.phase === 'extracting') {
    return `unpacking · ${size(p.bytes_total ?? p.bytes_done)} downloaded`;
  }
  const parts = [p.bytes_total !== null ? `${sizeOf(p.bytes_done, p.bytes_total)}` : size(p.bytes_done)];
  if (isNum(p.rate_bytes_per_s) && p.rate_bytes_per_s > 0) {
    parts.push(`${size(p.rate_bytes_per_s)}/s`);
  }
  if (isNum(p.eta_s)) {
    parts.push(`${duration(p.eta_s)} left`);
  }
  return parts.join(' · ');
}

/** "48 / 115 MB" in the unit of the total. */
function sizeOf(done: number, total: number): string {
  return total >= 1e9
    ? `${(done / 1e9).toFixed(1)} / ${(total / 1e9).toFixed(1)} GB`
    : `${Math.round(done / 1e6)} / ${Math.round(total / 1e6)} MB`;
}

/** "layers 2 of 5", or '' before the engine named them. */
export function pullLayers(p: IPullProgress): string {
  return p.layers_total ? `layers ${p.layers_done} of ${p.layers_total}` : '';
}

/** "in 4 s" */
export function retryIn(seconds: number | null): string {
  return seconds === null ? '' : seconds <= 1 ? 'retrying now' : `retrying in ${Math.round(seconds)} s`;
}

/** How long ago a moment was: "just now", "12 min ago", "2 h 5 min ago", "3 days ago". */
export function ago(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return 'just now';
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ago`;
  }
  if (s < 86400) {
    const min = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${min ? ` ${min} min` : ''} ago`;
  }
  const days = Math.floor(s / 86400);
  return `${days} day${days === 1 ? '' : 's'} ago`;
}
