/** The REST client as the models use it, answering what a test sets, and saying which requests were made. */
import { Signal } from '@lumino/signaling';

import type { ISessionSource } from '../src/tokens';
import {
  ApiError,
  IEnvironment,
  IEnvironmentsReply,
  IGpuApi,
  IGpusReply,
  IKernel,
  IKernelsReply,
  IPullAnswer
} from '../src/wire';
import { gpusReply, historyReply, kernelRow } from './fixtures';

export class FakeApi implements IGpuApi {
  calls: string[] = [];
  gpuReply: IGpusReply | Error = gpusReply(100);
  envReply: IEnvironmentsReply | Error = new ApiError(404, 'no such gpuenv API endpoint');
  kernelsReply: IKernelsReply | Error = { kernels: [] };
  pullReply: IPullAnswer | Error = { image: 'x', state: 'pulling', pull_progress: null };
  parkReply: IKernel | Error = kernelRow({}, { state: 'parking' });
  resumeReply: IKernel | Error = kernelRow({}, { state: 'resuming' });

  async gpus(): Promise<IGpusReply> {
    this.calls.push('gpus');
    if (this.gpuReply instanceof Error) {
      throw this.gpuReply;
    }
    return this.gpuReply;
  }
  async history(since?: number) {
    this.calls.push(`history:${since ?? ''}`);
    return historyReply([97, 98, 99]);
  }
  async environments(): Promise<IEnvironmentsReply> {
    this.calls.push('environments');
    if (this.envReply instanceof Error) {
      throw this.envReply;
    }
    return this.envReply;
  }
  async kernels(): Promise<IKernelsReply> {
    this.calls.push('kernels');
    if (this.kernelsReply instanceof Error) {
      throw this.kernelsReply;
    }
    return this.kernelsReply;
  }
  async pull(name: string): Promise<IPullAnswer> {
    this.calls.push(`pull:${name}`);
    if (this.pullReply instanceof Error) {
      throw this.pullReply;
    }
    return this.pullReply;
  }
  async park(kernelId: string): Promise<IKernel> {
    this.calls.push(`park:${kernelId}`);
    if (this.parkReply instanceof Error) {
      throw this.parkReply;
    }
    return this.parkReply;
  }
  async resume(kernelId: string): Promise<IKernel> {
    this.calls.push(`resume:${kernelId}`);
    if (this.resumeReply instanceof Error) {
      throw this.resumeReply;
    }
    return this.resumeReply;
  }
  async restart(kernelId: string): Promise<void> {
    this.calls.push(`restart:${kernelId}`);
  }
  count(name: string): number {
    return this.calls.filter(c => c.startsWith(name)).length;
  }
}

export class FakeSessions implements ISessionSource {
  sessions: { path: string; kernel: { id: string } }[] = [];
  refreshes = 0;
  runningChanged = new Signal<this, void>(this);
  running() {
    return this.sessions;
  }
  async refreshRunning() {
    this.refreshes++;
    this.sessions = [{ path: 'work/train.ipynb', kernel: { id: 'k-1' } }];
    this.runningChanged.emit();
  }
}

/** An environment as GET environments reports it: PyTorch, ready to start. */
export function environment(overrides: Partial<IEnvironment> = {}): IEnvironment {
  return {
    name: 'pt',
    display_name: 'PyTorch',
    image: 'pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime',
    image_present: true,
    cuda_version: '12.4',
    compatible: true,
    reason: null,
    gpus: 'all',
    kernelspec: 'gpuenv-pt',
    state: 'ready',
    pull_progress: null,
    can_start: true,
    reason_code: null,
    ...overrides
  };
}

/** Let reads that a model started on its own (setTimeout 0) run. */
export const settle = (ms = 5): Promise<void> => new Promise(resolve => setTimeout(resolve, ms));

/** A clock for the models' `now` option. */
export function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    }
  };
}
