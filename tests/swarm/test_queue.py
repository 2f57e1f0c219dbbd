"""The broker's cluster side on the test swarm (``broker.cluster.Cluster``, what the daemon calls with
``c.Broker.cluster = "swarm"``): a person's limits counted on every host, and the line of starts that wait.

The default cluster: manager-1 (takes CPU kernels, no GPU), gpu-1 with two fake H200s, gpu-2 with one.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from jupyter_gpuenv.broker.cluster import Cluster
from jupyter_gpuenv.broker.policy import Rule
from jupyter_gpuenv.engines.swarm.engine import SwarmEngine
from jupyter_gpuenv.errors import NoFreeGpu, NotPermitted
from swarm.cluster import kernel_request

WAIT = ("python3", "-c", "import time; time.sleep(600)")
FREE = Rule()


def kernel(user="alice", uid=1001, gpus=1):
    return kernel_request(WAIT, gpus, user, uid)


@pytest.fixture
def cluster(swarm):
    engine = SwarmEngine(swarm.manager.url, timeout=5, start_timeout=40)
    made = Cluster(engine, {"pytorch": "GPU-H200"})
    yield made

    async def clean():
        for k in await engine.kernels():
            await engine.remove(k.service_id)

    asyncio.run(clean())
    engine.close()


def test_a_persons_limits_count_their_kernels_on_every_host(cluster):
    async def scenario():
        await cluster.start(kernel(), FREE, False, print)
        await cluster.start(kernel(), FREE, False, print)
        hosts = {k.host for k in await cluster.engine.kernels()}
        assert hosts == {"gpu-1", "gpu-2"}  # one on each host
        assert await cluster.usage("alice") == (2, 2)
        with pytest.raises(NotPermitted, match="alice holds 2 GPU"):
            await cluster.start(kernel(), Rule(max_gpus=2), False, print)
        with pytest.raises(NotPermitted, match="alice already runs 2 container kernel"):
            await cluster.start(kernel(gpus=0), Rule(max_kernels=2), False, print)
        await cluster.start(kernel(user="bob", uid=1002), Rule(max_gpus=1), False, print)  # bob's own count

    asyncio.run(scenario())


def test_a_start_that_waits_is_told_its_place_and_takes_a_freed_gpu_within_a_second(cluster):
    async def scenario():
        holders = [await cluster.start(kernel(), FREE, False, print) for _ in range(3)]
        told: dict[str, list] = {"carol": [], "dave": []}
        carol = asyncio.ensure_future(
            cluster.start(kernel("carol", 1003), FREE, True, lambda line: told["carol"].append(line))
        )
        await asyncio.sleep(0.3)
        dave = asyncio.ensure_future(
            cluster.start(kernel("dave", 1004), FREE, True, lambda line: told["dave"].append(line))
        )
        await asyncio.sleep(0.5)
        assert told["carol"][-1]["queue"]["position"] == 1 and told["dave"][-1]["queue"]["position"] == 2
        with pytest.raises(NoFreeGpu, match="2 kernel\\(s\\) wait in line"):  # no jumping the line
            await cluster.start(kernel("erin", 1005), FREE, False, print)

        began = time.monotonic()
        await cluster.remove(holders[0].service_id)
        placed = await asyncio.wait_for(carol, 10)
        took = time.monotonic() - began
        print(f"the first in line ran {took:.2f} s after the release")
        assert placed.gpus == holders[0].gpus and placed.user == "carol"
        assert took < 5  # Swarm gives a removed task's GPU back in ~1.8 s; never its 14 s retry
        await asyncio.sleep(0.3)
        assert told["dave"][-1]["queue"]["position"] == 1  # dave moved up
        assert not dave.done()

        # a release through another broker (here: straight to Swarm) is seen by the queue's own look
        began = time.monotonic()
        await cluster.engine.remove(holders[1].service_id)
        placed = await asyncio.wait_for(dave, 10)
        print(f"the next ran {time.monotonic() - began:.2f} s after a release elsewhere")
        assert placed.gpus == holders[1].gpus and cluster.line.waiting == []

    asyncio.run(scenario())
