/**
 * The REST API as the panel sees it: the JSON of each endpoint under {base}gpuenv/api/ (every field may be null),
 * the client interfaces over them (`api.ts` implements them, tests pass fakes) and the error a request fails with.
 * Types, one small class and one pure function: no side effects.
 */

// -- GET gpus, gpus/history, environments, kernels; POST environments/NAME/pull, kernels/ID/park|resume -------

export interface IMemory {
  total: number | null;
  used: number | null;
  free: number | null;
}

export interface IGpuProcess {
  pid: number;
  used_memory: number | null;
  type: string | null;
  kernel_id: string | null;
  container_id: string | null;
  gpu_instance: string | null;
  user?: string | null; // on a shared host: whose kernel another person's process is ("alice" or "another user")
  gpu_utilization?: number | null; // % of the GPU's SMs it kept busy lately; null while it sleeps
  // from /proc; on a shared host not for another user's process (but its numbers)
  host_memory?: number | null; // bytes resident
  started_at?: number | null; // seconds since the epoch, the server's clock
  command?: string | null; // shortened command line
  owner?: string | null; // the account it runs as
}

export interface IMigDevice {
  index: number;
  uuid: string | null;
  name: string | null;
  memory: IMemory | null;
}

export interface IGpu {
  index: number;
  uuid: string | null;
  name: string | null;
  pci_bus_id: string | null;
  memory: IMemory | null;
  utilization: { gpu: number | null; memory: number | null } | null;
  temperature_c: number | null;
  power_w: number | null;
  power_limit_w: number | null;
  fan_speed_pct: number | null;
  pcie_mb_s?: { tx: number; rx: number } | null;
  clocks_mhz: { sm: number | null; memory: number | null } | null;
  mig_mode: boolean | null;
  mig_devices: IMigDevice[] | null;
  processes: IGpuProcess[] | null;
  error: string | null;
}

export interface IGpusReply {
  available: boolean;
  reason: string | null;
  driver_version: string | null;
  cuda_driver_version: string | null;
  sampled_at: number | null;
  gpus: IGpu[] | null;
}

export interface IHistoryGpu {
  index: number;
  uuid: string | null;
  memory_used: number | null;
  memory_total: number | null;
  utilization_gpu: number | null;
  utilization_memory: number | null;
  temperature_c: number | null;
  power_w: number | null;
  pcie_mb_s?: { tx: number; rx: number } | null; // only where the server reads PCIe (c.GpuEnv.pcie_throughput)
}

export interface IHistorySample {
  t: number;
  gpus: IHistoryGpu[];
}

export interface IHistoryReply {
  interval: number;
  /** Seconds of history the server keeps (interval × its history length). */
  window?: number | null;
  samples: IHistorySample[];
}

export type EnvironmentState =
  | 'ready'
  | 'image-missing' // can_start tells whether it is pulled at first start or pulling is off
  | 'pulling'
  | 'incompatible'
  | 'runtime-missing' // the image has no ipykernel and no kernel runtime was prepared
  | 'unavailable'
  | 'invalid';

/** Why an environment cannot start, for code; `reason` says it in words. */
export type ReasonCode =
  | 'invalid-definition'
  | 'engine-unavailable'
  | 'no-kernelspec'
  | 'image-missing'
  | 'pulling'
  | 'cuda-too-new'
  | 'no-gpu'
  | 'no-kernel-runtime';

/** A pull under way (GET environments' `pull_progress`): the engine's per-layer events, added up. */
export interface IPullProgress {
  image: string;
  phase: 'resolving' | 'downloading' | 'extracting' | 'done' | 'failed';
  bytes_done: number;
  bytes_total: number | null; // null until the registry or the engine told every layer's size
  percent: number | null;
  rate_bytes_per_s: number | null;
  eta_s: number | null;
  layers_done: number;
  layers_total: number | null;
  started_at: number; // seconds since the epoch
}

/** Why the last pull of an environment's image failed (until the next one starts). */
export interface IPullError {
  message: string;
  code: string; // registry-unreachable, unknown-image, registry-auth, pull-stalled, pull-interrupted, disk-too-small, ...
}

/** What POST environments/NAME/pull answers: 202 "pulling", or 200 "present" when there is nothing to pull. */
export interface IPullAnswer {
  image: string;
  state: 'pulling' | 'present';
  pull_progress: IPullProgress | null;
}

export interface IEnvironment {
  name: string;
  display_name: string | null;
  image: string | null;
  image_present: boolean | null;
  cuda_version: string | null;
  compatible: boolean | null;
  reason: string | null;
  gpus: string | null;
  kernelspec: string | null; // null: configured, but no kernelspec starts it
  state: EnvironmentState | null;
  pull_progress: IPullProgress | null; // set while its image is being pulled
  pull_error?: IPullError | null; // the last pull failed, and the image is still missing
  /** The server's verdict: "Use for this notebook" is offered exactly when this is true. */
  can_start: boolean;
  reason_code: ReasonCode | null; // null when it can start
  availability?: string | null; // on a shared host, e.g. "exclusive: 3 of 8 GPUs free"
  warm?: number; // warm kernels ready for this person: a start takes one and is ready at once
}

