"""The administrator's view of a shared GPU host: the broker exports every user's kernels to Prometheus, from one
target, behind a token, and keeps a usage ledger that `jupyter gpuenv usage` reads.

alice opens a notebook and bob starts a kernel, each on an ``exclusive:1`` environment, through their own servers;
a real Prometheus scrapes the broker as docs/examples/prometheus-broker.yml says. The broker's NVML is replayed
(broker_fake_nvml.py); to attribute GPU memory, the test puts a real process of each kernel's container on its
GPU, and the broker finds the container from that process's cgroup, as it would on a GPU host. The pure parts
(attribution by container, the token file, the loopback rule) are tested at the end without the site.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import docker
import pytest
import requests
import yaml
from prometheus_harness import running_prometheus

from jupyter_gpuenv.broker import daemon as broker
from jupyter_gpuenv.broker import main as broker_main
from jupyter_gpuenv.broker import metrics as broker_metrics
from jupyter_gpuenv.broker.leases import RUNNING, KernelLease
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.gpus.nvml import GpuProcess, GpuSample, Snapshot
from jupyter_gpuenv.usage import metrics
from jupyter_gpuenv.usage.counter import View

from .conftest import KERNEL_LABEL, as_user, wait_until

GIB = 1024**3
NOTEBOOK = "analysis.ipynb"
EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "prometheus-broker.yml"


KERNELS_STARTED: list[float] = []  # when the module's kernels were asked for: no GPU-second can predate it


@pytest.fixture(scope="module")
def kernels(clean_site):
    """alice's notebook and bob's kernel, each with a GPU of their own: {user: kernel id}."""
    KERNELS_STARTED.append(time.monotonic())
    r = clean_site.server(
        "alice",
        "POST",
        "api/sessions",
        json={"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "gpuenv-gpu"}},
        timeout=90,
    )
    assert r.status_code == 201, (r.status_code, r.text[:500])
    started = {"alice": r.json()["kernel"]["id"]}
    r = clean_site.start_kernel("bob", "gpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    started["bob"] = r.json()["id"]
    return started


@pytest.fixture(scope="module")
def prometheus(clean_site, tmp_path_factory):
    """Prometheus scraping the broker every second with docs/examples/prometheus-broker.yml's job."""
    job = yaml.safe_load(EXAMPLE.read_text())["scrape_configs"][0]
    job["static_configs"] = [{"targets": [clean_site.metrics_url.split("/")[2]]}]
    job["authorization"]["credentials_file"] = str(clean_site.metrics_token)
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [job]) as running:
        wait_until(lambda: query(running, 'up{job="gpuenv-broker"} == 1'), 60, "the broker's target up")
        yield running


def query(prometheus, expr: str) -> list:
    assert prometheus["proc"].poll() is None, prometheus["log"].read_text()
    try:
        r = requests.get(f"{prometheus['url']}/api/v1/query", params={"query": expr}, timeout=10)
    except requests.ConnectionError:
        return []  # not listening yet
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def by_user(results: list) -> dict[str, dict]:
    return {r["metric"]["user"]: r for r in results}


def container_pid(kernel_id: str) -> tuple[str, int]:
    """The kernel's container id and the host pid of its first process (in the container's cgroup)."""
    client = docker.from_env(timeout=30)
    (found,) = client.api.containers(filters={"label": f"{KERNEL_LABEL}={kernel_id}"})
    return found["Id"], client.api.inspect_container(found["Id"])["State"]["Pid"]


def test_prometheus_sees_every_users_kernels_from_one_target(clean_site, kernels, prometheus):
    site = clean_site
    held = wait_until(
        lambda: len(r := query(prometheus, 'jupyter_gpuenv_kernel_gpus{job="gpuenv-broker"}')) == 2 and r,
        30,
        "alice's and bob's kernels in Prometheus",
    )
    rows = by_user(held)
    assert set(rows) == {"alice", "bob"}
    for user, row in rows.items():
        labels = row["metric"]
        assert labels["kernel_id"] == kernels[user] and labels["environment"] == "gpu", labels
        assert labels["container"] == container_pid(kernels[user])[0][:12]
        assert float(row["value"][1]) == 1  # one GPU each
    # the notebook is the session's file, as the server named it for the kernel; bob's kernel has none
    assert rows["alice"]["metric"]["notebook"] == os.path.join(site.users["alice"].home, NOTEBOOK)
    assert "notebook" not in rows["bob"]["metric"]  # an empty label is no label
    gpus = query(prometheus, 'jupyter_gpuenv_gpu_memory_total_bytes{job="gpuenv-broker"}')
    assert sorted(g["metric"]["gpu"] for g in gpus) == ["0", "1"]

    # GPU-seconds grow with the time a GPU is held, and never beyond it: one GPU each, so at most the seconds since
    # the kernels were started. (Samples come in bursts on a loaded machine, each counting the time since the last:
    # how evenly is for bench/, not a test.)
    selector = 'jupyter_gpuenv_gpu_seconds_total{job="gpuenv-broker", user="%s"}'

    def seconds(user: str) -> float:
        return float((query(prometheus, selector % user) or [{"value": [0, 0]}])[0]["value"][1])

    wait_until(lambda: query(prometheus, selector % "alice"), 30, "GPU-seconds")
    first = {user: seconds(user) for user in ("alice", "bob")}
    wait_until(lambda: seconds("alice") >= first["alice"] + 3, 30, "alice's GPU-seconds to grow by 3")
    wait_until(lambda: seconds("bob") >= first["bob"] + 3, 30, "bob's GPU-seconds to grow by 3")
    for user in ("alice", "bob"):
        since_start = time.monotonic() - KERNELS_STARTED[0]
        assert seconds(user) <= since_start, (user, seconds(user), since_start)


