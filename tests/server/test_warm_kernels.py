"""Warm kernels on one person's machine: started ahead, taken by a start, refilled, replaced, gone at the stop.

Real Docker engine, real kernels in the test image (no GPU: the environment asks for none).
"""

import json
import os
import shutil
import tempfile

import docker
import pytest
from container_harness import IMAGE, execute, install_spec, provisioner, start, until

from jupyter_gpuenv.containers.labels import KERNEL, SERVER_PID

WARM = {"image": IMAGE, "gpus": "none"}
GPU = {"image": IMAGE, "gpus": "1", "gpu_mode": "none"}  # one GPU, shared; NVML replayed (fake_nvml)
EXCL = {"image": IMAGE, "gpus": "exclusive:1", "gpu_mode": "none"}
GIB = 1 << 30


@pytest.fixture
def fake_nvml(monkeypatch):
    """Two H100s replayed, with GPU uuids of this test's own: kernels of other tests on the same engine (and user)
    hold the recordings' uuids, and holdings count every kernel of the user."""
    import uuid

    import fake_pynvml

    from jupyter_gpuenv.gpus import nvml

    recording = fake_pynvml.load("h100x2")
    for device in recording["devices"]:
        device["nvmlDeviceGetUUID"] = f"GPU-{uuid.uuid4()}"
    fake = fake_pynvml.FakePynvml(recording)
    monkeypatch.setattr(nvml, "load_pynvml", lambda: fake)
    return fake


@pytest.fixture
def warm_envs():
    """How many warm kernels of which environment (a test parametrizes it)."""
    return {"warm": 1}


@pytest.fixture
def jp_server_config(jp_server_config, warm_envs):
    socket_root = tempfile.mkdtemp(prefix="gw")  # short: unix socket paths stay under ~100 bytes
    yield {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {
            "socket_root": socket_root,
            "sample_interval": 0.05,
            "environments": {"warm": dict(WARM), "gpu": dict(GPU), "excl": dict(EXCL), "other": dict(EXCL)},
            "warm_kernels": warm_envs,
            "warm_imports": {"warm": ["json"]},
        },
    }
    shutil.rmtree(socket_root, ignore_errors=True)


@pytest.fixture
def warm(jp_serverapp, docker_client):
    pool = next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_gpuenv"])).warm
    yield pool
    for c in _warm_containers(docker_client):  # what a failed test left
        c.remove(force=True)


def _warm_containers(client):
    while True:  # the SDK inspects each listed container: one removed meanwhile (the pool at work) is listed again
        try:
            ours = client.containers.list(all=True, filters={"label": f"{SERVER_PID}={os.getpid()}"})
        except docker.errors.NotFound:
            continue
        return [c for c in ours if c.labels.get(KERNEL, "").startswith("warm-")]


def _ready(pool, name="warm"):
    return [w for w in pool.pools.get(name, []) if w.ready]


async def test_a_start_takes_the_warm_kernel_and_the_pool_refills(warm, jp_fetch, jp_serverapp, jp_data_dir):
    spec = install_spec(jp_data_dir, "warm", {})
    (ready,) = await until(lambda: _ready(warm), 60, what="a warm kernel ready")
    rows = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    assert rows == []  # a warm container is no one's kernel (nor counted in the metrics, which read the same)
    envs = json.loads((await jp_fetch("gpuenv", "api", "environments")).body)["environments"]
    assert {e["name"]: e["warm"] for e in envs} == {"warm": 1, "gpu": 0, "excl": 0, "other": 0}  # the panel's mark
    kernel_id = await start(jp_fetch, spec)
    assert provisioner(jp_serverapp, kernel_id).placement.container_id == ready.placement.container_id
    rows = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    row = next(r for r in rows if r["kernel_id"] == kernel_id)  # bound to the kernel id now, not to its warm name
    assert row["container_id"] == ready.placement.container_id and row["environment"] == "warm"
    out, error = await execute(jp_serverapp, kernel_id, "import os, sys; print(os.getcwd(), 'json' in sys.modules)")
    assert error is None and out.split() == [os.path.abspath(jp_serverapp.root_dir), "True"]
    (again,) = await until(lambda: _ready(warm), 60, what="the pool refilled")
    assert again.placement.container_id != ready.placement.container_id

    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    assert {c.id for c in _warm_containers(warm.engine._client())} == {again.placement.container_id}


async def test_a_changed_environment_is_replaced_and_the_stop_leaves_no_warm_container(warm, docker_client):
    (old,) = await until(lambda: _ready(warm), 60, what="a warm kernel ready")
    warm.settings.environments = {"warm": {**WARM, "shm_size": "1g"}}
    warm.refill_soon()
    (new,) = await until(
        lambda: [w for w in _ready(warm) if w is not old], 60, what="the warm kernel of the new definition"
    )
    assert docker_client.containers.get(new.placement.container_id).attrs["HostConfig"]["ShmSize"] == 1 << 30
    assert {c.id for c in _warm_containers(docker_client)} == {new.placement.container_id}
    await warm.stop()
    assert _warm_containers(docker_client) == [] and not os.path.exists(new.folder)


