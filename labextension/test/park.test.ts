import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as f from '../src/format';
import {
  autoParkText,
  currentActions,
  idleParkText,
  parkedLine,
  parkErrorText,
  parkRows,
  parkView,
  resumeOutcome,
  statusView
} from '../src/park';
import { ApiError } from '../src/wire';
import { kernelRow, PARKING, parkedRow } from './fixtures';

const NOW = 1_700_000_000; // seconds
const NOW_MS = NOW * 1000;
const GIB = 1024 ** 3;

test('host memory and the time since parking read as people say them', () => {
  assert.equal(parkedLine(parkedRow(NOW), NOW_MS), '4.6 GiB in host memory · parked 12 min ago (by idle policy)');
  assert.equal(
    parkedLine(parkedRow(NOW, { by: 'you', since: NOW - 30 }), NOW_MS),
    '4.6 GiB in host memory · parked just now (by you)'
  );
  assert.equal(parkedLine(parkedRow(NOW, { host_memory: null, since: null, by: null }), NOW_MS), 'parked');
  assert.deepEqual([59, 60, 12 * 60 + 59, 3600, 2 * 3600 + 5 * 60, 86400, 3 * 86400].map(f.ago), [
    'just now',
    '1 min ago',
    '12 min ago',
    '1 h ago',
    '2 h 5 min ago',
    '1 day ago',
    '3 days ago'
  ]);
});

test('a running kernel that can be parked offers Park, saying what it does', () => {
  const view = parkView(kernelRow(), PARKING, 4 * GIB, NOW_MS);
  assert.equal(view.state, 'running');
  assert.equal(view.badge, 'on GPU');
  assert.equal(view.detail, '4.0 GiB on GPU 0');
  assert.equal(view.busy, false);
  assert.equal(view.button?.action, 'park');
  assert.equal(view.button?.disabled, false);
  assert.match(view.button?.title ?? '', /^Move its 4\.0 GiB of GPU memory to host memory and free GPU 0\./);
});

test("a kernel that cannot be parked now has Park disabled with the server's reason", () => {
  const busy = kernelRow({}, { can_park: false, reason: 'the kernel is running a cell' });
  const view = parkView(busy, PARKING, 4 * GIB, NOW_MS);
  assert.equal(view.button?.action, 'park');
  assert.equal(view.button?.disabled, true);
  assert.equal(view.button?.title, 'The kernel is running a cell.');
  // a server that cannot park at all: every Park is disabled with its sentence
  const old = { available: false, reason: 'The NVIDIA driver is 535; parking needs 550 or newer.', auto_park: null };
  const blocked = parkView(kernelRow(), old, 4 * GIB, NOW_MS);
  assert.equal(blocked.button?.disabled, true);
  assert.equal(blocked.button?.title, 'The NVIDIA driver is 535; parking needs 550 or newer.');
});

test('a parked kernel shows its host memory, when and by whom, the notice, and Resume', () => {
  const view = parkView(parkedRow(NOW), PARKING, 0, NOW_MS);
  assert.equal(view.state, 'parked');
  assert.equal(view.badge, 'parked');
  assert.equal(view.detail, '4.6 GiB in host memory · parked 12 min ago (by idle policy)');
  assert.equal(view.notice, 'Parked after 30 minutes idle.');
  assert.deepEqual([view.button?.action, view.button?.label, view.button?.disabled], ['resume', 'Resume', false]);
});

test('parking and resuming are a moving text state without buttons; so is a request under way', () => {
  const parking = parkView(kernelRow({}, { state: 'parking' }), PARKING, 4 * GIB, NOW_MS);
  assert.deepEqual(
    [parking.badge, parking.detail, parking.busy, parking.button],
    ['parking…', 'Moving 4.0 GiB to host memory…', true, null]
  );
  const resuming = parkView(parkedRow(NOW, { state: 'resuming' }), PARKING, 0, NOW_MS);
  assert.deepEqual(
    [resuming.badge, resuming.detail, resuming.button],
    ['resuming…', 'Moving 4.6 GiB back to GPU 0…', null]
  );
  const pressed = parkView(kernelRow(), PARKING, 4 * GIB, NOW_MS, { busy: 'park', error: 'Cannot park: x.' });
  assert.equal(pressed.state, 'parking');
  assert.equal(pressed.error, null); // the last error is not shown while the new request is under way
});

test('a failed kernel says what went wrong and offers Restart kernel', () => {
  const message = 'the GPU state could not be restored (cuda-checkpoint: out of memory); restart the kernel';
  const view = parkView(parkedRow(NOW, { state: 'failed', message }), PARKING, 0, NOW_MS);
  assert.equal(view.badge, 'failed');
  assert.equal(
    view.notice,
    'The GPU state could not be restored (cuda-checkpoint: out of memory); restart the kernel.'
  );
  assert.deepEqual([view.button?.action, view.button?.label], ['restart', 'Restart kernel']);
  const afterResume = parkView(parkedRow(NOW, { state: 'failed', message }), PARKING, 0, NOW_MS, {
    busy: null,
    error: `Resuming failed: ${message}.`
  });
  assert.equal(afterResume.error, null); // the notice says it once; the failed Resume's error would repeat it
  const restarting = parkView(parkedRow(NOW, { state: 'failed' }), PARKING, 0, NOW_MS, {
    busy: 'restart',
    error: null
  });
  assert.deepEqual([restarting.button?.label, restarting.button?.disabled], ['Restarting…', true]);
});

