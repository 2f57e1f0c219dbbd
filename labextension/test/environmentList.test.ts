import assert from 'node:assert/strict';
import { test } from 'node:test';

import React from 'react';
import { renderToStaticMarkup } from 'react-dom/server';

import { EnvironmentList } from '../src/components/EnvironmentList';
import { PanelModel } from '../src/model';
import type { IEnvironment, IGpuApi } from '../src/wire';
import { gpusReply, historyReply, kernelRow } from './fixtures';

const row = (name: string, over: Partial<IEnvironment> = {}): IEnvironment => ({
  name,
  display_name: name,
  image: `${name}:latest`,
  image_present: true,
  cuda_version: null,
  compatible: true,
  reason: null,
  gpus: 'none',
  kernelspec: `gpuenv-${name}`,
  state: 'ready',
  pull_progress: null,
  can_start: true,
  reason_code: null,
  ...over
});

async function render(environments: IEnvironment[]): Promise<string> {
  const api: IGpuApi = {
    gpus: async () => gpusReply(100),
    history: async () => historyReply([]),
    environments: async () => ({ docker: { available: true, reason: null }, environments }),
    kernels: async () => ({ kernels: [] }),
    pull: async () => ({ image: 'x', state: 'present', pull_progress: null }),
    park: async () => kernelRow(),
    resume: async () => kernelRow(),
    restart: async () => undefined
  };
  const model = new PanelModel({ api, autoStart: false });
  await model.reload();
  const html = renderToStaticMarkup(React.createElement(EnvironmentList, { model, onUse: () => undefined }));
  model.dispose();
  return html;
}

test('the card of an environment with a warm kernel ready says "warm", with why in its tooltip', async () => {
  const html = await render([row('torch', { warm: 1 }), row('cpu', { warm: 0 }), row('jax')]);
  const cards = html.split('<li').slice(1);
  assert.equal(cards.length, 3);
  assert.match(cards[0], /data-state="env-warm"[^>]*>warm<\/span>/);
  assert.match(cards[0], /title="A warm kernel is ready: a notebook switched to it starts at once\."/);
  assert.doesNotMatch(cards[1], /env-warm/);
  assert.doesNotMatch(cards[2], /env-warm/);
});
