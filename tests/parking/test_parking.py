"""Park and resume: the rules (pure), the driver's call sequence, and the REST API on real container kernels.

No GPU here: NVML is replayed (two H100s) and the checkpoint API is ``fake_cuda.FakeCheckpoint``, which acts on
what that NVML reports. The kernels, their containers, the allocation of GPUs and the leases are real.
tests/gpu/prove_parking.py runs the same REST calls against the real driver on a GPU machine.
"""

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time

import fake_cuda
import pytest
from container_harness import execute, install_spec, provisioner, start, start_error, until
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv.containers.allocation import Holdings
from jupyter_gpuenv.gpus.nvml import GpuSample
from jupyter_gpuenv.parking import checkpoint
from jupyter_gpuenv.parking.checkpoint import CHECKPOINTED, LOCKED, RUNNING
from jupyter_gpuenv.parking.rules import (
    BY_POLICY,
    IdlePolicy,
    KernelFacts,
    ParkBook,
    ParkRecord,
    idle_to_park,
    released_in,
    resume_blocker,
    why_not_park,
)

GIB = 1 << 30


# -- the rules -----------------------------------------------------------------------------------------------
def facts(**kw):
    base = dict(kernel_id="k", execution_state="idle", last_activity=0.0, pids=(11,), gpu_memory=4 * GIB, gpus=("A",))
    return KernelFacts(**{**base, **kw})


def test_why_a_kernel_cannot_be_parked_is_a_sentence():
    assert why_not_park(facts(), None) is None
    assert "570" in why_not_park(facts(), "parking needs display driver 570 or newer")
    assert "running a cell" in why_not_park(facts(execution_state="busy"), None)
    assert "nothing to park" in why_not_park(facts(pids=()), None)
    assert "parked already" in why_not_park(facts(parked=True), None)
    assert "restarting" in why_not_park(facts(execution_state="restarting"), None)
    assert why_not_park(facts(execution_state="starting"), None) is None  # no client has asked it anything yet


def history(*utilizations, uuid="A", start=0.0, step=60.0):
    return [{"t": start + i * step, "gpus": [{"uuid": uuid, "utilization_gpu": u}]} for i, u in enumerate(utilizations)]


def test_the_idle_policy_parks_only_idle_kernels_holding_enough_on_gpus_at_rest():
    policy = IdlePolicy(idle_minutes=10, min_gpu_memory=2 * GIB)
    now = 1200.0
    quiet = history(0, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, start=600)  # the last 10 minutes, at rest
    assert [k.kernel_id for k in idle_to_park(now, [facts()], policy, quiet, None)] == ["k"]
    assert idle_to_park(now, [facts(last_activity=700)], policy, quiet, None) == []  # idle 8.3 minutes
    assert idle_to_park(now, [facts(gpu_memory=GIB)], policy, quiet, None) == []  # holds too little
    assert idle_to_park(now, [facts(execution_state="busy")], policy, quiet, None) == []
    assert idle_to_park(now, [facts(parked=True)], policy, quiet, None) == []
    worked = history(0, 0, 0, 60, 0, start=900)  # its GPU computed 5 minutes ago (a background thread)
    assert idle_to_park(now, [facts()], policy, worked, None) == []
    other_gpu = history(0, 90, 0, uuid="B", start=900)  # another GPU's work is not this kernel's
    assert len(idle_to_park(now, [facts()], policy, other_gpu, None)) == 1
    old_work = history(99, start=100)  # before the window
    assert len(idle_to_park(now, [facts()], policy, old_work, None)) == 1
    assert idle_to_park(now, [facts()], IdlePolicy(0), quiet, None) == []  # off
    assert idle_to_park(now, [facts()], policy, quiet, "no driver") == []


def gpu(index, uuid):
    return GpuSample(index=index, uuid=uuid)