test('the last request error stays on the row as a sentence', () => {
  const view = parkView(kernelRow(), PARKING, 4 * GIB, NOW_MS, {
    busy: null,
    error: 'Cannot park: the kernel is running a cell.'
  });
  assert.equal(view.error, 'Cannot park: the kernel is running a cell.');
});

test('request errors become one sentence each', () => {
  assert.equal(
    parkErrorText('park', new ApiError(409, 'the kernel is running a cell')),
    'Cannot park: the kernel is running a cell.'
  );
  assert.equal(
    parkErrorText('resume', new ApiError(409, "GPU 0 is taken by bob's kernel (train.ipynb).")),
    "Cannot resume: GPU 0 is taken by bob's kernel (train.ipynb)."
  );
  assert.equal(
    parkErrorText('resume', new ApiError(503, 'The restore failed: cuda-checkpoint exited 1; restart the kernel')),
    'Resuming failed: the restore failed: cuda-checkpoint exited 1; restart the kernel.'
  );
  assert.equal(parkErrorText('park', new ApiError(404, 'kernel k-1 not found')), 'This kernel is no longer running.');
  assert.equal(parkErrorText('park', new ApiError(0, 'TypeError: Failed to fetch')), 'The server cannot be reached.');
  assert.equal(
    parkErrorText('park', new ApiError(0, 'no answer within 180 s')),
    'The server gave no answer within 180 s; the row shows its latest state.'
  );
  assert.equal(parkErrorText('park', new ApiError(500, 'boom')), 'The server answered 500: boom.');
});

test('the panel lists kernels that hold GPU memory and every one that is not simply running', () => {
  const rows = parkRows(
    [
      kernelRow({ kernel_id: 'on-gpu' }),
      kernelRow({ kernel_id: 'cpu-only', gpu_memory: 0 }),
      parkedRow(NOW),
      kernelRow({ kernel_id: 'old-server', park: undefined })
    ],
    k => k.gpu_memory ?? 0
  );
  assert.deepEqual(
    rows.map(k => k.kernel_id),
    ['on-gpu', 'k-1']
  );
});

test('the status bar says GPU parked with its host memory, and the moves in words', () => {
  assert.equal(statusView(kernelRow(), 4 * GIB, NOW_MS)?.text, 'GPU 4.0 GiB');
  assert.equal(statusView(kernelRow(), 0, NOW_MS), null); // nothing on the GPU, nothing parked: hidden
  assert.equal(statusView(null, 0, NOW_MS), null);
  const parked = statusView(parkedRow(NOW), 0, NOW_MS);
  assert.equal(parked?.text, 'GPU parked · 4.6 GiB in host memory');
  assert.match(parked?.title ?? '', /parked 12 min ago \(by idle policy\)\. Running a cell resumes it\.$/);
  assert.equal(statusView(parkedRow(NOW, { state: 'resuming' }), 0, NOW_MS)?.text, 'resuming GPU…');
  assert.equal(statusView(kernelRow({}, { state: 'parking' }), 4 * GIB, NOW_MS)?.text, 'parking GPU…');
});

test('Park and Resume commands are enabled by the state of the notebook kernel', () => {
  assert.deepEqual(currentActions(kernelRow(), PARKING), {
    park: null,
    resume: "This notebook's kernel is not parked."
  });
  assert.deepEqual(currentActions(parkedRow(NOW), PARKING), { park: 'The kernel is parked.', resume: null });
  assert.equal(currentActions(null, PARKING).park, 'Open a notebook whose kernel runs on this server.');
  assert.equal(
    currentActions(kernelRow(), PARKING, { busy: 'park', error: null }).park,
    'A request for this kernel is under way.'
  );
  assert.equal(currentActions(kernelRow(), null).park, 'This server cannot park kernels.');
});

test('notices: the idle policy in minutes, the outcome of a resume', () => {
  assert.equal(
    idleParkText(PARKING),
    "This notebook's kernel was parked after 30 minutes idle: its GPU memory is in host memory; running a cell resumes it."
  );
  assert.match(idleParkText({ ...PARKING, auto_park: null }), /^This notebook's kernel was parked while it was idle:/);
  assert.equal(autoParkText(PARKING), 'Kernels idle for 30 min that hold at least 1.0 GiB are parked automatically.');
  assert.equal(autoParkText({ ...PARKING, auto_park: null }), null);
  assert.deepEqual(resumeOutcome(kernelRow()), { type: 'success', message: 'GPU state resumed; the cell runs now.' });
  assert.deepEqual(resumeOutcome(parkedRow(NOW, { state: 'failed', message: 'restore failed; restart the kernel' })), {
    type: 'error',
    message: 'Restore failed; restart the kernel.'
  });
  assert.equal(resumeOutcome(parkedRow(NOW, { state: 'resuming' })), null);
});
