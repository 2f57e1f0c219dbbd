"""A container kernel behaves like any kernel to every client: jupyter_client's synchronous managers (qtconsole,
nbclient's scripts, ``start_new_kernel``), signals to the kernel's children, and ending with a client that dies.

Where a behaviour is a local kernel's too, the test runs against both, the local ``python3`` kernel as the control:
a difference then comes from the provisioner. Real kernels in real containers (the image .ci/test.sh builds).
"""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading

import docker
import pytest
import requests
from conftest import wait_until
from container_harness import install_spec, our_containers
from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import MultiKernelManager

from jupyter_gpuenv.containers.labels import KERNEL as L_KERNEL
from jupyter_gpuenv.containers.labels import SERVER_PID as L_SERVER_PID

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def root(tmp_path, monkeypatch, jp_environ):
    """The client's working folder, which a container kernel sees at the same path (its root outside a server)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def container_spec(root, jp_data_dir, docker_client):
    return install_spec(jp_data_dir, "test", {})


@pytest.fixture(params=["local", "container"])
def kernel_name(request, root):
    return "python3" if request.param == "local" else request.getfixturevalue("container_spec")


def run(client, code, timeout=60):
    """Execute ``code`` over a blocking client: (stdout, error name or None)."""
    out, errors = [], []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append(msg["content"]["ename"])

    client.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out), (errors[0] if errors else None)


def container_of(km):
    placement = getattr(km.provisioner, "placement", None)
    return placement.container_id if placement else None


@pytest.fixture
def sync_kernel(container_spec):
    """A container kernel under jupyter_client's synchronous KernelManager, as qtconsole and scripts have it."""
    km = KernelManager(kernel_name=container_spec)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield km, client
    client.stop_channels()
    km.shutdown_kernel(now=True)


# -- synchronous managers restart a container kernel ---------------------------------------------------------
def test_a_synchronous_kernel_manager_restarts_a_container_kernel(sync_kernel, docker_client):
    km, client = sync_kernel
    assert run(client, "state = 'kept'") == ("", None)
    before = container_of(km)
    assert km.restart_kernel() is None  # a plain call, as for a local kernel: no coroutine left to await
    assert container_of(km) != before and [c.id for c in our_containers(docker_client, km.kernel_id)] == [
        container_of(km)
    ]
    client.wait_for_ready(timeout=60)
    assert run(client, "print('state' in dir())") == ("False\n", None)


def test_concurrent_restarts_of_a_synchronous_manager_are_serialised(sync_kernel, docker_client):
    km, client = sync_kernel
    assert run(client, "state = 'kept'") == ("", None)
    before, failures = container_of(km), []

    def restart():
        try:
            km.restart_kernel()
        except Exception as exc:  # noqa: BLE001 - what the other thread's restart made of this one
            failures.append(exc)

    threads = [threading.Thread(target=restart) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert container_of(km) != before
    assert [c.id for c in our_containers(docker_client, km.kernel_id)] == [container_of(km)]
    client.wait_for_ready(timeout=60)
    assert run(client, "print('state' in dir())") == ("False\n", None)


def test_a_synchronous_multi_kernel_manager_restarts_a_container_kernel(container_spec, docker_client):
    mkm = MultiKernelManager()
    kernel_id = mkm.start_kernel(kernel_name=container_spec)
    try:
        client = mkm.get_kernel(kernel_id).client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        assert run(client, "state = 'kept'") == ("", None)
        before = container_of(mkm.get_kernel(kernel_id))
        mkm.restart_kernel(kernel_id)
        assert container_of(mkm.get_kernel(kernel_id)) not in (None, before)
        client.wait_for_ready(timeout=60)
        assert run(client, "print('state' in dir())") == ("False\n", None)
        client.stop_channels()
    finally:
        mkm.shutdown_all(now=True)
    assert our_containers(docker_client, kernel_id) == []


# -- signals reach the kernel's children ---------------------------------------------------------------------
CHILD = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, '-c', '''
import signal, sys, time
def noted(signum, frame):
    open(sys.argv[1], "w").write(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGINT, noted)
signal.signal(signal.SIGTERM, noted)
print("ready", flush=True)
time.sleep(300)
''', {path!r}], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip())
"""


def started_child(client, path):
    assert run(client, CHILD.format(path=str(path))) == ("ready\n", None)


def test_an_interrupt_reaches_the_kernels_child_processes(kernel_name, root):
    """jupyter_client's test_signal_kernel_subprocesses, for any kernel: a local kernel's interrupt goes to its
    process group, so a launcher's or a DataLoader's workers are interrupted with the cell."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        started_child(client, root / "child-noted")
        msg_id = client.execute("import time; print('sleeping', flush=True); time.sleep(300)")
        wait_until(lambda: client.get_iopub_msg(timeout=10)["content"].get("text") == "sleeping\n", 20)
        km.interrupt_kernel()
        reply = client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
        assert wait_until(lambda: (root / "child-noted").exists() and (root / "child-noted").read_text()) == "SIGINT"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_signals_of_a_restart_or_shutdown_reach_the_kernels_child_processes(kernel_name, root):
    """A kernel that does not end when asked gets SIGTERM from its manager (``terminate``); so do its children."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        started_child(client, root / "child-noted")
        km.signal_kernel(signal.SIGTERM)
        assert wait_until(lambda: (root / "child-noted").exists() and (root / "child-noted").read_text()) == "SIGTERM"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


# -- a client that dies takes its kernels with it ------------------------------------------------------------
SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
{prelude}
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name={name!r})
km.start_kernel()
print(km.provisioner.placement.container_id, flush=True)
time.sleep(600)
"""

