/** Whether an environment can be used for the notebook in focus. Pure. */
import { sentence } from './format';
import type { ICurrentNotebook, IEnvironment } from './tokens';

/** Why "Use for this notebook" cannot be pressed, or null when it can. */
export function whyNot(env: IEnvironment, current: ICurrentNotebook | null, dockerDown: boolean): string | null {
  if (dockerDown) {
    return 'Docker is not available.';
  }
  switch (env.state) {
    case 'incompatible':
      return sentence(env.reason ?? 'the image needs a newer NVIDIA driver than this machine has');
    case 'pulling':
      return 'The image is being downloaded.';
    case 'unavailable':
    case 'invalid':
    case null:
      return sentence(env.reason ?? 'this environment cannot start');
  }
  if (!env.kernelspec) {
    return 'No kernelspec starts this environment; an administrator adds one with `jupyter gpuenv add`.';
  }
  if (!current) {
    return 'Open a notebook first.';
  }
  if (current.kernelName === env.kernelspec) {
    return 'This notebook already uses it.';
  }
  return null;
}