def test_a_kernel_resumes_only_when_no_one_took_its_gpu_as_its_policy_needs():
    record = ParkRecord("k", [11], ["A"], exclusive=True)
    free = Holdings()
    assert resume_blocker(record, free, [gpu(0, "A")]) is None
    shared = Holdings()
    shared.add("A", "other", exclusive=False)
    shared.names = {"other": "bob"}
    refusal = resume_blocker(record, shared, [gpu(0, "A")])  # exclusive: anyone on it is too many
    assert refusal.status == 409 and "GPU 0 held by bob" in str(refusal)
    sharing = ParkRecord("k", [11], ["A"], exclusive=False)
    assert resume_blocker(sharing, shared, [gpu(0, "A")]) is None  # sharing: others may share it
    taken = Holdings()
    taken.add("A", "other", exclusive=True)
    assert "restart this kernel" in str(resume_blocker(sharing, taken, [gpu(0, "A")]))


def test_park_books_are_private_one_per_server_and_allocation_reads_them_all(tmp_path):
    mine, other = ParkBook.of_server(str(tmp_path), 101), ParkBook.of_server(str(tmp_path), 202)
    assert mine.load() == {} and released_in(str(tmp_path)) == set()
    mine.save({"k": ParkRecord("k", [11], ["A"], container_id="c1"), "l": ParkRecord("l", [12], ["B"])})
    other.save({"m": ParkRecord("m", [13], ["B"], container_id="c2")})  # the same user's second server
    assert os.stat(tmp_path / "parked-101.json").st_mode & 0o777 == 0o600
    assert released_in(str(tmp_path)) == {"c1", "c2"}  # the local kernel "l" holds no container lease
    assert mine.load()["k"].gpus == ["A"] and set(other.load()) == {"m"}
    other.save({})  # its last kernel resumed: no file left behind
    assert not (tmp_path / "parked-202.json").exists() and released_in(str(tmp_path)) == {"c1"}


# -- the driver's call sequence -----------------------------------------------------------------------------
class Nvml:
    def __init__(self, pids):
        self.recording = {"devices": [{"nvmlDeviceGetComputeRunningProcesses": [{"pid": p, "usedGpuMemory": GIB}
                                                                                 for p in pids]}]}  # fmt: skip


def test_a_failed_checkpoint_leaves_every_process_running_as_it_was():
    me, parent = os.getpid(), os.getppid()
    driver = fake_cuda.FakeCheckpoint(Nvml([me, parent]))
    driver.fail["checkpoint"] = "CUDA_ERROR_NOT_SUPPORTED"
    outcome = checkpoint.park(driver, [me, parent])
    assert outcome.error.code == "CUDA_ERROR_NOT_SUPPORTED" and outcome.rolled_back
    assert driver.state(me) == RUNNING and driver.state(parent) == RUNNING
    assert len(driver.nvml.recording["devices"][0]["nvmlDeviceGetComputeRunningProcesses"]) == 2
    assert [c for c, _ in driver.calls] == ["lock", "lock", "checkpoint", "unlock", "unlock"]


def test_park_then_resume_moves_the_memory_off_and_back_and_a_retry_is_harmless():
    me = os.getpid()
    driver = fake_cuda.FakeCheckpoint(Nvml([me]))
    assert checkpoint.park(driver, [me]).error is None
    assert driver.state(me) == CHECKPOINTED
    assert driver.nvml.recording["devices"][0]["nvmlDeviceGetComputeRunningProcesses"] == []
    assert checkpoint.resume(driver, [me]).error is None
    assert driver.state(me) == RUNNING
    assert checkpoint.resume(driver, [me]).error is None  # running already: nothing to do
    driver.states[me] = LOCKED  # a restore that got half way (restored, not unlocked)
    assert checkpoint.resume(driver, [me]).error is None and driver.state(me) == RUNNING


def test_each_driver_call_is_timed_in_order_for_the_timeline():
    me = os.getpid()
    driver = fake_cuda.FakeCheckpoint(Nvml([me]))
    parked = checkpoint.park(driver, [me])
    assert [s[0] for s in parked.steps] == ["lock", "checkpoint"] and all(s[1] == me for s in parked.steps)
    assert parked.steps[0][2] <= parked.steps[1][2] and all(s[3] >= 0 for s in parked.steps)
    resumed = checkpoint.resume(driver, [me])
    assert [s[0] for s in resumed.steps] == ["state", "restore", "unlock"]


