/**
 * Park and resume, in words: what a kernel's row, the status bar and the notices say about a kernel whose GPU
 * memory is on the GPU, moving, in host memory (parked) or stuck (failed), and which button it offers. Pure.
 */
import { ago, basename, bytes, sentence } from './format';
import { IParkRequest } from './tokens';
import { ApiError, IKernel, IParking, ParkState } from './wire';

export type ParkAction = 'park' | 'resume' | 'restart';

export interface IParkButton {
  action: ParkAction;
  label: string;
  disabled: boolean;
  /** The tooltip: what pressing it does, or why it cannot be pressed. */
  title: string;
}

/** One kernel's row in the panel. */
export interface IParkView {
  /** As shown: a Park or Resume request under way shows as the move it asked for. */
  state: ParkState;
  badge: string;
  /** "4.0 GiB on GPU 0", "4.6 GiB in host memory · parked 12 min ago (by idle policy)", "Moving … to host memory…". */
  detail: string;
  /** Parking or resuming: a moving text state, and no button. */
  busy: boolean;
  /** The server's notice (parked by the idle policy) or what went wrong and what to do (failed). */
  notice: string | null;
  button: IParkButton | null;
  /** Why the last Park, Resume or Restart of this kernel failed, until one succeeds. */
  error: string | null;
}

const BADGE: Record<ParkState, string> = {
  running: 'on GPU',
  parking: 'parking…',
  parked: 'parked',
  resuming: 'resuming…',
  failed: 'failed'
};

const NOT_RUNNING: Record<Exclude<ParkState, 'running'>, string> = {
  parking: 'The kernel is being parked.',
  parked: 'The kernel is parked.',
  resuming: 'The kernel is resuming.',
  failed: 'Its GPU state could not be moved; restart the kernel.'
};

const IDLE: IParkRequest = { busy: null, error: null };

export function parkState(kernel: IKernel | null): ParkState {
  return kernel?.park?.state ?? 'running';
}

/** The kernels the panel lists: those that hold GPU memory, and every one that is not simply running. */
export function parkRows(kernels: IKernel[], memoryOf: (kernel: IKernel) => number): IKernel[] {
  return kernels.filter(k => k.park && (k.park.state !== 'running' || memoryOf(k) > 0));
}

/** The kernel's name in the panel: its notebook's file name, or a short id. */
export function kernelLabel(kernelId: string, notebook: string | null): string {
  return notebook ? basename(notebook) : `kernel ${kernelId.slice(0, 8)}`;
}

/** "GPU 0", "GPUs 0, 1", "the GPU" when the server did not say which. */
export function gpuNames(gpus: number[] | null | undefined): string {
  if (!gpus || gpus.length === 0) {
    return 'the GPU';
  }
  return gpus.length === 1 ? `GPU ${gpus[0]}` : `GPUs ${gpus.join(', ')}`;
}

/** "4.6 GiB in host memory · parked 12 min ago (by idle policy)"; the parts the server did not give are left out. */
export function parkedLine(kernel: IKernel, nowMs: number): string {
  const park = kernel.park;
  const parts: string[] = [];
  if (park?.host_memory !== null && park?.host_memory !== undefined) {
    parts.push(`${bytes(park.host_memory)} in host memory`);
  }
  let when = 'parked';
  if (park?.since !== null && park?.since !== undefined) {
    when += ` ${ago(nowMs / 1000 - park.since)}`;
  }
  if (park?.by) {
    when += ` (by ${park.by})`;
  }
  parts.push(when);
  return parts.join(' · ');
}

/** Why Park cannot be pressed for this kernel now, or null when it can. */
export function whyNotPark(kernel: IKernel | null, parking: IParking | null): string | null {
  if (!parking || !kernel?.park) {
    return 'This server cannot park kernels.';
  }
  if (!parking.available) {
    return sentence(parking.reason ?? 'this server cannot park kernels');
  }
  if (kernel.park.state !== 'running') {
    return NOT_RUNNING[kernel.park.state];
  }
  if (!kernel.park.can_park) {
    return sentence(kernel.park.reason ?? 'this kernel cannot be parked now');
  }
  return null;
}

