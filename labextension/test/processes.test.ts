import assert from 'node:assert/strict';
import { test } from 'node:test';

import { processName, sortProcesses, userOf } from '../src/components/ProcessList';
import type { IGpuProcess } from '../src/wire';

const base: IGpuProcess = {
  pid: 1,
  used_memory: 1,
  type: 'compute',
  kernel_id: null,
  container_id: null,
  gpu_instance: null
};

test('a process is named by its notebook, else whose kernel it is, else other', () => {
  assert.equal(processName({ ...base, kernel_id: 'k' }, 'work/train.ipynb'), 'train.ipynb');
  assert.equal(processName({ ...base, kernel_id: 'k' }, null), 'kernel without notebook');
  assert.equal(processName({ ...base, container_id: 'c', user: 'alice' }, null), "alice's kernel");
  assert.equal(processName({ ...base, container_id: 'c', user: 'another user' }, null), "another user's kernel");
  assert.equal(processName(base, null), 'other process');
  assert.equal(processName({ ...base, command: 'python3 train.py' }, null), 'python3 train.py');
});

test('processes sort by GPU memory (largest first) or by name', () => {
  const p = (pid: number, used: number, kernel: string | null) => ({
    pid,
    used_memory: used,
    type: 'compute',
    kernel_id: kernel,
    container_id: null,
    gpu_instance: null
  });
  const list = [p(3, 100, null), p(1, 300, 'k-1'), p(2, 200, null)];
  const name = (x: { pid: number }) => (x.pid === 1 ? 'train.ipynb' : `other ${x.pid}`);
  assert.deepEqual(
    sortProcesses(list, 'memory', true, 0, name).map(x => x.pid),
    [1, 2, 3]
  );
  assert.deepEqual(
    sortProcesses(list, 'memory', false, 0, name).map(x => x.pid),
    [3, 2, 1]
  );
  assert.deepEqual(
    sortProcesses(list, 'name', false, 0, name).map(x => x.pid),
    [2, 3, 1]
  );
});

test('every column sorts, and a process without a value comes last either way', () => {
  const p = (pid: number, over: Partial<IGpuProcess>): IGpuProcess => ({ ...base, pid, ...over });
  const now = 10_000;
  const list = [
    p(1, { gpu_utilization: 71, host_memory: 2e9, started_at: now - 60, owner: 'bob' }),
    p(2, { gpu_utilization: null, host_memory: 5e8, started_at: now - 7200, owner: 'alice' }),
    p(3, { gpu_utilization: 16, host_memory: null, started_at: null, owner: null, user: 'another user' })
  ];
  const order = (key: Parameters<typeof sortProcesses>[1], down: boolean) =>
    sortProcesses(list, key, down, now, x => String(x.pid)).map(x => x.pid);
  assert.deepEqual(order('gpu', true), [1, 3, 2]); // the sleeping process ("–") last
  assert.deepEqual(order('gpu', false), [3, 1, 2]);
  assert.deepEqual(order('host', true), [1, 2, 3]);
  assert.deepEqual(order('time', true), [2, 1, 3]); // the longest running first
  assert.deepEqual(order('user', false), [2, 3, 1]); // alice, another user, bob
  assert.equal(userOf(list[2]), 'another user');
});
