import assert from 'node:assert/strict';
import { test } from 'node:test';

import { History, nearestIndex, polyline, polylineAt, sampleOf } from '../src/history';
import { readout } from '../src/components/HistoryChart';
import { metricsOf } from '../src/dashboard';
import { gpusReply, historyReply } from './fixtures';

test('history keeps the last N points per GPU and ignores repeated samples', () => {
  const h = new History(3);
  h.add(historyReply([1, 2, 3, 4]).samples);
  h.add(historyReply([4, 3]).samples); // already seen
  const s = h.series(0);
  assert.equal(s.memory.length, 3);
  assert.equal(s.seconds, 2);
  assert.ok(Math.abs(s.memory[0] - 0.1) < 1e-6);
  assert.deepEqual(s.utilization, [50, 50, 50]);
  assert.equal(h.lastTime, 4);
  assert.equal(h.series(7).memory.length, 0);
  assert.equal(h.series(7).seconds, 0);
});

test('shortening the history trims what is kept', () => {
  const h = new History(10);
  h.add(historyReply([1, 2, 3, 4, 5]).samples);
  h.length = 2;
  assert.equal(h.series(0).memory.length, 2);
});

test('a snapshot is a history sample; an unavailable one is not', () => {
  const sample = sampleOf(gpusReply(10));
  assert.equal(sample?.t, 10);
  assert.equal(sample?.gpus.length, 2);
  assert.equal(sample?.gpus[0].utilization_gpu, 87);
  assert.equal(sampleOf(gpusReply(10, { available: false })), null);
});

test('polyline maps values into the box, y down', () => {
  assert.equal(polyline([0, 50, 100], 200, 32, 100), '0,32 100,16 200,0');
  assert.equal(polyline([], 200, 32, 100), '');
  assert.equal(polyline([150], 200, 32, 100), '200,0');
});

test("the history covers the server's window: older points go once newer ones span it", () => {
  const h = new History(1000);
  h.add(historyReply([1, 2, 3, 4, 5, 6]).samples);
  h.window = 3;
  assert.deepEqual(h.series(0).t, [3, 4, 5, 6]);
  h.add(historyReply([7, 8]).samples);
  assert.deepEqual(h.series(0).t, [5, 6, 7, 8]);
  const s = h.series(0);
  assert.equal(s.temperature.length, 4);
  assert.equal(s.memoryTotal, 85520809984);
});

test('the chart places samples by time and the readout names the one nearest the pointer', () => {
  assert.equal(polylineAt([0, 1, 4], [0, 50, 100], 200, 40, 100), '0,40 50,20 200,0');
  assert.equal(nearestIndex([0, 1, 4], 0), 0);
  assert.equal(nearestIndex([0, 1, 4], 0.3), 1);
  assert.equal(nearestIndex([0, 1, 4], 1), 2);
  assert.equal(nearestIndex([], 0.5), -1);
  const h = new History(100);
  h.add(historyReply([100, 130, 160]).samples);
  const s = h.series(0);
  assert.equal(readout(s, 0), '1 min ago · memory 8.0 GiB (10 %) · utilization 50 %');
  assert.equal(readout(s, 2), 'now · memory 8.0 GiB (10 %) · utilization 50 %');
});

test("a GPU's dashboard charts utilization, memory, power and temperature; PCIe only where it was read", () => {
  const h = new History(100);
  h.add(historyReply([1, 2]).samples);
  const titles = metricsOf(h.series(0), null).map(m => m.title);
  assert.deepEqual(titles, ['Utilization', 'Memory', 'Power', 'Temperature']);
  const withPcie = historyReply([3]);
  withPcie.samples[0].gpus[0].pcie_mb_s = { tx: 120, rx: 80 };
  h.add(withPcie.samples);
  const metrics = metricsOf(h.series(0), null);
  assert.deepEqual(
    metrics.map(m => m.title),
    ['Utilization', 'Memory', 'Power', 'Temperature', 'PCIe TX', 'PCIe RX']
  );
  assert.equal(metrics[1].format(8552080998), '8.0 GiB');
  assert.equal(metrics[1].max, 85520809984); // the memory chart's scale is the GPU's total
});