async def test_a_released_gpu_wakes_the_waiting_cells_once_more_for_releases_during_a_retry():
    """Releases while a retry runs are not lost: one more retry follows; with no cell waiting nothing runs."""
    from jupyter_gpuenv.broker.leases import KernelLease, LeaseBook
    from jupyter_gpuenv.parking.parker import Parker

    class Store:
        def get(self, kernel_id):
            return None

    parker = Parker(Store(), timeout=5, log=None)
    tries = []

    async def retry(inventory, trigger):
        tries.append(trigger)
        if len(tries) == 1:
            parker.released()  # a second release while the first retry runs
        await asyncio.sleep(0)

    parker.retry_waiting = retry
    parker.released()
    assert parker._release_task is None  # no cell waits: nothing to do
    parker.waiting["k"] = "a cell waits for this kernel's GPU"
    with tempfile.TemporaryDirectory() as folder:
        book = LeaseBook(os.path.join(folder, "leases.json"))
        book.release_listeners.append(parker.released)
        holder = KernelLease("other", 1001, "bob", "gpu", folder, gpus=["A"])
        book.put(holder)
        book.drop(holder)  # bob's kernel ended: its GPU is released
        await parker._release_task
    assert tries == ["release", "release"]
    parker.close()


def test_without_libcuda_parking_says_why():
    driver = checkpoint.LibCuda()
    reason = driver.unavailable()
    if reason is None:
        pytest.skip("this machine has a CUDA driver with the checkpoint API")
    assert "libcuda.so.1" in reason or "570" in reason
    with pytest.raises(checkpoint.CheckpointError):
        driver.lock(os.getpid(), 100)


# -- the REST API on real container kernels ------------------------------------------------------------------
@pytest.fixture
def recording():
    """Two H100s (recorded on one): GPU uuids of their own, so the broker tests' kernels never hold these."""
    return "h100-real"


@pytest.fixture
def fake_driver(fake_nvml, monkeypatch):
    driver = fake_cuda.FakeCheckpoint(fake_nvml)
    monkeypatch.setattr(checkpoint, "load_driver", lambda: driver)
    return driver


@pytest.fixture
def jp_server_config(jp_server_config):
    socket_root = tempfile.mkdtemp(prefix="gp")  # short: unix socket paths stay under ~100 bytes; its own park book
    yield {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.05, "driver_retry_interval": 0.05, "socket_root": socket_root},
    }
    shutil.rmtree(socket_root, ignore_errors=True)


@pytest.fixture
def gpu_spec(jp_data_dir, docker_client):
    return install_spec(jp_data_dir, "gpu", {"gpus": "exclusive:1", "gpu_mode": "none"})


class Site:
    """A server with the fake driver: start GPU kernels, put their container on its GPU in NVML, park, resume."""

    def __init__(self, jp_fetch, jp_serverapp, fake_nvml, docker_client, sampler):
        self.fetch, self.app, self.nvml, self.docker, self.sampler = (
            jp_fetch,
            jp_serverapp,
            fake_nvml,
            docker_client,
            sampler,
        )

    async def gpu_kernel(self, spec, memory=4 * GIB):
        """A kernel whose container NVML shows on its GPU with ``memory`` bytes (its init process stands for it)."""
        await until(lambda: self.sampler.latest.gpus, what="the sampler reading the replayed NVML")
        kernel_id = await start(self.fetch, spec)
        placement = provisioner(self.app, kernel_id).placement
        pid = self.docker.containers.get(placement.container_id).attrs["State"]["Pid"]
        index = placement.gpus[0].index
        device = self.nvml.recording["devices"][index]
        device["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": pid, "usedGpuMemory": memory}]
        await until(lambda: self.on_gpu(kernel_id), what=f"kernel {kernel_id} attributed on GPU {index}")
        return kernel_id

    def on_gpu(self, kernel_id):
        return [g.index for g in self.sampler.latest.gpus for p in g.processes if p.kernel_id == kernel_id]

    async def rows(self):
        return json.loads((await self.fetch("gpuenv", "api", "kernels")).body)

    async def row(self, kernel_id):
        return next(r for r in (await self.rows())["kernels"] if r["kernel_id"] == kernel_id)

    async def post(self, kernel_id, action):
        response = await self.fetch("gpuenv", "api", "kernels", kernel_id, action, method="POST", body="")
        return json.loads(response.body)

    async def refused(self, kernel_id, action):
        with pytest.raises(HTTPClientError) as err:
            await self.post(kernel_id, action)
        return err.value.code, json.loads(err.value.response.body)["message"]


