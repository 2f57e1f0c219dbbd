/** The panel's model: what ties its resources together. Each resource's own pacing is in its own test file. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PanelModel } from '../src/model';
import { ApiError } from '../src/wire';
import { clock, environment, FakeApi, FakeSessions, settle } from './fakeApi';
import { kernelRow, PARKING, parkedRow } from './fixtures';

function setup(options: { sessions?: FakeSessions; refreshInterval?: number } = {}) {
  const api = new FakeApi();
  const time = clock();
  const model = new PanelModel({
    api,
    sessions: options.sessions,
    settings: { refreshInterval: options.refreshInterval ?? 2 },
    autoStart: false,
    now: time.now
  });
  return { api, model, advance: time.advance };
}

test('reload reads every resource once, and the widgets find each in the model', async () => {
  const { api, model } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  api.envReply = { docker: { available: true, reason: null }, environments: [environment()] };
  await model.reload();
  assert.deepEqual([...api.calls].sort(), ['environments', 'gpus', 'history:', 'kernels']);
  assert.equal(model.status.kind, 'ready');
  assert.equal(model.series(0).memory.length, 4);
  assert.equal(model.kernelMemory('k-1'), 4 * 1024 ** 3);
  assert.deepEqual(model.kernelsStatus, { kind: 'ready', parking: PARKING });
  assert.equal(model.kernel('k-1')?.park?.state, 'running');
  assert.equal(model.environments.kind, 'ready');
  await model.refresh(); // the refresh button: the GPUs alone
  assert.equal(api.count('gpus'), 2);
  assert.equal(api.count('kernels') + api.count('environments'), 2);
  model.dispose();
});

test('a server that never answers leaves no section loading', async () => {
  const { api, model } = setup();
  api.gpuReply = new ApiError(404, 'Not Found');
  api.kernelsReply = new ApiError(404, 'Not Found');
  await model.reload();
  assert.equal(model.status.kind, 'no-extension');
  assert.equal(model.environments.kind, 'not-available');
  assert.equal(model.kernelsStatus.kind, 'error');
  assert.ok(model.retryIn !== null, 'the GPU section says when it retries');
  model.dispose();
});

test('one poll per resource serves every view: the number of listeners does not change the requests', async () => {
  const api = new FakeApi();
  const model = new PanelModel({ api, settings: { refreshInterval: 0.05 } });
  let renders = 0;
  for (let i = 0; i < 5; i++) {
    model.changed.connect(() => renders++);
  }
  await settle(330);
  model.dispose();
  const calls = api.count('gpus');
  assert.ok(calls >= 3 && calls <= 8, `${calls} GPU requests in 330 ms at 50 ms`);
  assert.equal(api.count('kernels'), 1, 'kernels: at the start, then every 10 s');
  assert.equal(api.count('environments'), 1, 'environments: at the start, then every 30 s');
  assert.ok(renders >= 5 * calls, 'every view was told');
});

test('processes and kernels are named by notebook; unknown kernels ask Lab for sessions once', async () => {
  const sessions = new FakeSessions();
  const { model } = setup({ sessions });
  await model.reload();
  await settle();
  assert.equal(sessions.refreshes, 1);
  assert.equal(model.notebookOf('k-1'), 'work/train.ipynb');
  assert.equal(model.notebookOf('k-2'), null);
  await model.reload();
  assert.equal(sessions.refreshes, 1);
  model.dispose();
});

test("Lab's session changes (a switch, a restart, a shutdown) read the kernels at once", async () => {
  const sessions = new FakeSessions();
  const { api, model } = setup({ sessions });
  await model.reload();
  sessions.runningChanged.emit();
  await settle();
  assert.equal(api.count('kernels'), 2);
  assert.equal(api.count('gpus'), 1);
  model.dispose();
});

test('a kernel whose GPU memory moved has the GPUs read at once, not at their next interval', async () => {
  const { api, model } = setup();
  api.kernelsReply = { kernels: [kernelRow({}, { state: 'parking' })], parking: PARKING };
  await model.reload();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  const gpus = api.count('gpus');
  await model.reload();
  await settle();
  assert.equal(api.count('gpus'), gpus + 2, 'the reload, then the memory that moved');
  api.parkReply = new ApiError(409, 'the kernel is parked');
  await model.park('k-1'); // refused or not, a request ends with the GPUs and the kernels read again
  await settle();
  assert.equal(api.count('gpus'), gpus + 3);
  assert.equal(api.count('kernels'), 3);
  model.dispose();
});

test('while Lab starts a kernel for the notebook in focus, the environments are read at once and often', async () => {
  const { api, model } = setup({ refreshInterval: 0.02 });
  let changes = 0;
  model.changed.connect(() => changes++);
  model.current = { path: 'a.ipynb', kernelId: null, kernelName: null, starting: 'PyTorch' };
  model.current = { path: 'a.ipynb', kernelId: null, kernelName: null, starting: 'PyTorch' };
  await settle(150);
  assert.ok(changes >= 1);
  const reads = api.count('environments');
  assert.ok(reads >= 3, `${reads} reads in 150 ms at 20 ms`);
  model.current = { path: 'a.ipynb', kernelId: 'k', kernelName: 'gpuenv-pt', starting: null };
  await settle(100); // a read under way may finish
  const settled = api.count('environments');
  await settle(100);
  assert.equal(api.count('environments'), settled, 'back to every 30 s');
  assert.equal(api.count('gpus'), 0, 'the GPUs keep their own pace');
  model.dispose();
});

test('the notebook in focus is told once per change', () => {
  const { model } = setup();
  let changes = 0;
  model.changed.connect(() => changes++);
  model.current = { path: 'a.ipynb', kernelId: 'k-1', kernelName: 'python3' };
  model.current = { path: 'a.ipynb', kernelId: 'k-1', kernelName: 'python3' };
  assert.equal(changes, 1);
  assert.equal(model.current?.kernelId, 'k-1');
  model.dispose();
});

test('settings reach the resources: the history length, and the pace', async () => {
  const { api, model } = setup();
  await model.reload();
  model.configure({ historyLength: 2, refreshInterval: 0.02 });
  assert.equal(model.series(0).memory.length, 2);
  await settle(100); // the read already scheduled comes 2 s later; from it on, every 20 ms
  await model.refresh();
  await settle(100);
  assert.ok(api.count('gpus') >= 4, `${api.count('gpus')} GPU reads`);
  assert.equal(api.count('kernels'), 1);
  model.dispose();
});

test('dispose stops every poll', async () => {
  const api = new FakeApi();
  const model = new PanelModel({ api, settings: { refreshInterval: 0.02 } });
  model.current = { path: 'a.ipynb', kernelId: null, kernelName: null, starting: 'PyTorch' };
  await settle(100);
  assert.ok(api.count('gpus') >= 2 && api.count('environments') >= 2, 'they poll on their own');
  model.dispose();
  const calls = api.calls.length;
  await settle(100);
  assert.equal(api.calls.length, calls);
  assert.equal(model.isDisposed, true);
});