/** What a kernel's row shows. `memory` is the GPU memory its processes hold now (bytes). */
export function parkView(
  kernel: IKernel,
  parking: IParking | null,
  memory: number,
  nowMs: number,
  request: IParkRequest = IDLE
): IParkView {
  const park = kernel.park;
  let state = parkState(kernel);
  if (request.busy === 'park' && state === 'running') {
    state = 'parking';
  } else if (request.busy === 'resume' && state === 'parked') {
    state = 'resuming';
  }
  const gpus = gpuNames(kernel.gpus);
  const view: IParkView = {
    state,
    badge: BADGE[state],
    detail: '',
    busy: state === 'parking' || state === 'resuming',
    notice: park?.message ? sentence(park.message) : null,
    button: null,
    // a failed row already says what went wrong (the server's message): the request's error would repeat it
    error: request.busy || state === 'failed' ? null : request.error
  };
  switch (state) {
    case 'running': {
      view.detail = memory > 0 ? `${bytes(memory)} on ${gpus}` : 'no GPU memory';
      const blocked = whyNotPark(kernel, parking);
      view.button = {
        action: 'park',
        label: 'Park',
        disabled: blocked !== null,
        title:
          blocked ??
          `Move its ${memory > 0 ? `${bytes(memory)} of ` : ''}GPU memory to host memory and free ${gpus}. ` +
            'Its variables stay; running a cell resumes it.'
      };
      break;
    }
    case 'parking':
      view.detail = memory > 0 ? `Moving ${bytes(memory)} to host memory…` : 'Moving its GPU memory to host memory…';
      break;
    case 'parked':
      view.detail = parkedLine(kernel, nowMs);
      view.button = {
        action: 'resume',
        label: 'Resume',
        disabled: false,
        title: `Bring its memory back to ${gpus}. Running a cell in its notebook does this too.`
      };
      break;
    case 'resuming': {
      const host = park?.host_memory ? `${bytes(park.host_memory)} ` : 'its memory ';
      view.detail = `Moving ${host}back to ${gpus}…`;
      break;
    }
    case 'failed':
      view.detail = 'Its GPU state could not be moved.';
      view.notice = view.notice ?? 'Restart the kernel to use it again; its variables are lost.';
      view.button = {
        action: 'restart',
        label: request.busy === 'restart' ? 'Restarting…' : 'Restart kernel',
        disabled: request.busy === 'restart',
        title: 'Restart the kernel: it starts afresh on its GPU, without its variables.'
      };
      break;
  }
  return view;
}

const VERB: Record<ParkAction, { verb: string; noun: string }> = {
  park: { verb: 'park', noun: 'Parking' },
  resume: { verb: 'resume', noun: 'Resuming' },
  restart: { verb: 'restart', noun: 'Restarting' }
};

/** A server's clause inside our sentence: "The kernel is busy." -> "the kernel is busy" (acronyms keep their case). */
function clause(text: string): string {
  const t = text.trim().replace(/[.]$/, '');
  return /^[A-Z][a-z]/.test(t) ? t[0].toLowerCase() + t.slice(1) : t;
}

/** Why a Park, Resume or Restart request failed, as one sentence for the row. */
export function parkErrorText(action: ParkAction, error: unknown): string {
  const { verb, noun } = VERB[action];
  if (!(error instanceof ApiError)) {
    return sentence(`${noun} failed: ${clause(error instanceof Error ? error.message : String(error))}`);
  }
  const message = clause(error.message || '');
  switch (error.status) {
    case 0:
      return message.startsWith('no answer')
        ? sentence(`the server gave ${message}; the row shows its latest state`)
        : 'The server cannot be reached.';
    case 404:
      return 'This kernel is no longer running.';
    case 409:
      return sentence(`cannot ${verb}: ${message || 'not now'}`);
    case 503:
      return sentence(`${noun.toLowerCase()} failed: ${message || 'the NVIDIA driver did not manage it'}`);
    default:
      return sentence(`the server answered ${error.status}: ${message || 'request failed'}`);
  }
}

