import assert from 'node:assert/strict';
import { test } from 'node:test';

import { processName } from '../src/components/ProcessList';
import type { IGpuProcess } from '../src/tokens';

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
