/** Replies shaped like the server's, with the numbers of tests/recordings/h100x2.json. */
import type { IGpu, IGpusReply, IHistoryReply, IKernel, IKernelPark, IParking, IPullProgress } from '../src/wire';

export function gpu(index: number, overrides: Partial<IGpu> = {}): IGpu {
  return {
    index,
    uuid: `GPU-${index}`,
    name: 'NVIDIA H100 80GB HBM3',
    pci_bus_id: `00000000:1${index}:00.0`,
    memory: { total: 85520809984, used: 6966738944, free: 78554071040 },
    utilization: { gpu: 87, memory: 43 },
    temperature_c: 54,
    power_w: 312.456,
    power_limit_w: 700,
    fan_speed_pct: null,
    clocks_mhz: { sm: 1980, memory: 2619 },
    mig_mode: false,
    mig_devices: [],
    processes: [],
    error: null,
    ...overrides
  };
}

export function gpusReply(t: number, overrides: Partial<IGpusReply> = {}): IGpusReply {
  return {
    available: true,
    reason: null,
    driver_version: '580.159.04',
    cuda_driver_version: '13.0',
    sampled_at: t,
    gpus: [
      gpu(0, {
        processes: [
          {
            pid: 4242,
            used_memory: 4294967296,
            type: 'compute',
            kernel_id: 'k-1',
            container_id: null,
            gpu_instance: null
          },
          {
            pid: 4343,
            used_memory: 2147483648,
            type: 'compute',
            kernel_id: null,
            container_id: null,
            gpu_instance: null
          }
        ]
      }),
      gpu(1, { memory: { total: 85520809984, used: 524288000, free: 84996521984 }, utilization: { gpu: 0, memory: 0 } })
    ],
    ...overrides
  };
}

export function historyReply(times: number[]): IHistoryReply {
  return {
    interval: 1,
    samples: times.map(t => ({
      t,
      gpus: [
        {
          index: 0,
          uuid: 'GPU-0',
          memory_used: 8552080998,
          memory_total: 85520809984,
          utilization_gpu: 50,
          utilization_memory: 10,
          temperature_c: 50,
          power_w: 200
        }
      ]
    }))
  };
}

/** A pull under way as GET environments reports it: 48 of 115 MB at 19.6 MB/s. */
export function pullProgress(overrides: Partial<IPullProgress> = {}): IPullProgress {
  return {
    image: '127.0.0.1:5000/team/torch:2.6',
    phase: 'downloading',
    bytes_done: 48_000_000,
    bytes_total: 115_000_000,
    percent: 41.7,
    rate_bytes_per_s: 19_600_000,
    eta_s: 3.4,
    layers_done: 2,
    layers_total: 5,
    started_at: 1_700_000_000,
    ...overrides
  };
}

/** A kernel row as GET kernels reports it: a container kernel on GPU 0 that can be parked. */
export function kernelRow(overrides: Partial<IKernel> = {}, park: Partial<IKernelPark> = {}): IKernel {
  return {
    kernel_id: 'k-1',
    kernel_name: 'gpuenv-pt',
    environment: 'pt',
    container_id: 'abc',
    gpu_mode: 'shared',
    gpus: [0],
    gpu_memory: 4294967296,
    last_exit: null,
    park: {
      state: 'running',
      can_park: true,
      reason: null,
      host_memory: null,
      since: null,
      by: null,
      message: null,
      timeline: {},
      ...park
    },
    ...overrides
  };
}

/** Parked 12 minutes before `now` (seconds) by the idle policy, 4.6 GiB in host memory. */
export function parkedRow(now: number, park: Partial<IKernelPark> = {}): IKernel {
  return kernelRow(
    { gpu_memory: 0 },
    {
      state: 'parked',
      can_park: false,
      reason: 'the kernel is parked',
      host_memory: 4.6 * 1024 ** 3,
      since: now - 12 * 60,
      by: 'idle policy',
      message: 'parked after 30 minutes idle',
      ...park
    }
  );
}

export const PARKING: IParking = {
  available: true,
  reason: null,
  auto_park: { idle_minutes: 30, min_gpu_memory: 1024 ** 3 }
};