export interface IEnvironmentsReply {
  docker: { available: boolean; reason: string | null } | null;
  environments: IEnvironment[] | null;
  /** Whether this server opens terminals in environments at all (not as root, not with terminals off). */
  terminals?: { available: boolean; reason: string | null } | null;
}

/** How a kernel's previous container ended, when it ended on its own and the kernel was restarted. */
export interface IKernelExit {
  code: number | null;
  oom_killed: boolean;
  message: string; // "the kernel ran out of its 12g memory limit and was restarted"
}

/** Where a kernel's GPU memory is: on the GPU (running), moving, in host memory (parked), or stuck (failed). */
export type ParkState = 'running' | 'parking' | 'parked' | 'resuming' | 'failed';

/** A kernel's park state (GET kernels' `park`): parking moves its GPU memory to host memory and frees the GPU. */
export interface IKernelPark {
  state: ParkState;
  can_park: boolean;
  reason: string | null; // why it cannot be parked now, a sentence
  host_memory: number | null; // bytes held in host memory while parked
  since: number | null; // seconds since the epoch when it was parked
  by: 'you' | 'idle policy' | null;
  message: string | null; // failed: what went wrong and what to do; parked by the policy: a notice
  timeline: { park?: IParkTimeline; resume?: IParkTimeline }; // the last park and the last resume
}

/** Where the time of one park or resume went (the server's log has the same, one line each). */
export interface IParkTimeline {
  action: 'park' | 'resume';
  trigger: 'request' | 'idle policy' | 'cell' | 'release' | 'round';
  at: number; // seconds since the epoch when it began
  seconds: number | null; // the whole operation
  host_memory: number; // bytes moved
  error: string | null;
  phases: { phase: string; start: number; seconds: number }[]; // start: seconds after it began
}

/** Whether this server can park kernels at all, and its idle policy. */
export interface IParking {
  available: boolean;
  reason: string | null; // why not, a sentence (no GPU, an NVIDIA driver older than 550, ...)
  auto_park: { idle_minutes: number; min_gpu_memory: number } | null; // null: idle kernels are not parked
}

export interface IKernel {
  kernel_id: string;
  kernel_name: string | null;
  environment: string | null;
  container_id: string | null;
  gpu_mode: string | null;
  gpus: number[] | null;
  gpu_memory: number | null;
  last_exit: IKernelExit | null;
  park?: IKernelPark | null; // absent from a server that cannot park
  host_memory?: IHostMemory | null; // a container kernel's memory, from its cgroup
}

/** A container kernel's memory against its `memory` limit (GET kernels), as jupyter-resource-usage shows RAM. */
export interface IHostMemory {
  used: number; // bytes, page cache it could give back left out
  limit: number | null; // bytes; null: no limit
  warning: boolean; // from c.GpuEnv.memory_warning_at of the limit on: the kernel restarts at the limit
}

export interface IKernelsReply {
  kernels: IKernel[] | null;
  parking?: IParking | null; // absent from a server that cannot park
}

// -- terminals in an environment (GET/POST/DELETE terminals) -----------------------------------------------

/** Where a terminal's shell runs: a kernel's container, or a new container of an environment. */
export type TerminalTarget = { kernel_id: string } | { environment: string };

export interface ITerminalModel {
  name: string;
  environment: string | null;
  kernel_id: string | null; // null: a container of its own, removed when the terminal closes
  container_id: string;
  ends_with: 'kernel' | 'terminal';
  notice: string; // the server's sentence on what ends the shell
  clients: number;
  created: number;
}

// -- the clients ---------------------------------------------------------------------------------------------

/** The REST client; `api.ts` implements it, tests pass a fake. */
export interface IGpuApi {
  gpus(): Promise<IGpusReply>;
  history(since?: number): Promise<IHistoryReply>;
  environments(): Promise<IEnvironmentsReply>;
  kernels(): Promise<IKernelsReply>;
  /** Pull an environment's image now ("Prepare"). */
  pull(name: string): Promise<IPullAnswer>;
  /** Move a kernel's GPU memory to host memory; answers its updated row. */
  park(kernelId: string): Promise<IKernel>;
  /** Bring a parked kernel's memory back to its GPU; answers its updated row. */
  resume(kernelId: string): Promise<IKernel>;
  /** Restart a kernel (Lab's kernels API), e.g. one whose GPU state could not be restored. */
  restart(kernelId: string): Promise<void>;
}

/** A failed request: `status` is the HTTP status, 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/** The terminals' REST client and websocket address; `api.ts` implements it, tests pass a fake. */
export interface ITerminalApi {
  open(target: TerminalTarget): Promise<ITerminalModel>;
  get(name: string): Promise<ITerminalModel>;
  close(name: string): Promise<void>;
  socketUrl(name: string): string;
}

/** What a failed request says in the panel: the server's answer, or that it cannot be reached. */
export function errorText(error: unknown): string {
  if (error instanceof ApiError) {
    return error.status === 0
      ? 'The server cannot be reached.'
      : `The server answered ${error.status}: ${error.message}`;
  }
  return error instanceof Error ? error.message : String(error);
}
