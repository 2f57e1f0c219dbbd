/** Whether an environment can be used for the notebook in focus, and what the section shows between reads. Pure. */
import { sentence } from './format';
import type { EnvironmentsStatus, ICurrentNotebook } from './tokens';
import type { IEnvironment, IEnvironmentsReply, ReasonCode } from './wire';

/** What to say when the server gives a reason code but no sentence. */
const FALLBACK: Record<ReasonCode, string> = {
  'invalid-definition': 'this environment is not defined correctly; an administrator fixes its definition',
  'engine-unavailable': 'the Docker engine does not answer',
  'no-kernelspec': 'no kernelspec starts this environment; an administrator adds one with `jupyter gpuenv add`',
  'image-missing': 'the image is not on this machine and this server does not pull images',
  pulling: 'the image is being downloaded',
  'cuda-too-new': 'the image needs a newer NVIDIA driver than this machine has',
  'no-gpu': 'this environment asks for GPUs, but this server sees none',
  'no-kernel-runtime': 'the image has no ipykernel and no kernel runtime was prepared for it'
};

/** The environment whose image the notebook in focus waits for: Lab is starting its kernel and that image is
 * being pulled. Matched by the kernel's display name; with one pull under way, that one. */
export function pullingFor(envs: IEnvironment[], current: ICurrentNotebook | null): IEnvironment | null {
  if (!current?.starting) {
    return null;
  }
  const pulling = envs.filter(e => e.state === 'pulling' && e.pull_progress);
  return pulling.find(e => e.display_name === current.starting) ?? (pulling.length === 1 ? pulling[0] : null);
}

/** Whether "Prepare" (pull the image now) is offered: the image is missing and this server pulls images. */
export function canPrepare(env: IEnvironment, dockerDown: boolean): boolean {
  return !dockerDown && env.state === 'image-missing' && env.can_start && !!env.image;
}

/** Why "Use for this notebook" cannot be pressed, or null when it can. The server decides `can_start`. */
export function whyNot(env: IEnvironment, current: ICurrentNotebook | null, dockerDown: boolean): string | null {
  if (dockerDown) {
    return 'Docker is not available.';
  }
  if (!env.can_start) {
    return sentence(env.reason ?? (env.reason_code && FALLBACK[env.reason_code]) ?? 'this environment cannot start');
  }
  if (!env.kernelspec) {
    return sentence(FALLBACK['no-kernelspec']); // the button starts a kernelspec: without one it does nothing
  }
  if (!current) {
    return 'Open a notebook first.';
  }
  if (current.kernelName === env.kernelspec) {
    return 'This notebook already uses it.';
  }
  return null;
}

/** The "warm" mark of an environment a start of which will be instant (a warm kernel is ready for this person),
 * with the sentence its tooltip says; null when a start would be cold, or cannot happen. */
export function warmMark(env: IEnvironment): string | null {
  const count = env.warm ?? 0;
  if (count < 1 || !env.can_start) {
    return null;
  }
  const kernels = count === 1 ? 'A warm kernel is' : `${count} warm kernels are`;
  return `${kernels} ready: a notebook switched to it starts at once.`;
}

/** Reads in a row that must fail before the section says Docker (or the environments) is not available. */
export const FAILURES_BEFORE_DOWN = 3;

/**
 * The environments section from one read after another. One failed read (a Docker call that was slow on a loaded
 * machine, a request that timed out) keeps the last list with a small "could not refresh" note; only
 * FAILURES_BEFORE_DOWN failures in a row replace it with what went wrong.
 */
export class EnvironmentsReads {
  get status(): EnvironmentsStatus {
    return this._status;
  }

  /** Failed reads since the last good one: the model reads again sooner while this is not 0. */
  get failures(): number {
    return this._failures;
  }

  /** A reply came. One that says Docker does not answer counts as a failed read while a good list is kept. */
  replied(reply: IEnvironmentsReply): void {
    const docker = reply.docker;
    if (docker && !docker.available) {
      this._failed({ kind: 'ready', reply }, sentence(docker.reason ?? 'the Docker engine does not answer'));
      return;
    }
    this._failures = 0;
    this._good = reply;
    this._status = { kind: 'ready', reply };
  }

  /** The request failed (`down`: what the section says once failures have repeated, or at once without a list). */
  failed(down: EnvironmentsStatus, message: string): void {
    this._failed(down, message);
  }

  private _failed(down: EnvironmentsStatus, message: string): void {
    if (down.kind === 'not-available') {
      // a definite answer (this server has no container kernels), not a read to try again soon
      this._failures = 0;
      this._good = null;
      this._status = down;
      return;
    }
    this._failures++;
    if (!this._good || this._failures >= FAILURES_BEFORE_DOWN) {
      this._status = down;
      if (this._failures >= FAILURES_BEFORE_DOWN) {
        this._good = null;
      }
      return;
    }
    this._status = { kind: 'ready', reply: this._good, stale: message };
  }

  private _status: EnvironmentsStatus = { kind: 'loading' };
  private _good: IEnvironmentsReply | null = null;
  private _failures = 0;
}
