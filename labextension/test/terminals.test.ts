import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { Terminal } from '@jupyterlab/services';

import { GpuEnvTerminalConnection } from '../src/terminalConnection';
import { kernelsOf, labTerminalOptions, tabLabel } from '../src/terminalInfo';
import { ApiError, IKernel, ITerminalApi, ITerminalModel } from '../src/wire';

/** A browser WebSocket as the connection uses it: the test plays the server. */
class FakeSocket {
  static made: FakeSocket[] = [];
  sent: string[] = [];
  closed = false;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.made.push(this);
  }

  send(data: string): void {
    this.sent.push(data);
  }

  close(): void {
    this.closed = true;
  }

  serve(...message: unknown[]): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
}

function connection(api: Partial<ITerminalApi> = {}) {
  FakeSocket.made = [];
  const calls: string[] = [];
  const full: ITerminalApi = {
    open: async () => model,
    get: async name => {
      calls.push(`get ${name}`);
      return model;
    },
    close: async name => {
      calls.push(`close ${name}`);
    },
    socketUrl: name => `ws://server/gpuenv/api/terminals/${name}/websocket`,
    ...api
  };
  const settings = { WebSocket: FakeSocket } as any;
  const session = new GpuEnvTerminalConnection({ name: 'abc123', api: full, serverSettings: settings });
  const messages: Terminal.IMessage[] = [];
  session.messageReceived.connect((_, m) => messages.push(m));
  return { session, messages, calls };
}

const model: ITerminalModel = {
  name: 'abc123',
  environment: 'pytorch',
  kernel_id: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0',
  container_id: 'c0ffee',
  ends_with: 'kernel',
  notice: 'It ends when the kernel shuts down or restarts.',
  clients: 0,
  created: 0
};

const settle = () => new Promise(resolve => setTimeout(resolve, 5));

test('it speaks terminado on the terminal’s own address, keeping what is typed until it is connected', () => {
  const { session, messages } = connection();
  const [socket] = FakeSocket.made;
  assert.equal(socket.url, 'ws://server/gpuenv/api/terminals/abc123/websocket');
  session.send({ type: 'stdin', content: ['ls\r'] });
  assert.deepEqual(socket.sent, []);
  socket.serve('setup', {});
  assert.equal(session.connectionStatus, 'connected');
  assert.deepEqual(socket.sent, ['["stdin","ls\\r"]']);
  socket.serve('stdout', 'work.ipynb\r\n');
  assert.deepEqual(messages, [{ type: 'stdout', content: ['work.ipynb\r\n'] }]);
  session.send({ type: 'set_size', content: [24, 80, 400, 600] });
  assert.equal(socket.sent[1], '["set_size",24,80,400,600]');
});

test('a dropped socket reconnects to the same shell and redraws it on a clean screen', async () => {
  const { session, messages, calls } = connection();
  FakeSocket.made[0].serve('setup', {});
  FakeSocket.made[0].onclose?.({ code: 1006 });
  assert.equal(session.connectionStatus, 'connecting');
  await settle();
  assert.deepEqual(calls, ['get abc123']); // the server still has it
  const again = FakeSocket.made[1];
  again.serve('setup', {});
  again.serve('stdout', 'what came before');
  assert.deepEqual(
    messages.map(m => m.content?.[0]),
    ['\x1bc', 'what came before']
  );
});

test('a terminal that ended is not reconnected: the session ends with it', async () => {
  const { session } = connection({
    get: async () => {
      throw new ApiError(404, 'no terminal');
    }
  });
  let disposed = false;
  session.disposed.connect(() => (disposed = true));
  FakeSocket.made[0].serve('setup', {});
  FakeSocket.made[0].onclose?.({ code: 1006 });
  await settle();
  assert.ok(disposed && session.isDisposed);
  assert.equal(FakeSocket.made.length, 1);
});

test('the shell’s end (disconnect) and closing the tab (shutdown) end the session; shutdown tells the server', async () => {
  const first = connection();
  FakeSocket.made[0].serve('setup', {});
  FakeSocket.made[0].serve('disconnect', 1);
  assert.ok(first.session.isDisposed && FakeSocket.made[0].closed);

  const second = connection();
  FakeSocket.made[0].serve('setup', {});
  await second.session.shutdown();
  assert.deepEqual(second.calls, ['close abc123']);
  assert.ok(second.session.isDisposed);

  const gone = connection({
    close: async () => {
      throw new ApiError(404, 'no terminal');
    }
  });
  await gone.session.shutdown(); // it had ended already: nothing to report
  assert.ok(gone.session.isDisposed);
});

test('what the panel and the tab say', () => {
  const kernel = (over: Partial<IKernel>): IKernel => ({
    kernel_id: 'k',
    kernel_name: null,
    environment: 'pytorch',
    container_id: 'c',
    gpu_mode: null,
    gpus: null,
    gpu_memory: null,
    last_exit: null,
    ...over
  });
  const kernels = [
    kernel({ kernel_id: 'a' }),
    kernel({ kernel_id: 'b', container_id: null }),
    kernel({ kernel_id: 'c', environment: 'other' })
  ];
  assert.deepEqual(
    kernelsOf(kernels, 'pytorch').map(k => k.kernel_id),
    ['a']
  );
  // two tabs of one environment differ in their first words
  assert.equal(tabLabel(model, 'project/train.ipynb', 'PyTorch 2.6'), 'train.ipynb · PyTorch 2.6');
  assert.equal(tabLabel({ ...model, kernel_id: null }, null, 'PyTorch 2.6'), 'Terminal abc1 · PyTorch 2.6');
  assert.deepEqual(labTerminalOptions({ fontSize: 15, shutdownOnClose: false, theme: 'dark', nonsense: 1 }), {
    fontSize: 15,
    theme: 'dark'
  });
});
