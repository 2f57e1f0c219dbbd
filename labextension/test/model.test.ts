import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Signal } from '@lumino/signaling';

import { GpuModel } from '../src/model';
import { ISessionSource } from '../src/tokens';
import { ApiError, IEnvironmentsReply, IGpuApi, IGpusReply, IKernel, IKernelsReply, IPullAnswer } from '../src/wire';
import { gpusReply, historyReply, kernelRow, PARKING, parkedRow, pullProgress } from './fixtures';

class FakeApi implements IGpuApi {
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

class FakeSessions implements ISessionSource {
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

function setup(options: { sessions?: FakeSessions } = {}) {
  const api = new FakeApi();
  let clock = 0;
  const model = new GpuModel({ api, sessions: options.sessions, autoStart: false, now: () => clock });
  return {
    api,
    model,
    advance: (ms: number) => {
      clock += ms;
    }
  };
}

test('a tick reads GPUs; history once at start; then one request per tick', async () => {
  const { api, model, advance } = setup();
  assert.equal(model.status.kind, 'loading');
  await model.tick();
  assert.equal(model.status.kind, 'ready');
  assert.deepEqual(api.calls, ['gpus', 'history:', 'kernels', 'environments']);
  assert.equal(model.series(0).memory.length, 4); // 3 from history + the snapshot
  for (let i = 1; i <= 5; i++) {
    advance(2000);
    api.gpuReply = gpusReply(100 + i);
    await model.tick();
  }
  assert.equal(api.count('gpus'), 6);
  assert.equal(api.count('history'), 1);
  assert.equal(api.count('environments'), 1);
  assert.equal(model.series(0).memory.length, 9);
  model.dispose();
});

test('a late tick (tab was hidden) fills the gap from the history since the last sample', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  advance(60_000);
  api.gpuReply = gpusReply(160);
  await model.tick();
  assert.deepEqual(
    api.calls.filter(c => c.startsWith('history')),
    ['history:', 'history:100']
  );
  model.dispose();
});

test('environments refresh every 30 s, and every tick while an image is pulled', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  assert.equal(model.environments.kind, 'not-available');
  advance(2000);
  await model.tick();
  assert.equal(api.count('environments'), 1);
  advance(30_000);
  api.envReply = {
    docker: { available: true, reason: null },
    environments: [
      {
        name: 'pt',
        display_name: 'PyTorch',
        image: 'pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime',
        image_present: false,
        cuda_version: '12.4',
        compatible: true,
        reason: null,
        gpus: 'all',
        kernelspec: 'gpuenv-pt',
        state: 'pulling',
        pull_progress: pullProgress(),
        can_start: false,
        reason_code: 'pulling'
      }
    ]
  };
  await model.tick(); // 32 s: due
  advance(2000);
  await model.tick(); // pulling: every tick
  assert.equal(api.count('environments'), 3);
  assert.equal(model.environments.kind, 'ready');
  model.dispose();
});

test('a failed environments read keeps the last list with a note; only repeated failures replace it', async () => {
  const { api, model, advance } = setup();
  const good: IEnvironmentsReply = {
    docker: { available: true, reason: null },
    environments: [
      {
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
        reason_code: null
      }
    ]
  };
  api.envReply = good;
  await model.tick();
  assert.deepEqual(model.environments, { kind: 'ready', reply: good });
  // a loaded machine: the engine's answer came too late, the server says Docker does not answer
  api.envReply = {
    docker: { available: false, reason: 'the Docker engine did not answer within 5 s' },
    environments: []
  };
  advance(30_000);
  await model.tick();
  assert.deepEqual(model.environments, {
    kind: 'ready',
    reply: good,
    stale: 'The Docker engine did not answer within 5 s.'
  });
  advance(2000);
  await model.tick();
  assert.equal(api.count('environments'), 2, 'read again after ENVIRONMENTS_RETRY, not every tick');
  api.envReply = new ApiError(500, 'boom');
  advance(3000);
  await model.tick(); // 5 s after the failure: read again, fails again: still the last list
  assert.equal(api.count('environments'), 3);
  assert.deepEqual(model.environments, { kind: 'ready', reply: good, stale: 'The server answered 500: boom' });
  advance(5000);
  await model.tick(); // the third failure in a row: now the section says so
  assert.deepEqual(model.environments, { kind: 'error', message: 'The server answered 500: boom' });
  api.envReply = good;
  advance(5000);
  await model.tick();
  assert.deepEqual(model.environments, { kind: 'ready', reply: good });
  model.dispose();
});

