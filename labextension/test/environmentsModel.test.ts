import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EnvironmentsModel } from '../src/environmentsModel';
import { ApiError, IEnvironmentsReply } from '../src/wire';
import { environment, FakeApi, settle } from './fakeApi';
import { pullProgress } from './fixtures';

const GOOD: IEnvironmentsReply = { docker: { available: true, reason: null }, environments: [environment()] };

function setup(refreshInterval = 2) {
  const api = new FakeApi();
  api.envReply = GOOD;
  const model = new EnvironmentsModel({ api, refreshInterval, autoStart: false });
  return { api, model };
}

test('environments: read every 30 s; every refresh interval while an image is pulled', async () => {
  const { api, model } = setup();
  assert.equal(model.interval, 30_000);
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'ready', reply: GOOD });
  api.envReply = {
    ...GOOD,
    environments: [environment({ state: 'pulling', pull_progress: pullProgress(), can_start: false })]
  };
  await model.refresh();
  assert.equal(model.interval, 2000);
  api.envReply = GOOD;
  await model.refresh();
  assert.equal(model.interval, 30_000);
  model.dispose();
});

test('environments: while Lab starts a kernel for the notebook in focus, every refresh interval', () => {
  const { model } = setup();
  model.kernelStarting = true;
  assert.equal(model.interval, 2000);
  model.kernelStarting = false;
  assert.equal(model.interval, 30_000);
  model.configure(60); // never more often than the GPUs
  assert.equal(model.interval, 60_000);
  model.dispose();
});

test('environments: a failed read keeps the last list with a note; only repeated failures replace it', async () => {
  const { api, model } = setup();
  await model.refresh();
  // a loaded machine: the engine's answer came too late, the server says Docker does not answer
  api.envReply = {
    docker: { available: false, reason: 'the Docker engine did not answer within 5 s' },
    environments: []
  };
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'ready', reply: GOOD, stale: 'The Docker engine did not answer within 5 s.' });
  assert.equal(model.interval, 5000, 'read again soon, so a slow call is not reported for long');
  assert.equal(model.retryIn, null, 'not backing off yet');
  api.envReply = new ApiError(500, 'boom');
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'ready', reply: GOOD, stale: 'The server answered 500: boom' });
  await model.refresh(); // the third failure in a row: now the section says so, and the poll backs off
  assert.deepEqual(model.status, { kind: 'error', message: 'The server answered 500: boom' });
  assert.ok(model.retryIn !== null && model.retryIn > 0, `retry in ${model.retryIn} s`);
  api.envReply = GOOD;
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'ready', reply: GOOD });
  assert.equal(model.interval, 30_000);
  assert.equal(model.retryIn, null);
  model.dispose();
});

test('environments: a server without them (404) says not available, and asks again at the usual pace', async () => {
  const { api, model } = setup();
  api.envReply = new ApiError(404, 'no such gpuenv API endpoint');
  await model.refresh();
  await model.refresh();
  await model.refresh();
  assert.deepEqual(model.status, { kind: 'not-available' });
  assert.equal(model.interval, 30_000);
  assert.equal(model.retryIn, null);
  model.dispose();
});

test('environments: Prepare asks the server to pull, then reads them at once; a refusal stays on the row', async () => {
  const { api, model } = setup();
  await model.refresh();
  const states: boolean[] = [];
  model.changed.connect(() => states.push(model.prepareState('pt').busy));
  await model.prepare('pt');
  assert.equal(api.count('pull:pt'), 1);
  assert.equal(states[0], true); // the button shows the request under way
  assert.deepEqual(model.prepareState('pt'), { busy: false, error: null });
  await settle();
  assert.equal(api.count('environments'), 2, 'not 30 s later: the progress shows now');
  api.pullReply = new ApiError(409, 'this server does not pull images (c.GpuEnv.pull_missing_images is off)');
  await model.prepare('pt');
  assert.deepEqual(model.prepareState('pt'), {
    busy: false,
    error: 'The server answered 409: this server does not pull images (c.GpuEnv.pull_missing_images is off)'
  });
  model.dispose();
});

test('environments: dispose stops the poll', async () => {
  const api = new FakeApi();
  api.envReply = GOOD;
  const model = new EnvironmentsModel({ api, refreshInterval: 0.02 });
  model.kernelStarting = true; // read every 20 ms
  await settle(100);
  assert.ok(api.count('environments') >= 2, 'it polls on its own');
  model.dispose();
  const calls = api.count('environments');
  await settle(100);
  assert.equal(api.count('environments'), calls);
  assert.equal(model.isDisposed, true);
});
