import assert from 'node:assert/strict';
import { test } from 'node:test';

import { canPrepare, pullingFor, warmMark, whyNot } from '../src/environments';
import { pullProgress } from './fixtures';
import type { IEnvironment } from '../src/wire';

const env = (over: Partial<IEnvironment> = {}): IEnvironment => ({
  name: 'pytorch',
  display_name: 'PyTorch 2.6 / CUDA 12.4',
  image: 'pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime',
  image_present: true,
  cuda_version: '12.4',
  compatible: true,
  reason: null,
  gpus: 'all',
  kernelspec: 'gpuenv-pytorch',
  state: 'ready',
  pull_progress: null,
  can_start: true,
  reason_code: null,
  ...over
});
const nb = { path: 'a.ipynb', kernelId: 'k', kernelName: 'python3' };

test('an environment the server can start can be used for an open notebook', () => {
  assert.equal(whyNot(env(), nb, false), null);
  // a missing image that the first start pulls is no obstacle
  const pulledOnStart = env({
    state: 'image-missing',
    image_present: false,
    reason: 'image pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime is not on the engine; it is pulled at first start'
  });
  assert.equal(whyNot(pulledOnStart, nb, false), null);
});

test('the server decides: can_start false disables the button with its reason', () => {
  const missing = env({
    state: 'image-missing',
    can_start: false,
    reason_code: 'image-missing',
    reason: 'image x is not on the engine and pulling is off'
  });
  assert.equal(whyNot(missing, nb, false), 'Image x is not on the engine and pulling is off.');
  const noRuntime = env({
    state: 'runtime-missing',
    can_start: false,
    reason_code: 'no-kernel-runtime',
    reason: 'the image has no ipykernel; run `jupyter gpuenv runtime` first'
  });
  assert.equal(whyNot(noRuntime, nb, false), 'The image has no ipykernel; run `jupyter gpuenv runtime` first.');
  assert.equal(
    whyNot(
      env({
        state: 'incompatible',
        can_start: false,
        reason_code: 'cuda-too-new',
        reason: 'needs CUDA 12.4, the driver supports 12.2'
      }),
      nb,
      false
    ),
    'Needs CUDA 12.4, the driver supports 12.2.'
  );
  // even in a state that reads as ready, the verdict is the server's
  assert.equal(
    whyNot(env({ can_start: false, reason: 'asks for GPUs (all) but this server sees none' }), nb, false),
    'Asks for GPUs (all) but this server sees none.'
  );
});

test('without a reason sentence, the reason code still says why', () => {
  assert.equal(
    whyNot(env({ state: 'pulling', can_start: false, reason_code: 'pulling' }), nb, false),
    'The image is being downloaded.'
  );
  assert.equal(
    whyNot(env({ state: 'incompatible', can_start: false, reason_code: 'cuda-too-new' }), nb, false),
    'The image needs a newer NVIDIA driver than this machine has.'
  );
  assert.equal(whyNot(env({ state: 'unavailable', can_start: false }), nb, false), 'This environment cannot start.');
});

test('the button says why it cannot be pressed', () => {
  assert.equal(whyNot(env(), null, false), 'Open a notebook first.');
  assert.equal(whyNot(env(), { ...nb, kernelName: 'gpuenv-pytorch' }, false), 'This notebook already uses it.');
  assert.equal(whyNot(env(), nb, true), 'Docker is not available.');
  assert.equal(whyNot(env({ can_start: false, reason: 'boom' }), nb, true), 'Docker is not available.');
});

test('Prepare is offered exactly for a missing image this server pulls', () => {
  const missing = env({ state: 'image-missing', image_present: false });
  assert.equal(canPrepare(missing, false), true);
  assert.equal(canPrepare({ ...missing, can_start: false, reason_code: 'image-missing' }, false), false); // pulling off
  assert.equal(canPrepare(missing, true), false); // Docker down
  assert.equal(canPrepare(env(), false), false); // present already
  assert.equal(canPrepare(env({ state: 'pulling', pull_progress: pullProgress() }), false), false);
});

test('the pull a starting notebook waits for: by its kernel name, or the only one under way', () => {
  const pulling = env({ state: 'pulling', image_present: false, pull_progress: pullProgress() });
  const other = env({ name: 'jax', display_name: 'JAX', state: 'pulling', pull_progress: pullProgress() });
  const starting = { ...nb, starting: 'PyTorch 2.6 / CUDA 12.4' };
  assert.equal(pullingFor([other, pulling], starting), pulling);
  assert.equal(pullingFor([other], { ...nb, starting: 'Python 3' }), other); // the one pull there is
  assert.equal(pullingFor([other, pulling], { ...nb, starting: 'Python 3' }), null); // cannot tell
  assert.equal(pullingFor([pulling], nb), null); // the notebook is not starting a kernel
});

test('an environment is marked warm when a start will take a warm kernel of this person', () => {
  assert.equal(warmMark(env({ warm: 1 })), 'A warm kernel is ready: a notebook switched to it starts at once.');
  assert.equal(warmMark(env({ warm: 2 })), '2 warm kernels are ready: a notebook switched to it starts at once.');
  assert.equal(warmMark(env({ warm: 0 })), null);
  assert.equal(warmMark(env()), null); // a server or broker that keeps none says nothing
  assert.equal(warmMark(env({ warm: 1, can_start: false, reason: 'no GPU' })), null); // no start, nothing instant
});
