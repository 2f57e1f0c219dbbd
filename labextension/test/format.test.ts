import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as f from '../src/format';

test('memory reads like nvidia-smi, in GiB with one decimal', () => {
  assert.equal(f.memoryUsage(6966738944, 85520809984), '6.5 / 79.6 GiB');
  assert.equal(f.memoryUsage(null, 85520809984), '– / 79.6 GiB');
  assert.equal(f.bytes(4294967296), '4.0 GiB');
  assert.equal(f.bytes(524288000), '500 MiB');
  assert.equal(f.bytes(null), '–');
});

test('percent, temperature and power round and tolerate nulls', () => {
  assert.equal(f.percent(87), '87 %');
  assert.equal(f.percent(null), '–');
  assert.equal(f.celsius(54.4), '54 °C');
  assert.equal(f.power(312.456, 700), '312 / 700 W');
  assert.equal(f.power(69.9, null), '70 W');
  assert.equal(f.power(null, 700), '–');
});

test('fraction is clamped and safe with unknown totals', () => {
  assert.equal(f.fraction(1, 4), 0.25);
  assert.equal(f.fraction(5, 4), 1);
  assert.equal(f.fraction(1, 0), 0);
  assert.equal(f.fraction(null, 4), 0);
});

test('no-driver reasons from NVML become words a user understands', () => {
  const m = f.noGpuMessage(
    'NVML: NVML Shared Library Not Found — no NVIDIA driver on this machine (libnvidia-ml.so.1 was not found)'
  );
  assert.equal(m.title, 'No GPU on this machine');
  assert.equal(
    m.detail,
    'No NVIDIA driver on this machine (libnvidia-ml.so.1 was not found). Notebooks here run on the CPU.'
  );
  const other = f.noGpuMessage('NVML: Insufficient Permissions — this user may not access the NVIDIA driver');
  assert.equal(other.title, 'GPUs cannot be read');
  assert.equal(other.detail, 'This user may not access the NVIDIA driver.');
});

test('GPU policies and environment states read as words', () => {
  assert.equal(f.gpuPolicy('all'), 'all GPUs');
  assert.equal(f.gpuPolicy('none'), 'no GPU');
  assert.equal(f.gpuPolicy('2'), 'any 2 GPUs');
  assert.equal(f.gpuPolicy('0,1'), 'GPU 0, 1');
  assert.equal(f.gpuPolicy('exclusive:1'), '1 GPU of its own');
  assert.equal(f.environmentState('ready', true), 'ready');
  assert.equal(f.environmentState('image-missing', false), 'image missing');
  assert.equal(f.environmentState('image-missing', true), 'pulled on first start');
  assert.equal(f.environmentState('runtime-missing', false), 'needs kernel runtime');
  assert.equal(f.environmentState('invalid', false), 'misconfigured');
  assert.equal(f.environmentState(null, false), 'unavailable');
});

test('basename and sentence', () => {
  assert.equal(f.basename('work/deep/analysis.ipynb'), 'analysis.ipynb');
  assert.equal(f.basename('top.ipynb'), 'top.ipynb');
  assert.equal(f.sentence('docker not running'), 'Docker not running.');
  assert.equal(f.sentence('Done!'), 'Done!');
});
