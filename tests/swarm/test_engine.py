"""``SwarmEngine`` on a real Swarm (tests/swarm/cluster.py): start, kernels, state, signal, remove, and the
refusal a person reads when every GPU of the cluster is held.

The default cluster: manager-1 (takes CPU kernels, no GPU), gpu-1 with two fake H200s, gpu-2 with one.
"""

import asyncio
import contextlib
import signal

import pytest

from jupyter_gpuenv.engines.swarm import service as s
from jupyter_gpuenv.engines.swarm.engine import SwarmEngine
from jupyter_gpuenv.errors import EngineRefused, NoFreeGpu
from swarm.cluster import fake_uuid, kernel_request

IMAGE = "gpuenv-test-kernel:latest"
# A stand-in kernel: ends with code 3 on SIGTERM, so a test can tell that the signal reached it
WAIT = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); time.sleep(600)"


def kernel(gpus=1, user="alice", uid=1001, command=WAIT):
    return kernel_request(("python3", "-c", command), gpus, user, uid)


@pytest.fixture
def engine(swarm):
    """A SwarmEngine on the session's manager; every kernel a test leaves is removed after it."""
    made = SwarmEngine(swarm.manager.url, timeout=5, start_timeout=40)
    yield made
    loop = asyncio.new_event_loop()
    try:
        for k in loop.run_until_complete(made.kernels()):
            with contextlib.suppress(Exception):
                loop.run_until_complete(made.remove(k.service_id))
    finally:
        loop.close()
        made.close()


def test_exclusive_gpu_kernels_land_on_both_hosts_with_distinct_gpus_and_a_fourth_is_refused(engine):
    async def scenario():
        a = await engine.start_kernel(kernel())
        b = await engine.start_kernel(kernel(user="bob", uid=1002))
        c = await engine.start_kernel(kernel())
        assert {a.host, b.host} == {"gpu-1", "gpu-2"}  # Swarm spreads over the GPU hosts
        assert {x.gpus[0] for x in (a, b, c)} == {fake_uuid(1, 0), fake_uuid(1, 1), fake_uuid(2, 0)}
        assert all(len(x.gpus) == 1 for x in (a, b, c))

        listed = {k.kernel_id: k for k in await engine.kernels()}
        assert {listed[x.kernel_id].gpus for x in (a, b, c)} == {a.gpus, b.gpus, c.gpus}  # the lease truth
        assert listed[b.kernel_id].user == "bob"

        with pytest.raises(NoFreeGpu) as refused:
            await engine.start_kernel(kernel(user="carol", uid=1003))
        sentence = str(refused.value)
        assert sentence.startswith("No host has 1 free GPU-H200 now.")
        assert "gpu-1: 0 of 2 free, held by" in sentence and "gpu-2: 0 of 1 free, held by bob" in sentence
        assert not any(k.user == "carol" for k in await engine.kernels())  # nothing left pending in Swarm

        assert (await engine.state(a.service_id)).running
        assert await engine.remove(a.service_id) is not None
        assert (await engine.state(a.service_id)).gone and await engine.remove(a.service_id) is None
        d = await engine.start_kernel(kernel(user="carol", uid=1003))  # the freed GPU, at once
        assert d.gpus == a.gpus

    asyncio.run(scenario())


def test_a_cpu_kernel_is_placed_on_the_labelled_host_and_signalled_through_its_node(engine):
    async def scenario():
        cpu = await engine.start_kernel(kernel(gpus=0))
        assert cpu.host == "manager-1" and cpu.gpus == ()
        await engine.signal(cpu.service_id, signal.SIGTERM)  # the manager's own node: its engine does it
        for _ in range(200):
            state = await engine.state(cpu.service_id)
            if not state.running:
                break
            await asyncio.sleep(0.05)
        assert state.exit_code == 3  # the kernel's own SIGTERM handler ran

        gpu = await engine.start_kernel(kernel())
        with pytest.raises(EngineRefused, match=f"runs on host {gpu.host}: only that host's broker"):
            await engine.signal(gpu.service_id, signal.SIGINT)

    asyncio.run(scenario())


def test_a_kernel_pinned_to_a_host_runs_there_or_is_refused_with_the_sentence(engine):
    async def scenario():
        pinned = await engine.start_kernel(kernel(), node="gpu-2")
        assert pinned.host == "gpu-2" and pinned.gpus == (fake_uuid(2, 0),)
        with pytest.raises(NoFreeGpu, match="gpu-2: 0 of 1 free"):
            await engine.start_kernel(kernel(), node="gpu-2")  # the other host has room; this one has none

    asyncio.run(scenario())


def test_a_task_that_cannot_start_is_refused_with_swarms_words_and_leaves_no_service(engine):
    async def scenario():
        broken = kernel(gpus=0)
        broken = s.KernelRequest(**{**broken.__dict__, "image": "gpuenv-no-such-image:1"})
        with pytest.raises(EngineRefused, match="could not start on manager-1"):
            await engine.start_kernel(broken)
        assert await engine.kernels() == []

    asyncio.run(scenario())