test('kernels are read every 10 s; a restarted kernel reports how its last container ended', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  assert.deepEqual(model.kernels, []);
  assert.equal(model.lastExit('k-1'), null);
  const oom = { code: 137, oom_killed: true, message: 'the kernel ran out of its 12g memory limit and was restarted' };
  api.kernelsReply = {
    kernels: [
      {
        kernel_id: 'k-1',
        kernel_name: 'gpuenv-pt',
        environment: 'pt',
        container_id: 'abc',
        gpu_mode: 'shared',
        gpus: [0],
        gpu_memory: 0,
        last_exit: oom
      }
    ]
  };
  for (let i = 0; i < 4; i++) {
    advance(2000);
    await model.tick();
  }
  assert.equal(api.count('kernels'), 1); // 8 s: not yet
  advance(2000);
  await model.tick();
  assert.equal(api.count('kernels'), 2);
  assert.deepEqual(model.lastExit('k-1'), oom);
  assert.equal(model.lastExit('k-2'), null);
  assert.equal(model.lastExit(null), null);
  api.kernelsReply = new ApiError(500, 'boom');
  advance(10_000);
  await model.tick();
  assert.equal(model.status.kind, 'ready'); // a failed kernels read is no GPU error
  assert.deepEqual(model.lastExit('k-1'), oom); // and keeps what was known
  model.dispose();
});

test('no driver: the NVML reason; not sampled yet: still loading', async () => {
  const { api, model } = setup();
  api.gpuReply = gpusReply(0, { available: false, reason: 'GPUs have not been sampled yet', gpus: [], sampled_at: 0 });
  await model.tick();
  assert.equal(model.status.kind, 'loading');
  api.gpuReply = gpusReply(5, { available: false, reason: 'NVML: x — no NVIDIA driver on this machine', gpus: [] });
  await model.tick();
  assert.deepEqual(model.status, { kind: 'no-gpu', reason: 'NVML: x — no NVIDIA driver on this machine' });
  assert.equal(api.count('history'), 0);
  model.dispose();
});

test('a server that never answers leaves no section loading', async () => {
  const { api, model } = setup();
  api.gpuReply = new ApiError(404, 'Not Found');
  await assert.rejects(model.tick());
  assert.equal(model.status.kind, 'no-extension');
  assert.equal(model.environments.kind, 'not-available');
  model.dispose();
});

test('server extension missing (404) and request errors are states, keeping the last data', async () => {
  const { api, model } = setup();
  await model.tick();
  api.gpuReply = new ApiError(0, 'Failed to fetch');
  await assert.rejects(model.tick()); // rejects, so the Poll backs off
  assert.equal(model.status.kind, 'error');
  assert.equal(model.status.kind === 'error' && model.status.reply?.sampled_at, 100);
  assert.equal(model.status.kind === 'error' && model.status.message, 'The server cannot be reached.');
  api.gpuReply = new ApiError(404, 'Not Found');
  await assert.rejects(model.tick());
  assert.equal(model.status.kind, 'no-extension');
  model.dispose();
});

test('the poll backs off after errors and says when it retries', async () => {
  const api = new FakeApi();
  api.gpuReply = new ApiError(500, 'down');
  const model = new GpuModel({ api, settings: { refreshInterval: 0.02 } });
  await new Promise(resolve => setTimeout(resolve, 400));
  const calls = api.count('gpus');
  model.dispose();
  assert.ok(calls >= 2, `retried (${calls} calls)`);
  assert.ok(calls < 400 / 20, `backed off (${calls} calls in 400 ms at a 20 ms interval)`);
  assert.ok(model.retryIn !== null && model.retryIn > 0.02, `retryIn ${model.retryIn}`);
});

test('one poll serves every view: the number of listeners does not change the requests', async () => {
  const api = new FakeApi();
  const model = new GpuModel({ api, settings: { refreshInterval: 0.05 } });
  let renders = 0;
  for (let i = 0; i < 5; i++) {
    model.changed.connect(() => renders++);
  }
  await new Promise(resolve => setTimeout(resolve, 330));
  model.dispose();
  const calls = api.count('gpus');
  assert.ok(calls >= 3 && calls <= 8, `${calls} GPU requests in 330 ms at 50 ms`);
  assert.ok(renders >= 5 * calls, 'every view was told');
});

