import assert from 'node:assert/strict';
import { test } from 'node:test';

import { GpusModel } from '../src/gpusModel';
import { ApiError } from '../src/wire';
import { clock, FakeApi, settle } from './fakeApi';
import { gpusReply } from './fixtures';

function setup(refreshInterval = 2) {
  const api = new FakeApi();
  const time = clock();
  const model = new GpusModel({ api, refreshInterval, historyLength: 600, autoStart: false, now: time.now });
  return { api, model, advance: time.advance };
}

test('GPUs: each read is one request; the history is read once, at the start', async () => {
  const { api, model, advance } = setup();
  assert.equal(model.status.kind, 'loading');
  assert.equal(model.interval, 2000);
  await model.refresh();
  assert.equal(model.status.kind, 'ready');
  assert.deepEqual(api.calls, ['gpus', 'history:']);
  assert.equal(model.series(0).memory.length, 4); // 3 from history + the snapshot
  for (let i = 1; i <= 5; i++) {
    advance(2000);
    api.gpuReply = gpusReply(100 + i);
    await model.refresh();
  }
  assert.deepEqual(api.calls.slice(2), ['gpus', 'gpus', 'gpus', 'gpus', 'gpus']);
  assert.equal(model.series(0).memory.length, 9);
  model.dispose();
});

test('GPUs: a late read (the tab was hidden) fills the gap from the history since the last sample', async () => {
  const { api, model, advance } = setup();
  await model.refresh();
  advance(4000);
  api.gpuReply = gpusReply(104);
  await model.refresh(); // 2 intervals: no gap worth a request
  advance(60_000);
  api.gpuReply = gpusReply(164);
  await model.refresh();
  assert.deepEqual(
    api.calls.filter(c => c.startsWith('history')),
    ['history:', 'history:104']
  );
  model.dispose();
});

test('GPUs: no driver says the reason; not sampled yet is still loading; neither reads history', async () => {
  const { api, model } = setup();
  api.gpuReply = gpusReply(0, { available: false, reason: 'GPUs have not been sampled yet', gpus: [], sampled_at: 0 });
  await model.refresh();
  assert.equal(model.status.kind, 'loading');
  api.gpuReply = gpusReply(5, { available: false, reason: 'NVML: x — no NVIDIA driver on this machine', gpus: [] });
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'no-gpu', reason: 'NVML: x — no NVIDIA driver on this machine' });
  assert.equal(api.count('history'), 0);
  model.dispose();
});

test('GPUs: request errors are states that keep the last reply; 404 means the server extension is missing', async () => {
  const { api, model } = setup();
  await model.refresh();
  api.gpuReply = new ApiError(0, 'Failed to fetch');
  await model.refresh(); // resolves: the error is the status, and the poll's back-off
  assert.deepEqual(model.status, { kind: 'error', message: 'The server cannot be reached.', reply: gpusReply(100) });
  assert.ok(model.retryIn !== null && model.retryIn > 0, `retry in ${model.retryIn} s`);
  api.gpuReply = new ApiError(404, 'Not Found');
  await model.refresh();
  assert.equal(model.status.kind, 'no-extension');
  api.gpuReply = gpusReply(101);
  await model.refresh();
  assert.equal(model.status.kind, 'ready');
  assert.equal(model.retryIn, null);
  model.dispose();
});

test('GPUs: the poll backs off after errors and says when it retries', async () => {
  const api = new FakeApi();
  api.gpuReply = new ApiError(500, 'down');
  const model = new GpusModel({ api, refreshInterval: 0.02, historyLength: 600 });
  await settle(400);
  const calls = api.count('gpus');
  model.dispose();
  assert.ok(calls >= 2, `retried (${calls} calls)`);
  assert.ok(calls < 400 / 20, `backed off (${calls} calls in 400 ms at a 20 ms interval)`);
  assert.ok(model.retryIn !== null && model.retryIn > 0.02, `retryIn ${model.retryIn}`);
});

test("GPUs: a kernel's memory sums its processes on every GPU; the processes name their kernels", async () => {
  const { api, model } = setup();
  assert.equal(model.kernelMemory('k-1'), 0);
  const reply = gpusReply(100);
  reply.gpus![1].processes = [
    { pid: 9, used_memory: 1073741824, type: 'compute', kernel_id: 'k-1', container_id: null, gpu_instance: null }
  ];
  api.gpuReply = reply;
  await model.refresh();
  assert.equal(model.kernelMemory('k-1'), 5 * 1024 ** 3);
  assert.equal(model.kernelMemory('other'), 0);
  assert.equal(model.kernelMemory(null), 0);
  assert.deepEqual(model.kernelIds(), ['k-1', 'k-1']);
  model.dispose();
});

test('GPUs: settings change the interval and the history length', async () => {
  const { model } = setup();
  await model.refresh();
  let changes = 0;
  model.changed.connect(() => changes++);
  model.configure({ historyLength: 2, refreshInterval: 5 });
  assert.equal(model.interval, 5000);
  assert.equal(model.series(0).memory.length, 2);
  assert.equal(changes, 1);
  model.dispose();
});

test('GPUs: dispose stops the poll', async () => {
  const api = new FakeApi();
  const model = new GpusModel({ api, refreshInterval: 0.02, historyLength: 600 });
  await settle(100);
  assert.ok(api.count('gpus') >= 2, 'it polls on its own');
  model.dispose();
  assert.equal(model.isDisposed, true);
  const calls = api.count('gpus');
  await settle(100);
  assert.equal(api.count('gpus'), calls);
  await model.refresh(); // a disposed model reads nothing, and does not throw
  assert.equal(api.count('gpus'), calls);
});
