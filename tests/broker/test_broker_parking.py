"""Park and resume on a shared host: the broker parks a user's kernel, its GPU goes to another user, and a cell
run in it meanwhile waits, and brings it back the moment that GPU is released.

alice and bob hold the two GPUs exclusively; their containers' processes are put on their GPUs in the broker's
NVML (broker_fake_nvml.py), and the broker's checkpoint API is ``fake_cuda.FakeCheckpoint``. The users, servers,
hub, broker, lease book and containers are real.
"""

from __future__ import annotations

import json

import docker
import pytest

from .conftest import KERNEL_LABEL, wait_until

GIB = 1 << 30


def container_pid(kernel_id: str) -> tuple[str, int]:
    client = docker.from_env(timeout=30)
    (found,) = client.api.containers(filters={"label": f"{KERNEL_LABEL}={kernel_id}"})
    return found["Id"], client.api.inspect_container(found["Id"])["State"]["Pid"]


def place(site, processes: dict[int, list[tuple[int, int]]]) -> None:
    """The broker's NVML lists these (pid, bytes) on these GPUs from its next sample on."""
    staging = site.gpu_processes.with_suffix(".new")
    staging.write_text(json.dumps({str(g): [{"pid": p, "usedGpuMemory": b} for p, b in procs]
                                   for g, procs in processes.items()}))  # fmt: skip
    staging.replace(site.gpu_processes)


def gpus_uuid(site, index: int) -> str:
    return next(g["uuid"] for g in site.server("alice", "GET", "gpuenv/api/gpus").json()["gpus"] if g["index"] == index)


def row(site, user: str, kernel_id: str) -> dict:
    return next(k for k in site.gpuenv_kernels(user) if k["kernel_id"] == kernel_id)


def act(site, user: str, kernel_id: str, action: str):
    return site.server(user, "POST", f"gpuenv/api/kernels/{kernel_id}/{action}", data="", timeout=60)


@pytest.fixture
def two_held(clean_site):
    """alice's and bob's exclusive kernels, each with 4 GiB on its GPU in the broker's NVML."""
    site, kernels = clean_site, {}
    for user in ("alice", "bob"):
        r = site.start_kernel(user, "gpu")
        assert r.status_code == 201, (user, r.status_code, r.text[:500])
        kernels[user] = r.json()["id"]
    gpus = {user: row(site, user, kernels[user])["gpus"][0] for user in kernels}
    place(site, {gpus[u]: [(container_pid(kernels[u])[1], 4 * GIB)] for u in kernels})
    try:
        yield site, kernels, gpus
    finally:
        site.gpu_processes.unlink(missing_ok=True)
        site.shutdown_all_kernels()


def test_a_parked_kernel_gives_its_gpu_to_another_user_and_a_cell_resumes_it(two_held):
    site, kernels, gpus = two_held
    alice = kernels["alice"]
    wait_until(lambda: row(site, "alice", alice)["park"]["can_park"], 30, "alice's kernel seen on its GPU")
    summary = site.server("alice", "GET", "gpuenv/api/kernels").json()["parking"]
    assert summary["available"] is True, summary

    r = site.start_kernel("carol", "gpu")
    assert r.status_code == 409, (r.status_code, r.text[:300])  # both GPUs held exclusively

    r = act(site, "alice", alice, "park")
    assert r.status_code == 200, r.text[:500]
    assert r.json()["park"]["state"] == "parked" and r.json()["park"]["host_memory"] == 4 * GIB
    lease = next(k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == alice)
    assert lease["gpus"] == [] and lease["park"]["state"] == "parked", lease  # the lease holds no GPU while parked

    r = site.start_kernel("carol", "gpu")  # takes the GPU alice's kernel gave back
    assert r.status_code == 201, (r.status_code, r.text[:500])
    carol = r.json()["id"]
    assert row(site, "carol", carol)["gpus"] == [gpus["alice"]]
    r = act(site, "alice", alice, "resume")
    assert r.status_code == 409 and "carol" in r.json()["message"], r.text[:300]

    assert site.execute("alice", alice, "print(6 * 7)").strip() == "42"  # the fake driver does not hold it back
    wait_until(lambda: "a cell waits" in (row(site, "alice", alice)["park"]["message"] or ""), 30, "alice's cell waits")
    site.shutdown_kernel("carol", carol)  # carol's lease is dropped: the broker resumes alice's kernel at once
    wait_until(lambda: row(site, "alice", alice)["park"]["state"] == "running", 30, "alice's kernel resumed")
    assert row(site, "alice", alice)["park"]["timeline"]["resume"]["trigger"] == "release"
    lease = next(k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == alice)
    assert lease["gpus"] == [gpus_uuid(site, gpus["alice"])] and lease["park"]["state"] == "running", lease
    r = site.start_kernel("carol", "gpu")
    assert r.status_code == 409  # it holds its GPU again


def test_a_user_who_started_another_kernel_meanwhile_resumes_only_within_the_policy(two_held):
    site, kernels, _ = two_held
    bob = kernels["bob"]
    wait_until(lambda: row(site, "bob", bob)["park"]["can_park"], 30, "bob's kernel seen on its GPU")
    assert act(site, "bob", bob, "park").status_code == 200
    r = site.start_kernel("bob", "gpu")  # his parked kernel holds no GPU: one of his 1 may be taken
    assert r.status_code == 201, r.text[:300]
    r = act(site, "bob", bob, "resume")
    assert r.status_code == 403 and "allows 1 at once" in r.json()["message"], r.text[:300]
    assert row(site, "bob", bob)["park"]["state"] == "parked"


def test_no_one_parks_or_resumes_another_users_kernel(two_held):
    site, kernels, _ = two_held
    victim, _pid = container_pid(kernels["alice"])
    for op in ("park", "resume"):
        answer = site.ask("bob", op, container_id=victim)
        assert answer.get("error", {}).get("status") == 404, (op, answer)
        answer = site.ask("bob", op, container_id=["not", "a", "string"])
        assert answer.get("error", {}).get("status") == 404, (op, answer)
    r = act(site, "bob", kernels["alice"], "park")  # bob's server does not run it
    assert r.status_code == 404, r.text[:300]
    assert row(site, "alice", kernels["alice"])["park"]["state"] == "running"
