import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as f from '../src/format';
import { pullProgress } from './fixtures';

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

test('a pull reads as bytes, rate and time left; its phases in words', () => {
  assert.equal(f.pullSummary(pullProgress()), '48 / 115 MB · 20 MB/s · 3 s left');
  assert.equal(
    f.pullSummary(pullProgress({ bytes_done: 1.2e9, bytes_total: 3.4e9, rate_bytes_per_s: null, eta_s: 125 })),
    '1.2 / 3.4 GB · 2 min 5 s left'
  );
  assert.equal(f.pullSummary(pullProgress({ bytes_total: null, eta_s: null, rate_bytes_per_s: null })), '48 MB');
  assert.equal(f.pullSummary(pullProgress({ phase: 'resolving' })), 'asking the registry…');
  assert.equal(f.pullSummary(pullProgress({ phase: 'extracting' })), 'unpacking · 115 MB downloaded');
  assert.equal(f.pullLayers(pullProgress()), 'layers 2 of 5');
  assert.equal(f.pullLayers(pullProgress({ layers_total: null })), '');
  assert.deepEqual([3, 60, 3720].map(f.duration), ['3 s', '1 min', '1 h 2 min']);
  assert.equal(f.size(7.6e9), '7.6 GB');
});

test('how long a process has run reads as a column does', () => {
  assert.equal(f.elapsed(42), '42 s');
  assert.equal(f.elapsed(7500), '2 h 5 min');
  assert.equal(f.elapsed(3 * 86400 + 4 * 3600 + 59), '3 d 4 h');
  assert.equal(f.elapsed(null), '–');
});
