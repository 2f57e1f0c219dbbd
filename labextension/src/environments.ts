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
