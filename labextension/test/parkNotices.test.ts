import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PanelModel } from '../src/model';
import { INotifier, ParkNotices } from '../src/parkNotices';
import type { IGpuApi, IKernelsReply } from '../src/wire';
import { gpusReply, historyReply, kernelRow, PARKING, parkedRow } from './fixtures';

const NOW = 1_700_000_000;

/** Lab's Notification as the notices use it: what was shown, and what became of it. */
class FakeNotifier implements INotifier {
  shown: { id: string; message: string; type: string; autoClose?: number | false; actions?: string[] }[] = [];
  dismissed: string[] = [];
  press: Record<string, () => void> = {}; // the actions' buttons, by label
  info(message: string, options?: { autoClose?: number | false }): string {
    return this._add(message, 'info', options?.autoClose);
  }
  success(message: string, options?: { autoClose?: number | false }): string {
    return this._add(message, 'success', options?.autoClose);
  }
  emit(message: string, type: 'in-progress', options?: { autoClose?: number | false }): string {
    return this._add(message, type, options?.autoClose);
  }
  update(args: Parameters<INotifier['update']>[0]): boolean {
    const n = this.shown.find(s => s.id === args.id);
    if (!n) {
      return false;
    }
    Object.assign(n, { message: args.message, type: args.type ?? n.type, autoClose: args.autoClose });
    n.actions = args.actions?.map(a => a.label);
    args.actions?.forEach(a => (this.press[a.label] = a.callback));
    return true;
  }
  dismiss(id: string): void {
    this.dismissed.push(id);
  }
  private _add(message: string, type: string, autoClose?: number | false): string {
    const id = `n${this.shown.length}`;
    this.shown.push({ id, message, type, autoClose });
    return id;
  }
}

function setup() {
  let kernels: IKernelsReply = { kernels: [kernelRow()], parking: PARKING };
  const calls: string[] = [];
  const api: IGpuApi = {
    gpus: async () => gpusReply(100),
    history: async () => historyReply([]),
    environments: async () => ({ docker: null, environments: [] }),
    kernels: async () => kernels,
    pull: async () => ({ image: 'x', state: 'present', pull_progress: null }),
    park: async () => kernelRow(),
    resume: async () => kernelRow(),
    restart: async id => {
      calls.push(`restart:${id}`);
    }
  };
  let clock = 0;
  const model = new PanelModel({ api, autoStart: false, now: () => clock });
  const expected: (string | null)[] = []; // the kernels model reads often while it waits for these
  const expectResume = model.expectResume.bind(model);
  model.expectResume = (id: string) => {
    expected.push(id);
    expectResume(id);
  };
  model.current = { path: 'train.ipynb', kernelId: 'k-1', kernelName: 'gpuenv-pt' };
  const notifier = new FakeNotifier();
  let noticeClock = 0;
  const notices = new ParkNotices(model, notifier, () => noticeClock);
  return {
    model,
    expected,
    notifier,
    notices,
    calls,
    serve: async (reply: IKernelsReply) => {
      kernels = reply;
      clock += 10_000;
      await model.reload();
    },
    later: (ms: number) => {
      noticeClock += ms;
    }
  };
}

test('the idle policy parking the notebook in focus is told once, and the notice goes when it resumes', async () => {
  const { model, notifier, serve } = setup();
  await serve({ kernels: [kernelRow()], parking: PARKING });
  assert.equal(notifier.shown.length, 0);
  await serve({ kernels: [parkedRow(NOW)], parking: PARKING });
  await serve({ kernels: [parkedRow(NOW)], parking: PARKING });
  assert.deepEqual(notifier.shown, [
    {
      id: 'n0',
      type: 'info',
      autoClose: false,
      message:
        "This notebook's kernel was parked after 30 minutes idle: its GPU memory is in host memory; running a cell resumes it."
    }
  ]);
  await serve({ kernels: [kernelRow()], parking: PARKING });
  assert.deepEqual(notifier.dismissed, ['n0']);
  // parked by its owner, or another notebook's kernel: no notice
  await serve({ kernels: [parkedRow(NOW, { by: 'you', since: NOW + 60 })], parking: PARKING });
  model.current = { path: 'other.ipynb', kernelId: 'k-2', kernelName: 'python3' };
  await serve({ kernels: [parkedRow(NOW, { since: NOW + 120 })], parking: PARKING });
  assert.equal(notifier.shown.length, 1);
  model.dispose();
});

test('a cell run in a parked kernel shows "Resuming GPU state…" until it runs again', async () => {
  const { model, expected, notifier, notices, serve } = setup();
  await serve({ kernels: [parkedRow(NOW, { by: 'you' })], parking: PARKING });
  notices.cellScheduled('k-1');
  notices.cellScheduled('k-1'); // a second cell while it resumes: still one notice
  assert.deepEqual(
    notifier.shown.map(n => [n.message, n.type]),
    [['Resuming GPU state…', 'in-progress']]
  );
  assert.deepEqual(expected, ['k-1', 'k-1']); // and the model reads the kernel often meanwhile
  await serve({ kernels: [parkedRow(NOW, { by: 'you', state: 'resuming' })], parking: PARKING });
  assert.equal(notifier.shown[0].type, 'in-progress');
  await serve({ kernels: [kernelRow()], parking: PARKING });
  assert.deepEqual(notifier.dismissed, ['n0']); // the in-progress notice goes, a success notice that closes itself
  assert.deepEqual(notifier.shown[1], {
    id: 'n1',
    message: 'GPU state resumed; the cell runs now.',
    type: 'success',
    autoClose: 4000
  });
  notices.cellScheduled('k-1'); // running: nothing to say
  assert.equal(notifier.shown.length, 2);
  model.dispose();
});

test('a resume that fails says why and offers to restart the kernel', async () => {
  const { model, notifier, notices, serve, calls } = setup();
  await serve({ kernels: [parkedRow(NOW, { by: 'you' })], parking: PARKING });
  notices.cellScheduled('k-1');
  const message = 'the restore failed: cuda-checkpoint exited 1; restart the kernel (its variables are lost)';
  await serve({ kernels: [parkedRow(NOW, { state: 'failed', message })], parking: PARKING });
  const shown = notifier.shown[0];
  assert.equal(shown.type, 'error');
  assert.equal(
    shown.message,
    'The restore failed: cuda-checkpoint exited 1; restart the kernel (its variables are lost).'
  );
  assert.deepEqual(shown.actions, ['Restart kernel']);
  assert.equal(calls.length, 0);
  notifier.press['Restart kernel']();
  await new Promise(resolve => setImmediate(resolve));
  assert.deepEqual(calls, ['restart:k-1']);
  model.dispose();
});

test('a kernel the server never starts resuming is said to be still parked after a minute', async () => {
  const { model, notifier, notices, serve, later } = setup();
  await serve({ kernels: [parkedRow(NOW, { by: 'you' })], parking: PARKING });
  notices.cellScheduled('k-1');
  later(61_000);
  await serve({ kernels: [parkedRow(NOW, { by: 'you' })], parking: PARKING });
  assert.deepEqual(
    [notifier.shown[0].type, notifier.shown[0].message],
    ['info', 'The kernel is still parked; resume it from the GPU panel.']
  );
  notices.cellScheduled(null); // a notebook without a kernel
  assert.equal(notifier.shown.length, 1);
  model.dispose();
});