@pytest.fixture
def site(fake_nvml, fake_driver, jp_fetch, jp_serverapp, docker_client, gpuenv_sampler):
    return Site(jp_fetch, jp_serverapp, fake_nvml, docker_client, gpuenv_sampler)


async def test_a_parked_kernel_frees_its_gpu_for_another_exclusive_kernel_and_resumes_after_it(site, gpu_spec):
    first = await site.gpu_kernel(gpu_spec)
    second = await site.gpu_kernel(gpu_spec)  # the machine's two GPUs are both held exclusively now
    code, message = await start_error(site.fetch, gpu_spec)
    assert code == 409 and "free GPU" in message

    summary = await site.rows()
    assert summary["parking"] == {"available": True, "reason": None, "auto_park": None}
    assert (await site.row(first))["park"]["can_park"] is True
    parked = await site.post(first, "park")
    assert parked["park"]["state"] == "parked" and parked["park"]["by"] == "you"
    assert parked["park"]["host_memory"] == 4 * GIB
    await until(lambda: not site.on_gpu(first), what="the parked kernel gone from its GPU")
    freed = provisioner(site.app, first).placement.gpus[0].index
    metrics = await until(lambda: _metric(site, "jupyter_gpuenv_kernel_parked", first), what="parked in /metrics")
    assert metrics == 1.0 and await _metric(site, "jupyter_gpuenv_kernel_gpus", first) == 0.0  # holds no GPU

    third = await site.gpu_kernel(gpu_spec)  # takes the GPU the parked kernel gave back
    assert provisioner(site.app, third).placement.gpus[0].index == freed
    code, message = await site.refused(first, "resume")
    assert code == 409 and f"GPU {freed} held by kernel(s) {third[:8]}" in message
    assert (await site.row(first))["park"]["state"] == "parked"  # still parked, nothing lost

    await site.fetch("api", "kernels", third, method="DELETE")
    resumed = await site.post(first, "resume")
    assert resumed["park"]["state"] == "running"
    await until(lambda: site.on_gpu(first) == [freed], what="the resumed kernel back on its GPU")
    code, message = await start_error(site.fetch, gpu_spec)  # it holds its GPU again (and the second kernel its own)
    assert code == 409 and second


async def test_each_park_and_resume_shows_its_phases_in_order_on_the_row(site, gpu_spec):
    kernel_id = await site.gpu_kernel(gpu_spec)
    parked = (await site.post(kernel_id, "park"))["park"]["timeline"]["park"]
    assert [p["phase"] for p in parked["phases"]] == ["lock", "checkpoint", "allocation lock", "book"]
    assert parked["trigger"] == "request" and parked["host_memory"] == 4 * GIB and parked["error"] is None
    _in_order(parked)
    await until(lambda: not site.on_gpu(kernel_id), what="the parked kernel gone from its GPU")
    row = (await site.post(kernel_id, "resume"))["park"]
    resumed = row["timeline"]["resume"]
    assert [p["phase"] for p in resumed["phases"]] == [
        "allocation lock", "holdings", "state", "restore", "unlock", "book"
    ]  # fmt: skip
    assert resumed["trigger"] == "request" and resumed["error"] is None
    _in_order(resumed)
    assert row["timeline"]["park"] == parked  # the last park stays beside the last resume


def _in_order(timeline):
    """Each phase starts after the one before it ended, and all of them within the operation."""
    end = 0.0
    for phase in timeline["phases"]:
        assert phase["start"] >= end - 1e-6 and phase["seconds"] >= 0, timeline
        end = phase["start"] + phase["seconds"]
    assert end <= timeline["seconds"] + 1e-6, timeline