test('processes are named by notebook; unknown kernels ask Lab for sessions once', async () => {
  const sessions = new FakeSessions();
  const { model, advance } = setup({ sessions });
  await model.tick();
  await new Promise(resolve => setImmediate(resolve));
  assert.equal(sessions.refreshes, 1);
  assert.equal(model.notebookOf('k-1'), 'work/train.ipynb');
  assert.equal(model.notebookOf('k-2'), null);
  advance(2000);
  await model.tick();
  assert.equal(sessions.refreshes, 1);
  model.dispose();
});

test("Lab's session changes (a switch, a restart, a shutdown) read the kernels at once", async () => {
  const sessions = new FakeSessions();
  const { api, model, advance } = setup({ sessions });
  await model.tick();
  const before = api.count('kernels');
  advance(2000);
  await model.tick();
  assert.equal(api.count('kernels'), before, 'kernels are read every 10 s otherwise');
  sessions.runningChanged.emit();
  await model.tick();
  assert.equal(api.count('kernels'), before + 1);
  model.dispose();
});

test('reload reads kernels and environments now, not when they are due', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  advance(2000);
  void model.reload(); // the poll's own tick is not started in these tests: the next tick is the read
  await model.tick();
  assert.equal(api.count('kernels'), 2);
  assert.equal(api.count('environments'), 2);
  model.dispose();
});

test('the current notebook kernel memory sums its processes on every GPU', async () => {
  const { api, model } = setup();
  const reply = gpusReply(100);
  reply.gpus![1].processes = [
    { pid: 9, used_memory: 1073741824, type: 'compute', kernel_id: 'k-1', container_id: null, gpu_instance: null }
  ];
  api.gpuReply = reply;
  await model.tick();
  let changes = 0;
  model.changed.connect(() => changes++);
  model.current = { path: 'a.ipynb', kernelId: 'k-1', kernelName: 'python3' };
  model.current = { path: 'a.ipynb', kernelId: 'k-1', kernelName: 'python3' };
  assert.equal(changes, 1);
  assert.equal(model.kernelMemory('k-1'), 5 * 1024 ** 3);
  assert.equal(model.kernelMemory('other'), 0);
  assert.equal(model.kernelMemory(null), 0);
  model.dispose();
});

test('settings change the interval and the history length', async () => {
  const { model } = setup();
  await model.tick();
  model.configure({ historyLength: 2, refreshInterval: 5 });
  assert.equal(model.series(0).memory.length, 2);
  model.dispose();
});

test('Prepare asks the server to pull, then reads the environments at once; a refusal stays on the row', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  const environments = api.count('environments');
  const states: boolean[] = [];
  model.changed.connect(() => states.push(model.prepareState('pt').busy));
  await model.prepare('pt');
  assert.equal(api.count('pull:pt'), 1);
  assert.equal(states[0], true); // the button shows the request under way
  assert.deepEqual(model.prepareState('pt'), { busy: false, error: null });
  advance(2000);
  await model.tick(); // not 30 s later: the progress shows now
  assert.equal(api.count('environments'), environments + 1);
  api.pullReply = new ApiError(409, 'this server does not pull images (c.GpuEnv.pull_missing_images is off)');
  await model.prepare('pt');
  assert.deepEqual(model.prepareState('pt'), {
    busy: false,
    error: 'The server answered 409: this server does not pull images (c.GpuEnv.pull_missing_images is off)'
  });
  model.dispose();
});

test('while the notebook in focus starts a kernel, environments are read every tick', async () => {
  const { api, model, advance } = setup();
  await model.tick();
  const before = api.count('environments');
  model.current = { path: 'a.ipynb', kernelId: null, kernelName: null, starting: 'PyTorch' };
  for (let i = 0; i < 3; i++) {
    advance(2000);
    await model.tick();
  }
  assert.ok(api.count('environments') >= before + 3);
  model.current = { path: 'a.ipynb', kernelId: 'k', kernelName: 'gpuenv-pt', starting: null };
  const settled = api.count('environments');
  advance(2000);
  await model.tick();
  assert.equal(api.count('environments'), settled); // back to every 30 s
  model.dispose();
});

