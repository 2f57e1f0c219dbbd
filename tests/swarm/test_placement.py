"""Kernels placed by a real Swarm (tests/swarm/cluster.py): what a person relies on across hosts.

The default cluster: manager-1 (takes CPU kernels, no GPU), gpu-1 with two fake H200s, gpu-2 with one.
"""

import contextlib
import json
import time

import docker
import pytest
from conftest import wait_until

from jupyter_gpuenv.engines.swarm import placements as p
from jupyter_gpuenv.engines.swarm import service as s
from swarm.cluster import NodeSpec, fake_uuid, kernel_request

IMAGE = "gpuenv-test-kernel:latest"
# What the "kernel" reports about its world, then waits: its links, who it is, the GPUs Swarm gave it.
REPORT = (
    "import json, os, time; print('REPORT', json.dumps({'links': sorted(os.listdir('/sys/class/net')),"
    " 'ids': [os.getuid(), os.getgid()], 'gpus': {k: v for k, v in os.environ.items()"
    " if k.startswith('DOCKER_RESOURCE_')}}), flush=True); time.sleep(600)"
)


def kernel(gpus=1, user="alice", uid=1001):
    return kernel_request(("python3", "-c", REPORT), gpus, user, uid)


@pytest.fixture
def kernels(swarm):
    """Start kernels as services on the session's swarm; every one is removed after the test."""
    api = swarm.manager.client().api
    started = []

    def start(request):
        started.append(api.create_service(**s.create_service_kwargs(s.service_spec(request)))["ID"])
        return request

    yield start
    for sid in started:
        with contextlib.suppress(docker.errors.NotFound):  # the test removed it
            api.remove_service(sid)
    wait_until(lambda: not any(x.holds_gpus for x in placements(swarm)[1].values()), 20, "the test's GPUs freed")


def placements(cluster):
    api = cluster.manager.client().api
    nodes = p.read_nodes(api.nodes())
    services = api.services(filters={"label": s.KERNEL})
    return nodes, {x.kernel_id: x for x in p.read_placements(services, api.tasks(), nodes)}


def placed(cluster, request, state="running", timeout=30, reason=""):
    return wait_until(
        lambda: (x := placements(cluster)[1].get(request.kernel_id)) and x.state == state and reason in x.reason and x,
        timeout,
        f"kernel {request.kernel_id[:8]} {state} {reason}",
    )


def report(cluster, placement):
    """What the task printed, read through the manager (the node's engine is not the caller's to ask)."""
    api = cluster.manager.client().api

    def line():
        logs = b"".join(api.service_logs(placement.service_id, stdout=True, follow=False)).decode()
        return next((x for x in logs.splitlines() if x.startswith("REPORT ")), None)

    return json.loads(wait_until(line, 20, "the kernel's report")[len("REPORT ") :])


def test_gpu_kernels_get_distinct_gpus_on_any_host_and_one_too_many_waits_with_a_sentence(swarm, kernels):
    first, second = kernels(kernel()), kernels(kernel(user="bob", uid=1002))
    a, b = placed(swarm, first), placed(swarm, second)
    assert a.host != b.host and {a.host, b.host} == {"gpu-1", "gpu-2"}  # Swarm spreads over the GPU hosts
    third = placed(swarm, kernels(kernel()))
    held = [x.gpus for x in (a, b, third)]
    assert all(len(g) == 1 for g in held)
    assert {g[0] for g in held} == {fake_uuid(1, 0), fake_uuid(1, 1), fake_uuid(2, 0)}  # each GPU once

    # the task sees exactly what Swarm recorded for it, under the kind's name
    seen = report(swarm, a)
    assert seen["gpus"] == {"DOCKER_RESOURCE_GPU-H200": a.gpus[0]}
    assert seen["links"] == ["lo"] and seen["ids"] == [1001, 1001]

    fourth = kernels(kernel(user="carol", uid=1003))
    # Swarm first says "pending task scheduling", then why
    waiting = placed(swarm, fourth, state="pending", reason="insufficient resources")
    assert waiting.gpus == () and waiting.host == ""
    nodes, now = placements(swarm)
    sentence = p.no_room("GPU-H200", 1, nodes, now.values())
    assert "gpu-1: 0 of 2 free, held by" in sentence and "gpu-2: 0 of 1 free, held by" in sentence
    assert "alice" in sentence and "bob" in sentence


def test_removing_a_kernel_frees_its_gpu_at_once_and_swarm_places_a_waiting_one(swarm, kernels):
    holders = [kernels(kernel()) for _ in range(3)]
    for h in holders:
        placed(swarm, h)
    waiting = kernels(kernel(user="carol", uid=1003))
    placed(swarm, waiting, state="pending")
    freed = placements(swarm)[1][holders[0].kernel_id].gpus

    api = swarm.manager.client().api
    began = time.monotonic()
    api.remove_service(s.service_name(holders[0].kernel_id))
    assert holders[0].kernel_id not in placements(swarm)[1]  # the lease is gone with the service
    got = placed(swarm, waiting, timeout=40)
    print(f"a waiting kernel placed {time.monotonic() - began:.1f} s after a GPU was freed")
    assert got.gpus == freed


def test_a_cpu_kernel_lands_on_a_host_labelled_for_cpu_kernels(swarm, kernels):
    cpu = placed(swarm, kernels(kernel(gpus=0)))
    assert cpu.host == "manager-1" and cpu.gpus == ()
    seen = report(swarm, cpu)
    assert seen["gpus"] == {} and seen["links"] == ["lo"]


@pytest.mark.parametrize("heartbeat_s", [1.0], ids=["heartbeat-1s"])  # the default (5 s) takes 15 s
def test_a_dead_worker_is_reported_with_its_host_named_and_its_gpu_freed(make_cluster, heartbeat_s):
    cluster = make_cluster(
        [NodeSpec("manager-1", manager=True), NodeSpec("gpu-2", gpus=(("GPU-H200", fake_uuid(2, 0)),))],
        heartbeat_s=heartbeat_s,
    )
    api = cluster.manager.client().api
    request = kernel()
    api.create_service(**s.create_service_kwargs(s.service_spec(request)))
    placed(cluster, request)

    began = time.monotonic()
    cluster.node("gpu-2").kill_engine()
    nodes, _ = wait_until(
        lambda: (r := placements(cluster)) and not next(n for n in r[0] if n.hostname == "gpu-2").up and r,
        60,
        "the manager sees gpu-2 down",
    )
    down_after = time.monotonic() - began
    # Swarm rejects the lost task right after it marks the node down (a moment later on a loaded machine): then its
    # GPU is free and nothing is left pending
    _, now = wait_until(
        lambda: (r := placements(cluster)) and not r[1][request.kernel_id].holds_gpus and r,
        30,
        "Swarm to give up the lost task's GPU",
    )
    lost = p.dead_hosts(now.values(), nodes)
    print(f"gpu-2 seen down after {down_after:.1f} s; Swarm says its task is {now[request.kernel_id].state!r}")
    assert lost == {
        request.kernel_id: "host gpu-2 stopped answering: the kernel there is lost; restart it to run elsewhere"
    }