def test_gpu_memory_is_counted_for_the_kernel_whose_container_holds_it(clean_site, kernels, prometheus):
    """A process of each kernel's container on its GPU, as NVML would list it: the broker names its kernel."""
    site = clean_site
    gpus = {user: site.gpuenv_kernels(user)[0]["gpus"][0] for user in kernels}
    placed = {
        str(gpus["alice"]): [{"pid": container_pid(kernels["alice"])[1], "usedGpuMemory": GIB}],
        str(gpus["bob"]): [{"pid": container_pid(kernels["bob"])[1], "usedGpuMemory": 2 * GIB}],
    }
    staging = site.gpu_processes.with_suffix(".new")
    staging.write_text(json.dumps(placed))
    staging.replace(site.gpu_processes)
    try:
        expected = {"alice": GIB, "bob": 2 * GIB}
        wait_until(
            lambda: (
                {
                    u: float(r["value"][1])
                    for u, r in by_user(query(prometheus, "jupyter_gpuenv_kernel_gpu_memory_bytes")).items()
                }
                == expected
            ),
            30,
            "each kernel's GPU memory",
        )
        per_gpu = query(prometheus, "jupyter_gpuenv_gpu_kernel_memory_bytes")
        assert {(r["metric"]["user"], r["metric"]["gpu"], float(r["value"][1])) for r in per_gpu} == {
            ("alice", str(gpus["alice"]), GIB),
            ("bob", str(gpus["bob"]), 2 * GIB),
        }
    finally:
        site.gpu_processes.unlink()