test('while a kernel parks or resumes, kernels are read every 500 ms and GPUs still once per interval', async () => {
  const { api, model, advance } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.tick();
  assert.equal(model.interval, 2000);
  assert.equal(model.kernelsStatus.kind === 'ready' && model.kernelsStatus.parking?.available, true);
  api.kernelsReply = { kernels: [kernelRow({}, { state: 'parking' })], parking: PARKING };
  advance(10_000);
  await model.tick(); // the regular read finds it parking
  assert.equal(model.interval, 500);
  const [gpus, kernels] = [api.count('gpus'), api.count('kernels')];
  for (let i = 0; i < 4; i++) {
    advance(500);
    await model.tick();
  }
  assert.equal(api.count('kernels'), kernels + 4); // every tick
  assert.equal(api.count('gpus'), gpus + 1); // 2 s later: once
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  advance(500);
  await model.tick(); // settled: the GPUs are read at once (its memory left them), then the pace is normal
  assert.equal(api.count('gpus'), gpus + 2);
  assert.equal(model.interval, 2000);
  const settled = api.count('kernels');
  advance(2000);
  await model.tick();
  assert.equal(api.count('kernels'), settled); // every 10 s again
  model.dispose();
});

test('the poll itself speeds up while a kernel resumes and slows down once it runs', async () => {
  const api = new FakeApi();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000, { state: 'resuming' })], parking: PARKING };
  const model = new GpuModel({ api, settings: { refreshInterval: 0.5 }, settleInterval: 20 });
  await new Promise(resolve => setTimeout(resolve, 300));
  const fast = api.count('kernels');
  assert.ok(fast >= 5, `${fast} kernel reads in 300 ms while resuming`);
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await new Promise(resolve => setTimeout(resolve, 100)); // it reads the running row and slows down
  const settled = api.count('kernels');
  await new Promise(resolve => setTimeout(resolve, 300));
  model.dispose();
  assert.ok(api.count('kernels') <= settled + 1, `${api.count('kernels') - settled} kernel reads after it settled`);
  assert.equal(model.interval, 500);
});

test('Park takes the answered row at once and reads often; a refusal stays on the row until a success', async () => {
  const { api, model } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.tick();
  const busy: (string | null)[] = [];
  model.changed.connect(() => busy.push(model.parkRequest('k-1').busy));
  await model.park('k-1');
  assert.equal(busy[0], 'park');
  assert.equal(model.kernel('k-1')?.park?.state, 'parking');
  assert.equal(model.interval, 500);
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: null });
  api.resumeReply = new ApiError(409, "GPU 0 is taken by bob's kernel");
  await model.resume('k-1');
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: "Cannot resume: GPU 0 is taken by bob's kernel." });
  api.parkReply = new ApiError(409, 'the kernel is running a cell');
  await model.park('k-1');
  assert.equal(model.parkRequest('k-1').error, 'Cannot park: the kernel is running a cell.');
  api.resumeReply = kernelRow({}, { state: 'resuming' });
  await model.resume('k-1');
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: null }); // gone with the next success
  model.dispose();
});

test('a cell run in a parked kernel makes the model read it often until the server resumes it', async () => {
  const { api, model, advance } = setup();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  await model.tick();
  model.expectResume('k-1');
  assert.equal(model.interval, 500);
  const kernels = api.count('kernels');
  advance(500);
  await model.tick(); // still parked: the server has not seen the cell yet
  assert.equal(api.count('kernels'), kernels + 1);
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  advance(500);
  await model.tick();
  assert.equal(model.kernel('k-1')?.park?.state, 'running');
  assert.equal(model.interval, 2000);
  model.expectResume('k-1'); // a running kernel: nothing to wait for
  assert.equal(model.interval, 2000);
  model.dispose();
});

test('kernels that cannot be read again keep their last state and say so', async () => {
  const { api, model, advance } = setup();
  assert.equal(model.kernelsStatus.kind, 'loading');
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  await model.tick();
  api.kernelsReply = new ApiError(500, 'boom');
  advance(10_000);
  await model.tick();
  assert.deepEqual(model.kernelsStatus, { kind: 'error', message: 'The server answered 500: boom', parking: PARKING });
  assert.equal(model.kernel('k-1')?.park?.state, 'parked');
  model.dispose();
});
