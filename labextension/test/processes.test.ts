import assert from 'node:assert/strict';
import { test } from 'node:test';

import { processName, sortProcesses } from '../src/components/ProcessList';
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
});

test('processes sort by memory (largest first), by name or by pid', () => {
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
    sortProcesses(list, 'memory', true, name).map(x => x.pid),
    [1, 2, 3]
  );
  assert.deepEqual(
    sortProcesses(list, 'memory', false, name).map(x => x.pid),
    [3, 2, 1]
  );
  assert.deepEqual(
    sortProcesses(list, 'name', false, name).map(x => x.pid),
    [2, 3, 1]
  );
  assert.deepEqual(
    sortProcesses(list, 'pid', false, name).map(x => x.pid),
    [1, 2, 3]
  );
});