async def test_a_warm_kernel_that_died_is_not_handed_over_the_start_is_cold(
    warm, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    spec = install_spec(jp_data_dir, "warm", {})
    (ready,) = await until(lambda: _ready(warm), 60, what="a warm kernel ready")
    docker_client.containers.get(ready.placement.container_id).kill()  # it reads no order any more
    kernel_id = await start(jp_fetch, spec)
    placement = provisioner(jp_serverapp, kernel_id).placement
    assert placement.container_id != ready.placement.container_id
    out, error = await execute(jp_serverapp, kernel_id, "print(6 * 7)")
    assert (out, error) == ("42\n", None)
    assert ready.placement.container_id not in {c.id for c in docker_client.containers.list(all=True)}


@pytest.mark.parametrize("warm_envs", [{"gpu": 1}])
async def test_a_warm_kernel_on_a_gpu_is_attributed_to_the_kernel_that_took_it(
    fake_nvml, warm_envs, warm, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    spec = install_spec(jp_data_dir, "gpu", {"gpus": "1", "gpu_mode": "none"})
    (ready,) = await until(lambda: _ready(warm, "gpu"), 60, what="a warm kernel of the GPU environment ready")
    kernel_id = await start(jp_fetch, spec)
    placement = provisioner(jp_serverapp, kernel_id).placement
    assert placement.container_id == ready.placement.container_id and len(placement.gpus) == 1
    index = placement.gpus[0].index
    pid = docker_client.containers.get(placement.container_id).attrs["State"]["Pid"]
    fake_nvml.recording["devices"][index]["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": pid, "usedGpuMemory": GIB}]

    async def attributed():
        gpus = json.loads((await jp_fetch("gpuenv", "api", "gpus")).body)["gpus"]
        return [p for g in gpus if g["index"] == index for p in g["processes"] if p["kernel_id"] == kernel_id]

    (process,) = await until(attributed, 30, what="the warm-born kernel's GPU process attributed to its kernel id")
    assert process["container_id"] == placement.container_id
    rows = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    row = next(r for r in rows if r["kernel_id"] == kernel_id)
    assert row["gpus"] == [index] and row["gpu_memory"] == GIB


def _gpu(app, kernel_id):
    return provisioner(app, kernel_id).placement.gpus[0].index


@pytest.mark.parametrize("warm_envs", [{"excl": 1}])
async def test_an_exclusive_warm_kernel_holds_a_soft_claim_any_start_may_take(
    fake_nvml, warm_envs, warm, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    """Two GPUs. Warm kernels of "excl" never make a start of "other" fail with no free GPU: each start takes a GPU
    a warm kernel waits on, and the pool gives it up; a start that takes a warm kernel holds its GPU exclusively."""
    excl, other = (install_spec(jp_data_dir, name, {"gpus": "exclusive:1", "gpu_mode": "none"})
                   for name in ("excl", "other"))  # fmt: skip
    (first,) = await until(lambda: _ready(warm, "excl"), 60, what="a warm kernel on a free GPU")
    mine = await start(jp_fetch, excl)  # takes it: its GPU is now held exclusively
    assert provisioner(jp_serverapp, mine).placement.container_id == first.placement.container_id
    (second,) = await until(lambda: _ready(warm, "excl"), 60, what="the pool refilled on the other GPU")
    assert second.placement.gpus[0].index != _gpu(jp_serverapp, mine)

    theirs = await start(jp_fetch, other)  # cold: the only GPU left is the warm kernel's soft claim
    assert _gpu(jp_serverapp, theirs) == second.placement.gpus[0].index
    bound = provisioner(jp_serverapp, mine).placement.container_id  # a warm container, now the kernel "mine"
    await until(lambda: {c.id for c in _warm_containers(docker_client)} == {bound}, 30, what="the warm kernel given up")
    code = await _start_code(jp_fetch, other)
    assert code == 409  # both GPUs held by kernels now: the warm kernels never held one


async def _start_code(jp_fetch, spec):
    from tornado.httpclient import HTTPClientError

    try:
        await start(jp_fetch, spec)
    except HTTPClientError as exc:
        return exc.code
    return 201


async def test_a_warm_kernel_ends_with_its_server_and_a_taken_one_with_its_kernels_client(
    warm, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    """A server that dies drops its locks (the host's kernel closes every file it had): closing the one lock file
    does the same for one kernel. A warm kernel watches the pool's lock; once taken, the kernel's client's."""
    spec = install_spec(jp_data_dir, "warm", {})
    (first,) = await until(lambda: _ready(warm), 60, what="a warm kernel ready")
    kernel_id = await start(jp_fetch, spec)
    kernel = provisioner(jp_serverapp, kernel_id)
    assert kernel.placement.container_id == first.placement.container_id and first.lock is None
    (second,) = await until(lambda: _ready(warm), 60, what="the pool refilled")

    def running(container_id):
        try:
            return docker_client.containers.get(container_id).status == "running"
        except docker.errors.NotFound:
            return False

    second.close_lock()  # as if its server had died
    await until(lambda: not running(second.placement.container_id), 30, what="the warm kernel ended by itself")
    assert running(kernel.placement.container_id)  # the kernel's lock is its client's, not the pool's
    os.close(kernel._client_lock)
    kernel._client_lock = None
    await until(lambda: not running(kernel.placement.container_id), 30, what="the taken kernel ended by itself")