async def test_a_cell_waiting_for_a_taken_gpu_is_woken_by_its_release_not_by_a_round(site, gpu_spec, jp_serverapp):
    first = await site.gpu_kernel(gpu_spec)
    await site.gpu_kernel(gpu_spec)  # both GPUs held
    await site.post(first, "park")
    holder = await site.gpu_kernel(gpu_spec)  # takes the GPU the parked kernel gave back
    out, error = await execute(site.app, first, "print('ran')")  # the fake driver does not hold the cell back
    assert (out, error) == ("ran\n", None)
    row = await until(lambda: _waiting(site, first), what="the cell waiting for the kernel's GPU")
    assert row["park"]["state"] == "parked" and holder[:8] in row["park"]["message"]
    parking = next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_gpuenv"])).parking
    parking._callback.stop()  # no background round from here: only the release can resume it

    await site.fetch("api", "kernels", holder, method="DELETE")
    row = await until(lambda: _state(site, first, "running"), what="the waiting kernel resumed")
    assert row["park"]["timeline"]["resume"]["trigger"] == "release" and row["park"]["message"] is None


async def _waiting(site, kernel_id):
    row = await site.row(kernel_id)
    return row if "a cell waits" in (row["park"]["message"] or "") else None


async def test_running_a_cell_in_a_parked_kernel_resumes_it_and_the_cell_runs(site, gpu_spec):
    kernel_id = await site.gpu_kernel(gpu_spec)
    await site.post(kernel_id, "park")
    out, error = await execute(site.app, kernel_id, "print(6 * 7)")
    assert (out, error) == ("42\n", None)
    row = await until(lambda: _state(site, kernel_id, "running"), what="the kernel resumed by the cell that was run")
    assert row["park"]["host_memory"] is None and row["park"]["timeline"]["resume"]["trigger"] == "cell"


async def _metric(site, name, kernel_id):
    text = (await site.fetch("metrics")).body.decode()
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name and s.labels.get("kernel_id") == kernel_id]  # fmt: skip
    return found[0] if found and (name != "jupyter_gpuenv_kernel_parked" or found[0]) else None


async def _state(site, kernel_id, state):
    row = await site.row(kernel_id)
    return row if row["park"]["state"] == state else None


async def test_what_cannot_be_parked_or_resumed_answers_why_and_changes_nothing(site, gpu_spec, jp_data_dir):
    code, message = await site.refused("no-such-kernel", "park")
    assert code == 404 and "no kernel" in message
    cpu = await start(site.fetch, install_spec(jp_data_dir, "cpu", {}))
    code, message = await site.refused(cpu, "park")
    assert code == 409 and "holds no GPU memory" in message
    row = await site.row(cpu)
    assert row["park"]["can_park"] is False and "nothing to park" in row["park"]["reason"]

    kernel_id = await site.gpu_kernel(gpu_spec)
    code, message = await site.refused(kernel_id, "resume")
    assert code == 409 and "not parked" in message
    busy = asyncio.ensure_future(execute(site.app, kernel_id, "import time; time.sleep(3)"))
    await until(lambda: site.app.kernel_manager.get_kernel(kernel_id).execution_state == "busy", what="busy")
    code, message = await site.refused(kernel_id, "park")
    assert code == 409 and "running a cell" in message
    await busy
    assert site.on_gpu(kernel_id)  # nothing was done to it


async def test_a_failed_park_leaves_the_kernel_running_and_a_failed_restore_offers_a_restart(
    site, gpu_spec, fake_driver
):
    kernel_id = await site.gpu_kernel(gpu_spec)
    fake_driver.fail["checkpoint"] = "CUDA_ERROR_NOT_SUPPORTED"
    code, message = await site.refused(kernel_id, "park")
    assert code == 503 and "runs as it was" in message and "CUDA_ERROR_NOT_SUPPORTED" in message
    assert (await site.row(kernel_id))["park"]["state"] == "running" and site.on_gpu(kernel_id)

    await site.post(kernel_id, "park")
    fake_driver.fail["restore"] = "CUDA_ERROR_OUT_OF_MEMORY"
    code, message = await site.refused(kernel_id, "resume")
    assert code == 503 and "restart the kernel" in message
    row = await site.row(kernel_id)
    assert row["park"]["state"] == "failed" and "CUDA_ERROR_OUT_OF_MEMORY" in row["park"]["message"]

    await site.fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    await until(lambda: _state(site, kernel_id, "running"), what="the restarted kernel forgets its failed park")


