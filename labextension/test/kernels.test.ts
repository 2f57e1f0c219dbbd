import assert from 'node:assert/strict';
import { test } from 'node:test';

import { hostMemoryText, hostMemoryWarning, lastExitText, restartNotices } from '../src/kernels';
import type { IKernel } from '../src/wire';

const kernel = (over: Partial<IKernel> = {}): IKernel => ({
  kernel_id: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0',
  kernel_name: 'gpuenv-pytorch',
  environment: 'pytorch',
  container_id: 'abc123',
  gpu_mode: 'exclusive',
  gpus: [0],
  gpu_memory: null,
  last_exit: null,
  ...over
});

test('a kernel restarted at its memory limit reads as the server says it', () => {
  const oom = { code: 137, oom_killed: true, message: 'the kernel ran out of its 12g memory limit and was restarted' };
  assert.equal(lastExitText(oom), 'The kernel ran out of its 12g memory limit and was restarted.');
});

test('without a message, the exit is still described; no exit, no warning', () => {
  assert.equal(
    lastExitText({ code: 137, oom_killed: true, message: '' }),
    'The kernel ran out of memory and was restarted.'
  );
  assert.equal(
    lastExitText({ code: 1, oom_killed: false, message: ' ' }),
    'The kernel exited with code 1 and was restarted.'
  );
  assert.equal(lastExitText({ code: null, oom_killed: false, message: '' }), 'The kernel stopped and was restarted.');
  assert.equal(lastExitText(null), null);
  assert.equal(lastExitText(undefined), null); // a server that does not report exits
});

test('restart notices name the notebook, or the kernel when no notebook uses it', () => {
  const oom = { code: 137, oom_killed: true, message: 'the kernel ran out of its 12g memory limit and was restarted' };
  const kernels = [
    kernel({ kernel_id: 'k-1', last_exit: oom }),
    kernel({ kernel_id: 'k-2' }),
    kernel({ kernel_id: '0f1e2d3c-4b5a-6978', last_exit: { code: 1, oom_killed: false, message: '' } })
  ];
  const notices = restartNotices(kernels, id => (id === 'k-1' ? 'work/train.ipynb' : null));
  assert.deepEqual(notices, [
    { kernelId: 'k-1', label: 'train.ipynb', text: 'The kernel ran out of its 12g memory limit and was restarted.' },
    {
      kernelId: '0f1e2d3c-4b5a-6978',
      label: 'kernel 0f1e2d3c',
      text: 'The kernel exited with code 1 and was restarted.'
    }
  ]);
});

test("a container kernel's memory reads against its limit, with a warning that leads with the fix", () => {
  const MiB = 1024 ** 2;
  assert.equal(hostMemoryText({ used: 470 * MiB, limit: 512 * MiB, warning: true }), '470 MiB of 512 MiB');
  assert.equal(hostMemoryText({ used: 3 * 1024 * MiB, limit: null, warning: false }), '3.0 GiB');
  assert.equal(hostMemoryText(null), null);
  assert.equal(
    hostMemoryWarning({ used: 470 * MiB, limit: 512 * MiB, warning: true }),
    'Free memory or save your work: this kernel uses 92 % of its 512 MiB memory limit, and at the limit it is ' +
      'stopped and restarted, losing its variables.'
  );
  assert.equal(hostMemoryWarning({ used: 256 * MiB, limit: 512 * MiB, warning: false }), null);
});