/** The status bar's words for the notebook in focus, or null when it shows nothing (no GPU memory, not parked). */
export function statusView(
  kernel: IKernel | null,
  memory: number,
  nowMs: number
): { text: string; title: string } | null {
  const state = parkState(kernel);
  switch (state) {
    case 'running':
      return memory > 0
        ? {
            text: `GPU ${bytes(memory)}`,
            title: `GPU memory held by this notebook's kernel: ${bytes(memory)}`
          }
        : null;
    case 'parking':
      return { text: 'parking GPU…', title: "This notebook's kernel is moving its GPU memory to host memory." };
    case 'parked': {
      const host = kernel?.park?.host_memory;
      return {
        text: host ? `GPU parked · ${bytes(host)} in host memory` : 'GPU parked',
        title:
          `This notebook's kernel is parked: ${kernel ? parkedLine(kernel, nowMs) : 'parked'}. ` +
          'Running a cell resumes it.'
      };
    }
    case 'resuming':
      return { text: 'resuming GPU…', title: "This notebook's kernel is moving its memory back to the GPU." };
    case 'failed':
      return {
        text: 'GPU parking failed',
        title: sentence(kernel?.park?.message || 'its GPU state could not be moved; restart the kernel')
      };
  }
}

/** The notice when the idle policy parked the notebook in focus. */
export function idleParkText(parking: IParking | null): string {
  const idle = parking?.auto_park?.idle_minutes;
  const minutes = typeof idle === 'number' ? Number(idle.toFixed(1)) : null; // the server counts in float minutes
  const after = minutes !== null ? `after ${minutes} minute${minutes === 1 ? '' : 's'} idle` : 'while it was idle';
  return `This notebook's kernel was parked ${after}: its GPU memory is in host memory; running a cell resumes it.`;
}

/** What the resume notice says once the kernel has settled. */
export function resumeOutcome(kernel: IKernel | null): { type: 'success' | 'error'; message: string } | null {
  const state = parkState(kernel);
  if (!kernel) {
    return { type: 'error', message: 'The kernel is no longer running.' };
  }
  if (state === 'running') {
    return { type: 'success', message: 'GPU state resumed; the cell runs now.' };
  }
  if (state === 'failed') {
    return {
      type: 'error',
      message: sentence(kernel.park?.message || 'the GPU state could not be restored; restart the kernel')
    };
  }
  return null;
}

/** A note on the idle policy for the panel: "Kernels idle for 30 min that hold at least 1.0 GiB are parked." */
export function autoParkText(parking: IParking | null): string | null {
  const auto = parking?.available ? parking.auto_park : null;
  if (!auto) {
    return null;
  }
  const least = auto.min_gpu_memory > 0 ? ` that hold at least ${bytes(auto.min_gpu_memory)}` : '';
  return `Kernels idle for ${Number(auto.idle_minutes.toFixed(1))} min${least} are parked automatically.`;
}

/** Park and Resume for the notebook in focus: null when each can be done now, else why not. */
export function currentActions(
  kernel: IKernel | null,
  parking: IParking | null,
  request: IParkRequest = IDLE
): { park: string | null; resume: string | null } {
  if (!kernel) {
    const why = 'Open a notebook whose kernel runs on this server.';
    return { park: why, resume: why };
  }
  if (request.busy) {
    const why = 'A request for this kernel is under way.';
    return { park: why, resume: why };
  }
  return {
    park: whyNotPark(kernel, parking),
    resume: parkState(kernel) === 'parked' ? null : "This notebook's kernel is not parked."
  };
}
