/** A container kernel's memory against its limit, and kernels whose container ended on its own (e.g. killed by
 * its memory limit) and was restarted. Pure. */
import { basename, bytes, sentence } from './format';
import type { IHostMemory, IKernel, IKernelExit } from './wire';

/** "1.8 GiB of 2.0 GiB", or "1.8 GiB" without a limit; null when the server could not read it. */
export function hostMemoryText(memory: IHostMemory | null | undefined): string | null {
  if (!memory) {
    return null;
  }
  return memory.limit ? `${bytes(memory.used)} of ${bytes(memory.limit)}` : bytes(memory.used);
}

/** The warning before the limit, the fix first (as jupyter-resource-usage warns before RAM runs out); else null. */
export function hostMemoryWarning(memory: IHostMemory | null | undefined): string | null {
  if (!memory?.warning || !memory.limit) {
    return null;
  }
  const share = Math.round((memory.used / memory.limit) * 100);
  return (
    `Free memory or save your work: this kernel uses ${share} % of its ${bytes(memory.limit)} memory limit, and at ` +
    'the limit it is stopped and restarted, losing its variables.'
  );
}

/** The warning for a kernel's previous end, in the server's words when it gives them; null when none. */
export function lastExitText(exit: IKernelExit | null | undefined): string | null {
  if (!exit) {
    return null;
  }
  if (exit.message?.trim()) {
    return sentence(exit.message);
  }
  if (exit.oom_killed) {
    return 'The kernel ran out of memory and was restarted.';
  }
  return exit.code === null
    ? 'The kernel stopped and was restarted.'
    : `The kernel exited with code ${exit.code} and was restarted.`;
}

export interface IRestartNotice {
  kernelId: string;
  /** The notebook's file name, or a short kernel id when no notebook uses the kernel. */
  label: string;
  text: string;
}

/** One warning per restarted kernel, named by its notebook. */
export function restartNotices(kernels: IKernel[], notebookOf: (kernelId: string) => string | null): IRestartNotice[] {
  const notices: IRestartNotice[] = [];
  for (const kernel of kernels) {
    const text = lastExitText(kernel.last_exit);
    if (text) {
      const path = notebookOf(kernel.kernel_id);
      notices.push({
        kernelId: kernel.kernel_id,
        label: path ? basename(path) : `kernel ${kernel.kernel_id.slice(0, 8)}`,
        text
      });
    }
  }
  return notices;
}
