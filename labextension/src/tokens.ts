/**
 * The model's interface, its states and the plugin token. Importing this module has no side effects beyond
 * creating one Token, so components and tests can use the types cheaply. The REST shapes are in `wire.ts`.
 */
import { Token } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';

import type { IEnvironmentsReply, IGpusReply, IKernel, IKernelExit, IParking } from './wire';

// -- what the model needs from Lab (its session manager, in the app) ------------------------------------

/** The running sessions, as far as the panel needs them: which notebook a kernel belongs to. */
export interface ISessionSource {
  running(): Iterable<{ path: string; kernel?: { id: string } | null }>;
  refreshRunning(): Promise<void>;
  readonly runningChanged: ISignal<unknown, unknown>;
}

// -- the model's state ------------------------------------------------------------------------------

/** What the GPU section shows; exactly one at a time, so nothing is ever blank. */
export type GpuStatus =
  | { kind: 'loading' }
  | { kind: 'ready'; reply: IGpusReply }
  | { kind: 'no-gpu'; reason: string }
  | { kind: 'no-extension' }
  | { kind: 'error'; message: string; reply: IGpusReply | null };

/** This server's kernels as last read (GET kernels), with its parking verdict; `error` keeps what was known. */
export type KernelsStatus =
  | { kind: 'loading' }
  | { kind: 'ready'; parking: IParking | null }
  | { kind: 'error'; message: string; parking: IParking | null };

export type EnvironmentsStatus =
  | { kind: 'loading' }
  /** `stale`: the last read failed (why, a sentence); `reply` is the last good one, kept until reads fail again */
  | { kind: 'ready'; reply: IEnvironmentsReply; stale?: string | null }
  | { kind: 'not-available' }
  | { kind: 'error'; message: string };

/** One GPU's history, oldest first; every array has one value per sample time in `t`. */
export interface ISeries {
  t: number[]; // seconds since the epoch
  memory: number[]; // fraction 0..1 of total
  memoryUsed: (number | null)[]; // bytes
  memoryTotal: number | null; // bytes, as last sampled
  utilization: number[]; // percent
  temperature: (number | null)[]; // °C
  power: (number | null)[]; // W
  pcieTx: (number | null)[]; // MB/s; null where NVML gives no PCIe throughput
  pcieRx: (number | null)[];
  seconds: number; // time from the first point to the last
}

export interface ICurrentNotebook {
  path: string;
  kernelId: string | null;
  kernelName: string | null;
  /** Lab is starting (or changing to) a kernel for it; the display name of that kernel. */
  starting?: string | null;
}

/** "Prepare" pressed on an environment: the request under way, or why it was refused. */
export interface IPrepareState {
  busy: boolean;
  error: string | null;
}

/** Park, Resume or Restart pressed on a kernel: the request under way, or why the last one failed. */
export interface IParkRequest {
  busy: 'park' | 'resume' | 'restart' | null;
  error: string | null; // a sentence; cleared by the next request that succeeds
}

export interface ISettings {
  refreshInterval: number; // seconds
  historyLength: number; // samples kept for the sparkline
}

export interface IGpuModel {
  readonly changed: ISignal<IGpuModel, void>;
  readonly status: GpuStatus;
  readonly environments: EnvironmentsStatus;
  /** History series by GPU index (the cards' charts). */
  series(index: number): ISeries;
  /** The notebook path a kernel belongs to, or null. */
  notebookOf(kernelId: string | null): string | null;
  /** The notebook in focus, set by the app. */
  current: ICurrentNotebook | null;
  /** GPU memory (bytes) held by a kernel's processes over every GPU; 0 when none. */
  kernelMemory(kernelId: string | null): number;
  /** This server's running kernels, as last read; empty until then. */
  readonly kernels: IKernel[];
  /** How a kernel's previous container ended, when it was restarted after ending on its own; else null. */
  lastExit(kernelId: string | null): IKernelExit | null;
  /** Whether the kernels were read, and whether this server can park them. */
  readonly kernelsStatus: KernelsStatus;
  /** A kernel's row, as last read or as a park/resume request answered; null when unknown. */
  kernel(kernelId: string | null): IKernel | null;
  /** Park a kernel (its GPU memory goes to host memory), resume it, or restart it; errors land in parkRequest. */
  park(kernelId: string): Promise<void>;
  resume(kernelId: string): Promise<void>;
  restart(kernelId: string): Promise<void>;
  parkRequest(kernelId: string): IParkRequest;
  /** A cell was run in a parked kernel: the server resumes it, so read its state often until it has. */
  expectResume(kernelId: string): void;
  /** Pull an environment's image ahead of its first start; progress then comes with the environments. */
  prepare(name: string): Promise<void>;
  prepareState(name: string): IPrepareState;
  /** Seconds until the next attempt after an error, or null. */
  readonly retryIn: number | null;
  /** Read the GPUs now (the panel's refresh button). */
  refresh(): Promise<void>;
  /** Read everything now: GPUs, kernels and environments. */
  reload(): Promise<void>;
  configure(settings: Partial<ISettings>): void;
}

export const IGpuModel = new Token<IGpuModel>(
  'jupyter-gpuenv:IGpuModel',
  'GPU usage, kernels and container environments, each refreshed by its own poll for every view.'
);