FAKE_NVML = """
import fake_pynvml
from jupyter_gpuenv.gpus import nvml
fake = fake_pynvml.FakePynvml(fake_pynvml.load("h100x2"))
nvml.load_pynvml = lambda: fake
"""


def client_process(name, prelude="", env=None):
    script = SCRIPT.format(tests=os.path.dirname(os.path.dirname(__file__)), prelude=prelude, name=name)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    container_id = process.stdout.readline().strip()
    assert container_id, "the client script did not start its kernel"
    return process, container_id


def gone(client, container_id):
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


def test_a_kernel_ends_with_its_synchronous_script_client(container_spec, docker_client):
    process, container_id = client_process(container_spec)
    assert docker_client.containers.get(container_id).status == "running"
    process.kill()
    process.wait()
    wait_until(lambda: gone(docker_client, container_id), 30, "the dead client's kernel container removed")


def test_the_kernel_ends_by_itself_when_its_client_and_the_clients_reaper_are_both_gone(container_spec, docker_client):
    """What a killed session or cgroup does (the reaper dies too): the kernel's own watcher ends it, which stops
    its container and so frees its GPUs; the next server's orphan sweep removes the stopped container."""
    process, container_id = client_process(container_spec)
    reapers = subprocess.run(["pgrep", "-f", f"jupyter_gpuenv.engines.reaper import main; main.* {process.pid} "],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    assert len(reapers) == 1
    os.kill(int(reapers[0]), signal.SIGKILL)
    process.kill()
    process.wait()
    try:
        wait_until(lambda: docker_client.containers.get(container_id).status == "exited", 30, "the kernel ended")
    finally:
        docker_client.containers.get(container_id).remove(force=True)


def test_an_exclusive_gpu_a_dead_client_held_can_be_taken_at_once(root, jp_data_dir, docker_client, fake_nvml):
    # CI has no GPU device to attach (gpu_mode none); the choice and its record in the engine are real
    name = install_spec(jp_data_dir, "excl", {"gpus": "exclusive:2", "gpu_mode": "none"})
    process, container_id = client_process(name, FAKE_NVML)
    process.kill()
    process.wait()
    wait_until(lambda: gone(docker_client, container_id), 30, "the dead client's kernel container removed")
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    try:
        assert len(km.provisioner.placement.gpus) == 2
    finally:
        km.shutdown_kernel(now=True)


def test_a_kernel_ends_with_its_nbclient_run(container_spec, root, docker_client):
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": "import time; time.sleep(600)",
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {"kernelspec": {"name": container_spec, "display_name": "test", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "slow.ipynb").write_text(json.dumps(notebook))
    run_it = "import nbclient, nbformat; nbclient.execute(nbformat.read('slow.ipynb', 4), timeout=600)"
    process = subprocess.Popen([sys.executable, "-c", run_it])
    try:
        mine = wait_until(  # the low-level list: another test's container may go while the SDK's list inspects it
            lambda: docker_client.api.containers(all=True, filters={"label": f"{L_SERVER_PID}={process.pid}"}),
            60,
            "nbclient's kernel started",
        )
    finally:
        process.kill()
        process.wait()
    wait_until(lambda: gone(docker_client, mine[0]["Id"]), 30, "the dead nbclient run's kernel container removed")


def test_a_client_started_from_a_notebook_kernel_keeps_its_container_kernel(container_spec, docker_client):
    """Every process a local kernel starts (papermill in a cell) has JPY_PARENT_PID in its environment; in the
    container it names no process, and ipykernel's parent poller must not take that for its client's death."""
    env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}
    process, container_id = client_process(container_spec, env=env)
    try:
        container = docker_client.containers.get(container_id)
        assert "JPY_PARENT_PID" not in "".join(container.attrs["Config"]["Env"])
        assert container.status == "running"
    finally:
        process.kill()
        process.wait()
    wait_until(lambda: gone(docker_client, container_id), 30, "the dead client's kernel container removed")


def test_a_kernel_ends_with_its_jupyter_server(container_spec, root, docker_client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",  # CI runs as root
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, headers = f"http://127.0.0.1:{port}/api", {"Authorization": f"token {token}"}

    def answers():
        with contextlib.suppress(requests.ConnectionError):
            return requests.get(f"{url}/status", headers=headers, timeout=5).ok

    try:
        wait_until(answers, 60, "the Jupyter server answers")
        started = requests.post(f"{url}/kernels", json={"name": container_spec}, headers=headers, timeout=60)
        assert started.status_code == 201, started.text
        mine = docker_client.api.containers(filters={"label": f"{L_SERVER_PID}={server.pid}"})  # and its holder
        assert [c["Labels"].get(L_KERNEL) for c in mine].count(started.json()["id"]) == 1
    finally:
        server.kill()
        server.wait()
    wait_until(lambda: all(gone(docker_client, c["Id"]) for c in mine), 30, "the dead server's containers removed")
