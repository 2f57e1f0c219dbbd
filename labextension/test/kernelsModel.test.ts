import assert from 'node:assert/strict';
import { test } from 'node:test';

import { KernelsModel } from '../src/kernelsModel';
import { ApiError } from '../src/wire';
import { clock, FakeApi, settle } from './fakeApi';
import { kernelRow, PARKING, parkedRow } from './fixtures';

function setup(refreshInterval = 2) {
  const api = new FakeApi();
  const time = clock();
  const model = new KernelsModel({ api, refreshInterval, autoStart: false, now: time.now });
  let moved = 0;
  model.memoryMoved.connect(() => moved++);
  return { api, model, advance: time.advance, moved: () => moved };
}

test('kernels: read every 10 s; a restarted kernel reports how its last container ended', async () => {
  const { api, model } = setup();
  assert.equal(model.interval, 10_000);
  assert.equal(model.status.kind, 'loading');
  const oom = { code: 137, oom_killed: true, message: 'the kernel ran out of its 12g memory limit and was restarted' };
  api.kernelsReply = { kernels: [kernelRow({ last_exit: oom })], parking: PARKING };
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'ready', parking: PARKING });
  assert.deepEqual(model.lastExit('k-1'), oom);
  assert.equal(model.lastExit('k-2'), null);
  assert.equal(model.lastExit(null), null);
  assert.equal(model.kernel('k-1')?.kernel_name, 'gpuenv-pt');
  model.dispose();
});

test('kernels: never read more often than the GPUs, nor settle more slowly', async () => {
  const { api, model } = setup(30);
  assert.equal(model.interval, 30_000);
  model.configure(0.2);
  assert.equal(model.interval, 10_000);
  api.kernelsReply = { kernels: [kernelRow({}, { state: 'resuming' })], parking: PARKING };
  await model.refresh();
  assert.equal(model.interval, 200);
  model.dispose();
});

test('kernels: a failed read keeps the last rows, says they are not current, and backs off', async () => {
  const { api, model } = setup();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  await model.refresh();
  api.kernelsReply = new ApiError(500, 'boom');
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'error', message: 'The server answered 500: boom', parking: PARKING });
  assert.equal(model.kernel('k-1')?.park?.state, 'parked');
  assert.ok(model.retryIn !== null && model.retryIn > 0, `retry in ${model.retryIn} s`);
  api.kernelsReply = { kernels: [], parking: PARKING };
  await model.refresh();
  assert.equal(model.status.kind, 'ready');
  assert.equal(model.retryIn, null);
  model.dispose();
});

test('kernels: while one parks they are read every 500 ms; once its memory moved, every 10 s again', async () => {
  const { api, model, moved } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.refresh();
  api.kernelsReply = { kernels: [kernelRow({}, { state: 'parking' })], parking: PARKING };
  await model.refresh(); // the regular read finds it parking
  assert.equal(model.interval, 500);
  assert.equal(moved(), 1, 'its memory is on the move: the GPUs are worth reading');
  await model.refresh();
  assert.equal(moved(), 1, 'still parking: nothing new');
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  await model.refresh();
  assert.equal(moved(), 2);
  assert.equal(model.interval, 10_000);
  model.dispose();
});

test('kernels: Park takes the answered row at once and reads again; a refusal stays until a success', async () => {
  const { api, model, moved } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.refresh();
  const busy: (string | null)[] = [];
  model.changed.connect(() => busy.push(model.parkRequest('k-1').busy));
  api.kernelsReply = { kernels: [kernelRow({}, { state: 'parking' })], parking: PARKING };
  await model.park('k-1');
  assert.equal(busy[0], 'park');
  assert.equal(model.kernel('k-1')?.park?.state, 'parking');
  assert.equal(model.interval, 500);
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: null });
  assert.equal(moved(), 2, 'the answered row, then the request done');
  await settle();
  assert.equal(api.count('kernels'), 2, 'read again at once');
  api.resumeReply = new ApiError(409, "GPU 0 is taken by bob's kernel");
  await model.resume('k-1');
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: "Cannot resume: GPU 0 is taken by bob's kernel." });
  api.parkReply = new ApiError(409, 'the kernel is running a cell');
  await model.park('k-1');
  assert.equal(model.parkRequest('k-1').error, 'Cannot park: the kernel is running a cell.');
  await model.restart('k-1');
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: null }); // gone with the next success
  assert.ok(api.calls.includes('restart:k-1'));
  model.dispose();
});

test("kernels: a kernel that is gone takes its request's error with it", async () => {
  const { api, model } = setup();
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.refresh();
  api.parkReply = new ApiError(409, 'the kernel is running a cell');
  await model.park('k-1');
  assert.notEqual(model.parkRequest('k-1').error, null);
  api.kernelsReply = { kernels: [], parking: PARKING };
  await model.refresh();
  assert.deepEqual(model.parkRequest('k-1'), { busy: null, error: null });
  model.dispose();
});

test('kernels: a cell run in a parked kernel has them read often until it resumes, for at most 15 s', async () => {
  const { api, model, advance } = setup();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000)], parking: PARKING };
  await model.refresh();
  model.expectResume('k-1');
  assert.equal(model.interval, 500);
  await settle();
  assert.equal(api.count('kernels'), 2, 'read at once');
  advance(16_000);
  await model.refresh(); // the server never resumed it: back to the regular pace
  assert.equal(model.interval, 10_000);
  model.expectResume('k-1');
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await model.refresh();
  assert.equal(model.interval, 10_000);
  model.expectResume('k-1'); // a running kernel: nothing to wait for
  assert.equal(model.interval, 10_000);
  model.dispose();
});

test('kernels: the poll itself speeds up while a kernel resumes and slows down once it runs', async () => {
  const api = new FakeApi();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000, { state: 'resuming' })], parking: PARKING };
  const model = new KernelsModel({ api, refreshInterval: 0.5, settleInterval: 20 });
  await settle(300);
  const fast = api.count('kernels');
  assert.ok(fast >= 5, `${fast} kernel reads in 300 ms while resuming`);
  api.kernelsReply = { kernels: [kernelRow()], parking: PARKING };
  await settle(100); // it reads the running row and slows down
  const settled = api.count('kernels');
  await settle(300);
  model.dispose();
  assert.ok(api.count('kernels') <= settled + 1, `${api.count('kernels') - settled} kernel reads after it settled`);
});

test('kernels: dispose stops the poll', async () => {
  const api = new FakeApi();
  api.kernelsReply = { kernels: [parkedRow(1_700_000_000, { state: 'resuming' })], parking: PARKING };
  const model = new KernelsModel({ api, refreshInterval: 2, settleInterval: 10 });
  await settle(60);
  assert.ok(api.count('kernels') >= 2, 'it polls on its own');
  model.dispose();
  const calls = api.count('kernels');
  await settle(60);
  assert.equal(api.count('kernels'), calls);
  assert.equal(model.isDisposed, true);
});