async def test_a_restore_that_hangs_is_reported_within_the_time_limit(site, gpu_spec, fake_driver, jp_serverapp):
    parking = next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_gpuenv"])).parking
    parking.parker.timeout = 1.0
    kernel_id = await site.gpu_kernel(gpu_spec)
    await site.post(kernel_id, "park")
    fake_driver.hang["restore"] = threading.Event()
    try:
        started = time.monotonic()
        code, message = await site.refused(kernel_id, "resume")
        assert code == 503 and "did not restore the kernel within 1 s" in message
        assert time.monotonic() - started < 10
        assert (await site.row(kernel_id))["park"]["state"] == "failed"
    finally:
        fake_driver.hang["restore"].set()


async def test_without_the_checkpoint_api_the_panel_is_told_why(site, gpu_spec, fake_driver):
    fake_driver.reason = "the NVIDIA driver (CUDA 12.4) has no checkpoint API: parking needs display driver 570"
    kernel_id = await site.gpu_kernel(gpu_spec)
    summary = await site.rows()
    assert summary["parking"]["available"] is False and "570" in summary["parking"]["reason"]
    code, message = await site.refused(kernel_id, "park")
    assert code == 409 and "570" in message


@pytest.fixture
def idle_config(jp_server_config):
    jp_server_config["GpuEnv"].update({"park_idle_minutes": 0.02, "park_min_gpu_memory_gib": 2})
    return jp_server_config


async def test_the_idle_policy_parks_an_idle_kernel_holding_enough(idle_config, site, gpu_spec):
    big = await site.gpu_kernel(gpu_spec, memory=4 * GIB)
    small = await site.gpu_kernel(gpu_spec, memory=GIB)
    row = await until(lambda: _state(site, big, "parked"), what="the idle kernel parked by the policy")
    assert row["park"]["by"] == BY_POLICY and "running a cell resumes it" in row["park"]["message"]
    assert (await site.rows())["parking"]["auto_park"] == {"idle_minutes": 0.02, "min_gpu_memory": 2 * GIB}
    await asyncio.sleep(2)
    assert (await site.row(small))["park"]["state"] == "running"  # 1 GiB: under the policy's 2


async def test_a_local_kernel_parks_and_a_cell_resumes_it(site):
    """A plain ipykernel process (no container): the same park, the same resume by a cell."""
    kernel_id = await start(site.fetch, "python3")
    pid = provisioner(site.app, kernel_id).pid
    site.nvml.recording["devices"][1]["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": pid, "usedGpuMemory": GIB}]
    await until(lambda: site.on_gpu(kernel_id) == [1], what="the local kernel attributed on GPU 1")
    parked = await site.post(kernel_id, "park")
    assert parked["park"]["state"] == "parked" and parked["park"]["host_memory"] == GIB
    assert site.nvml.recording["devices"][1]["nvmlDeviceGetComputeRunningProcesses"] == []
    out, error = await execute(site.app, kernel_id, "print('still here')")
    assert (out, error) == ("still here\n", None)
    await until(lambda: _state(site, kernel_id, "running"), what="the local kernel resumed by its cell")
    await until(lambda: site.on_gpu(kernel_id) == [1], what="its process back on GPU 1")


def test_the_broker_follows_a_kernel_only_at_its_own_sockets():
    """The connection file is the user's: the broker (root) connects only inside the kernel's socket folder or to
    loopback, whatever the file says."""
    from jupyter_gpuenv.broker.leases import KernelLease
    from jupyter_gpuenv.broker.parking import BrokerParking

    lease = KernelLease("k", 1001, "alice", "gpu", "/run/gpuenv/sockets/1001/k1")
    own = {"transport": "ipc", "ip": "/run/gpuenv/sockets/1001/k1/k", "iopub_port": 3}
    assert BrokerParking._address(lease, own) == "ipc:///run/gpuenv/sockets/1001/k1/k-3"
    assert BrokerParking._address(lease, {"transport": "tcp", "ip": "127.0.0.1", "iopub_port": 5}) == (
        "tcp://127.0.0.1:5"
    )
    for forged in (
        {**own, "ip": "/var/run/docker"},  # another unix socket of the host
        {**own, "ip": "/run/gpuenv/sockets/1002/k2/k"},  # another user's kernel
        {"transport": "tcp", "ip": "10.0.0.8", "iopub_port": 5},
        {**own, "iopub_port": "3; rm"},
        {**own, "iopub_port": True},
    ):
        with pytest.raises(ValueError):
            BrokerParking._address(lease, forged)


