import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ServerConnection } from '@jupyterlab/services';

import { createApi } from '../src/api';
import { parkErrorText } from '../src/park';
import { ApiError } from '../src/wire';
import { kernelRow } from './fixtures';

/** The server, as ServerConnection's fetch sees it: records each request and answers `reply`. */
function server(status: number, body: unknown) {
  const requests: { method: string; url: string }[] = [];
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    requests.push({ method: request.method, url: request.url.split('?')[0] }); // less Lab's cache-busting query
    return new Response(typeof body === 'string' ? body : JSON.stringify(body), {
      status,
      headers: { 'Content-Type': 'application/json' }
    });
  };
  const settings = ServerConnection.makeSettings({
    baseUrl: 'http://lab.test/user/alice/',
    wsUrl: 'ws://lab.test/user/alice/',
    token: '',
    appendToken: false,
    fetch
  });
  return { api: createApi(settings), requests };
}

test('Park and Resume POST to the kernel and answer its updated row', async () => {
  const row = kernelRow({ kernel_id: 'k/1' }, { state: 'parked' });
  const { api, requests } = server(200, row);
  assert.deepEqual(await api.park('k/1'), row);
  await api.resume('k/1');
  assert.deepEqual(requests, [
    { method: 'POST', url: 'http://lab.test/user/alice/gpuenv/api/kernels/k%2F1/park' },
    { method: 'POST', url: 'http://lab.test/user/alice/gpuenv/api/kernels/k%2F1/resume' }
  ]);
});

test("a 409 carries the server's sentence, which the row says as one sentence", async () => {
  const { api } = server(409, { message: 'the kernel is running a cell', reason: 'Conflict' });
  const error = await api.park('k-1').then(
    () => assert.fail('a 409 must reject'),
    (e: unknown) => e
  );
  assert.ok(error instanceof ApiError);
  assert.equal(error.status, 409);
  assert.equal(error.message, 'the kernel is running a cell');
  assert.equal(parkErrorText('park', error), 'Cannot park: the kernel is running a cell.');
});

test("a 503 from a failed restore, and a proxy's page that is not JSON, still read as sentences", async () => {
  const failed = server(503, { message: 'the restore failed; restart the kernel', reason: 'Service Unavailable' });
  const error = await failed.api.resume('k-1').catch((e: unknown) => e);
  assert.equal(parkErrorText('resume', error), 'Resuming failed: the restore failed; restart the kernel.');
  const proxy = server(502, '<html>Bad Gateway</html>');
  const other = await proxy.api.park('k-1').catch((e: unknown) => e);
  assert.ok(other instanceof ApiError);
  assert.equal(other.status, 502);
});

test("Restart goes through Lab's kernels API, and its refusal is an ApiError too", async () => {
  const { api, requests } = server(404, { message: 'Kernel does not exist: k-1', reason: 'Not Found' });
  const error = await api.restart('k-1').catch((e: unknown) => e);
  assert.deepEqual(requests, [{ method: 'POST', url: 'http://lab.test/user/alice/api/kernels/k-1/restart' }]);
  assert.ok(error instanceof ApiError);
  assert.equal(parkErrorText('restart', error), 'This kernel is no longer running.');
});
