/** Whether an environment can be used for the notebook in focus. Pure. */
import { sentence } from './format';
import type { ICurrentNotebook, IEnvironment, ReasonCode } from './tokens';

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