async def test_a_park_that_finishes_too_late_is_undone_and_the_kernel_runs_on(
    site, gpu_spec, fake_driver, jp_serverapp
):
    parking = next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_gpuenv"])).parking
    parking.parker.timeout = 1.0
    kernel_id = await site.gpu_kernel(gpu_spec)
    fake_driver.hang["checkpoint"] = threading.Event()
    code, message = await site.refused(kernel_id, "park")
    assert code == 503 and "did not park the kernel within 1 s" in message
    assert (await site.row(kernel_id))["park"]["state"] == "running"  # no record: it never counted as parked
    fake_driver.hang.pop("checkpoint").set()  # the driver returns at last
    await until(lambda: [c for c, _ in fake_driver.calls][-1:] == ["unlock"], what="the late park undone")
    pids = {p for _, p in fake_driver.calls}
    assert all(fake_driver.state(p) == "running" for p in pids)
    await until(lambda: site.on_gpu(kernel_id), what="its process back on its GPU")


def test_a_kernel_is_not_parked_into_more_host_memory_than_it_may_take():
    room = facts(gpu_memory=4 * GIB, memory_room=3 * GIB, room_by="its container's memory limit")
    reason = why_not_park(room, None)
    assert "4.0 GiB of GPU memory" in reason and "its container's memory limit leaves room for 3.0 GiB" in reason
    assert why_not_park(facts(gpu_memory=4 * GIB, memory_room=5 * GIB, room_by="the host"), None) is None
    assert why_not_park(facts(memory_room=None), None) is None  # unknown: the driver's own answer decides


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_memory_room_is_the_hosts_or_the_containers_limit_whichever_leaves_less(tmp_path, version):
    from jupyter_gpuenv.host import memory_room

    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "42").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:   8388608 kB\n")  # 8 GiB
    if version == "v2":
        (proc / "42" / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
        folder, limit, usage = cgroups / "system.slice" / "docker-abc.scope", "memory.max", "memory.current"
    else:
        (proc / "42" / "cgroup").write_text("5:devices:/docker/abc\n4:memory:/docker/abc\n0::/\n")
        folder, limit, usage = cgroups / "memory" / "docker" / "abc", "memory.limit_in_bytes", "memory.usage_in_bytes"
    folder.mkdir(parents=True)
    (folder / limit).write_text(str(6 * GIB))
    (folder / usage).write_text(str(GIB))
    assert memory_room(42, str(proc), str(cgroups)) == (5 * GIB, "its container's memory limit")
    (folder / limit).write_text("max\n" if version == "v2" else str(1 << 62))  # no limit
    assert memory_room(42, str(proc), str(cgroups)) == (8 * GIB, "the host")
    assert memory_room(7, str(proc), str(cgroups)) == (8 * GIB, "the host")  # a process gone: the host's


async def test_a_container_kernel_with_a_small_memory_limit_is_not_parked(site, jp_data_dir):
    """Its real container's memory cgroup (64m) cannot take the 4 GiB its GPU holds: 409, and nothing is done."""
    spec = install_spec(jp_data_dir, "small", {"gpus": "exclusive:1", "gpu_mode": "none", "memory": "64m"})
    kernel_id = await site.gpu_kernel(spec)
    row = await site.row(kernel_id)
    assert row["park"]["can_park"] is False and "its container's memory limit" in row["park"]["reason"]
    code, message = await site.refused(kernel_id, "park")
    assert code == 409 and "leaves room for 0.0 GiB" in message
    assert site.on_gpu(kernel_id)