def test_the_endpoint_needs_the_token_only_root_can_read(clean_site, prometheus):
    site = clean_site
    token_file = site.metrics_token
    info = token_file.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)
    token = token_file.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"token {token}"}):
        r = requests.get(site.metrics_url, headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.status_code)
        assert "Authorization: Bearer" in r.text and "jupyter_gpuenv_kernel_gpus" not in r.text
    r = requests.get(site.metrics_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and "jupyter_gpuenv_kernel_gpus{" in r.text
    assert as_user("alice", ["cat", str(token_file)]).returncode != 0  # a user cannot read it


def test_the_admin_reads_gpu_hours_per_user_from_the_brokers_ledger(clean_site, kernels):
    folder = str(clean_site.usage_dir)
    command = [sys.executable, "-m", "jupyter_gpuenv.cli.main", "usage", "--dir", folder, "--json"]

    def per_user():
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = {r["user"]: r["gpu_seconds"] for r in json.loads(done.stdout)["usage"]}
        return rows if rows.get("alice", 0) > 1 and rows.get("bob", 0) > 1 else None

    wait_until(per_user, 30, "alice's and bob's GPU-seconds in the broker's ledger")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    denied = as_user("alice", [sys.executable, "-m", "jupyter_gpuenv.cli.main", "usage", "--dir", folder])
    assert denied.returncode == 1 and "cannot read the ledger" in denied.stderr, denied.stderr


def test_a_kernel_shut_down_leaves_prometheus_with_nothing_of_it(clean_site, kernels, prometheus):
    clean_site.shutdown_kernel("alice", kernels["alice"])
    wait_until(lambda: not query(prometheus, f'{{kernel_id="{kernels["alice"]}"}}'), 30, "alice's series gone")
    assert [r["metric"]["user"] for r in query(prometheus, "jupyter_gpuenv_kernel_gpus")] == ["bob"]


# -- the pure parts ----------------------------------------------------------------------------------------------
def lease(kernel_id: str, user: str, container: str, gpus: list[str], **more) -> KernelLease:
    return KernelLease(kernel_id, 1000, user, "pytorch", "/run/x", RUNNING, container, gpus, **more)


def test_gpu_memory_is_attributed_by_the_container_in_a_process_cgroup():
    alice, bob = "a" * 64, "b" * 64
    leases = [
        lease("k-alice", "alice", alice, ["GPU-0"], notebook="/home/alice/train.ipynb"),
        lease("k-bob", "bob", bob, ["GPU-1"]),
        lease("k-starting", "carol", "", []),  # its start is under way: nothing yet
    ]
    snapshot = Snapshot(
        available=True,
        sampled_at=10.0,
        gpus=[
            GpuSample(0, "GPU-0", processes=[GpuProcess(11, GIB, "compute"), GpuProcess(12, GIB, "compute")]),
            GpuSample(1, "GPU-1", processes=[GpuProcess(21, 3 * GIB, "compute"), GpuProcess(99, GIB, "compute")]),
        ],
    )
    cgroups = {
        11: f"0::/system.slice/docker-{alice}.scope\n",
        12: f"0::/system.slice/docker-{alice}.scope\n",
        21: f"0::/docker/{bob}\n",
        99: "0::/user.slice/user-1001.slice/session-3.scope\n",  # on the host: nobody's kernel
    }
    broker_metrics.attribute(snapshot, leases, cgroup_of=lambda pid: cgroups.get(pid, ""))
    usages = {u.user: u for u in broker_metrics.kernel_usages(leases, snapshot)}
    assert set(usages) == {"alice", "bob"}
    assert (usages["alice"].gpu_memory, usages["alice"].gpus, usages["alice"].container) == (2 * GIB, (0,), alice[:12])
    assert (usages["bob"].gpu_memory, usages["bob"].gpus) == (3 * GIB, (1,))
    assert usages["alice"].notebook == "/home/alice/train.ipynb" and not usages["bob"].parked

    series = {
        (f.name, s.labels.get("user"), s.labels.get("gpu")): s.value
        for f in metrics.families(View(snapshot, list(usages.values()), []))
        for s in f.samples
    }
    assert series[("jupyter_gpuenv_gpu_kernel_memory_bytes", "alice", "0")] == 2 * GIB
    assert series[("jupyter_gpuenv_gpu_kernel_memory_bytes", "bob", "1")] == 3 * GIB
    assert ("jupyter_gpuenv_gpu_kernel_memory_bytes", None, "1") not in series  # the host's process is nobody's

    # NVML silent: the GPUs are still held (counted), the memory is unknown
    blind = broker_metrics.kernel_usages(leases, Snapshot(available=False))
    assert [(u.held_gpus, u.gpu_memory) for u in blind] == [(1, None), (1, None)]
    # a lease park/resume says is parked (however it records that): it holds no GPU meanwhile
    parked = types.SimpleNamespace(**{**vars(lease("k-parked", "alice", alice, ["GPU-0"])), "parked": True})
    (usage,) = broker_metrics.kernel_usages([parked], snapshot)
    assert usage.parked and usage.held_gpus == 0


def test_the_token_file_is_made_private_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "broker" / "metrics.token"
    token = broker_metrics.read_or_make_token(str(path))
    assert len(token) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert broker_metrics.read_or_make_token(str(path)) == token  # kept across restarts
    path.chmod(0o644)
    with pytest.raises(SystemExit, match="chmod 0600"):
        broker_metrics.read_or_make_token(str(path))


def test_a_public_metrics_address_is_refused_unless_the_admin_says_so(tmp_path, caplog):
    config = tmp_path / "broker_config.py"
    config.write_text(f'c.Broker.socket = "{tmp_path}/broker.sock"\nc.Broker.metrics_address = "0.0.0.0"\n')
    with caplog.at_level(logging.ERROR, logger="jupyter_gpuenv.broker.daemon"):
        assert broker_main.main(str(config)) == 2
    assert "is not a loopback address" in caplog.text and "metrics_public = True" in caplog.text
    allowed = Broker(socket=f"{tmp_path}/broker.sock", metrics_address="0.0.0.0", metrics_public=True)
    broker.BrokerDaemon(allowed)  # the administrator said so: no refusal
    for address in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert broker_metrics.is_loopback(address), address
    for address in ("0.0.0.0", "::", "10.0.0.5", "gpu-host.example.org"):
        assert not broker_metrics.is_loopback(address), address


def test_time_is_counted_per_kernel_between_two_ticks():
    """The broker's counter is the server's meter: each tick adds the time since the last sample per GPU held."""
    sampler = type("Sampler", (), {"interval": 1.0, "latest": Snapshot(available=False)})()
    leases = [lease("k-alice", "alice", "a" * 64, ["GPU-0", "GPU-1"])]
    counter = broker_metrics.BrokerUsage(book=leases, sampler=sampler)

    async def ticks():
        for at in (100.0, 102.5):
            sampler.latest = Snapshot(
                available=True, sampled_at=at, gpus=[GpuSample(0, "GPU-0"), GpuSample(1, "GPU-1")]
            )
            await counter.tick()

    asyncio.run(ticks())
    (totals,) = counter.view.totals
    assert (totals.labels.user, totals.gpu_seconds) == ("alice", 5.0)
