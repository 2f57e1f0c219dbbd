import assert from 'node:assert/strict';
import { test } from 'node:test';

import React from 'react';
import { renderToStaticMarkup } from 'react-dom/server';

import { KernelSection } from '../src/components/KernelList';
import { PanelModel } from '../src/model';
import type { IGpuApi, IGpusReply, IKernelsReply } from '../src/wire';
import { gpusReply, historyReply, kernelRow, PARKING, parkedRow } from './fixtures';

const NOW = 1_700_000_000;

async function render(kernels: IKernelsReply | Error, gpus: IGpusReply = gpusReply(100)): Promise<string> {
  const api: IGpuApi = {
    gpus: async () => gpus,
    history: async () => historyReply([]),
    environments: async () => ({ docker: null, environments: [] }),
    kernels: async () => {
      if (kernels instanceof Error) {
        throw kernels;
      }
      return kernels;
    },
    pull: async () => ({ image: 'x', state: 'present', pull_progress: null }),
    park: async () => kernelRow(),
    resume: async () => kernelRow(),
    restart: async () => undefined
  };
  const model = new PanelModel({ api, autoStart: false });
  await model.reload();
  const html = renderToStaticMarkup(React.createElement(KernelSection, { model, now: NOW * 1000 }));
  model.dispose();
  return html;
}

/** The text a person reads, tags removed. */
const text = (html: string) =>
  html
    .replace(/<[^>]+>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();

test('rows carry the names browser tests find: the state badge and the action button', async () => {
  const html = await render({
    kernels: [
      kernelRow({ kernel_id: 'a' }),
      parkedRow(NOW, { by: 'idle policy' }),
      kernelRow({ kernel_id: 'c', gpu_memory: 0 }, { state: 'failed', message: 'restore failed; restart it' })
    ],
    parking: PARKING
  });
  assert.match(html, /data-gpuenv-park-state="running"[^>]*>on GPU</);
  assert.match(html, /data-gpuenv-action="park"[^>]*>Park</);
  assert.match(html, /data-gpuenv-park-state="parked"[^>]*>parked</);
  assert.match(html, /data-gpuenv-action="resume"[^>]*>Resume</);
  assert.match(html, /data-gpuenv-park-state="failed"/);
  assert.match(html, /data-gpuenv-action="restart"[^>]*>Restart kernel</);
  assert.match(text(html), /4\.6 GiB in host memory · parked 12 min ago \(by idle policy\)/);
  assert.match(text(html), /Kernels idle for 30 min that hold at least 1\.0 GiB are parked automatically\./);
});

test('a kernel that cannot be parked shows Park disabled, with its reason as tooltip and text', async () => {
  const html = await render({
    kernels: [kernelRow({}, { can_park: false, reason: 'the kernel is running a cell' })],
    parking: PARKING
  });
  assert.match(
    html,
    /<button[^>]*data-gpuenv-action="park"[^>]*disabled=""[^>]*title="The kernel is running a cell\."/
  );
  assert.match(text(html), /The kernel is running a cell\./);
});

test('no kernel on a GPU, parking unavailable, kernels unreadable: each is a sentence', async () => {
  assert.match(text(await render({ kernels: [], parking: PARKING })), /No kernel holds GPU memory/);
  const old = { available: false, reason: 'the NVIDIA driver is 535; parking needs 550 or newer', auto_park: null };
  const unavailable = await render({ kernels: [kernelRow()], parking: old });
  assert.match(text(unavailable), /Parking is not available on this server The NVIDIA driver is 535/);
  assert.match(unavailable, /data-gpuenv-action="park"[^>]*disabled=""/);
  assert.match(text(await render(new Error('boom'))), /Kernels could not be read boom/);
  // a server without park and resume, or one without a GPU: no section at all
  assert.equal(await render({ kernels: [kernelRow({ park: undefined })] }), '');
  const noGpu = gpusReply(100, { available: false, reason: 'NVML: x — no NVIDIA driver on this machine', gpus: [] });
  assert.equal(await render({ kernels: [], parking: { ...old, reason: 'no GPU' } }, noGpu), '');
});
