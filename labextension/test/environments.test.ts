import assert from 'node:assert/strict';
import { test } from 'node:test';

import { whyNot } from '../src/environments';
import type { IEnvironment } from '../src/tokens';

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
  ...over
});
const nb = { path: 'a.ipynb', kernelId: 'k', kernelName: 'python3' };

test('a ready environment can be used for an open notebook', () => {
  assert.equal(whyNot(env(), nb, false), null);
  assert.equal(whyNot(env({ state: 'image-missing' }), nb, false), null);
});

test('the button says why it cannot be pressed', () => {
  assert.equal(whyNot(env(), null, false), 'Open a notebook first.');
  assert.equal(whyNot(env(), { ...nb, kernelName: 'gpuenv-pytorch' }, false), 'This notebook already uses it.');
  assert.equal(whyNot(env(), nb, true), 'Docker is not available.');
  assert.equal(whyNot(env({ state: 'pulling' }), nb, false), 'The image is being downloaded.');
  assert.equal(
    whyNot(env({ state: 'incompatible', reason: 'needs CUDA 12.4, the driver supports 12.2' }), nb, false),
    'Needs CUDA 12.4, the driver supports 12.2.'
  );
  assert.equal(whyNot(env({ state: 'unavailable' }), nb, false), 'This environment cannot start.');
});
