"""Behind the broker, a kernel ends with its client too, and the broker gives its GPU back at once.

No hub and no servers here (the ``site`` costs minutes): one broker (``broker_fake_nvml.py --run``, two replayed
GPUs) and a synchronous script as alice, a real Unix user, whose KernelManager talks to that broker.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from conftest import wait_until

from jupyter_gpuenv.containers.labels import BROKER
from jupyter_gpuenv.engines.docker.engine import DockerEngine

from .conftest import HERE, install_kernelspecs, write_broker_config

pytestmark = pytest.mark.timeout(240)

SCRIPT = """
import sys, time
from traitlets.config import Config
from jupyter_client.manager import KernelManager
config = Config()
config.GpuEnv.broker = sys.argv[1]
km = KernelManager(kernel_name="gpuenv-gpu", config=config)
km.start_kernel()
print(km.provisioner.placement.container_id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def broker(unix_users, docker_image, tmp_path_factory):
    root = Path(f"/run/gpuenv-test-{secrets.token_hex(4)}")
    root.mkdir(mode=0o755)
    config, socket_path = root / "broker_config.py", str(root / "broker.sock")
    write_broker_config(config, socket_path)
    shared = tmp_path_factory.mktemp("broker-clients")
    shared.chmod(0o755)
    jupyter_path = install_kernelspecs(shared / "prefix")
    for folder in [shared, *shared.parents]:  # alice reads the kernelspecs
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o005)
    clients: list[int] = []  # pids of the client scripts: the namespace holder the broker made for them goes too
    process = subprocess.Popen(
        [sys.executable, str(HERE / "broker_fake_nvml.py"), "--run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: Path(socket_path).exists(), 60, "the broker listens")
        yield f"unix://{socket_path}", jupyter_path, clients
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        engine = docker.from_env(timeout=10)  # what a failed test left: this broker's containers only
        for left in engine.api.containers(all=True, filters={"label": f"{BROKER}={socket_path}"}):
            engine.api.remove_container(left["Id"], force=True)
        asyncio.run(DockerEngine(None, 15.0).remove_unused_holders(lambda h: h.server_pid in map(str, clients)))
        shutil.rmtree(root, ignore_errors=True)


def alice_client(broker, home):
    broker_url, jupyter_path, pids = broker
    client = subprocess.Popen(
        [
            "setpriv",
            "--reuid=alice",
            "--regid=alice",
            "--init-groups",
            "--reset-env",
            "env",
            f"JUPYTER_PATH={jupyter_path}",
            "sh",
            "-c",
            f'cd {home} && exec "$0" "$@"',
            sys.executable,
            "-c",
            SCRIPT,
            broker_url,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    pids.append(client.pid)
    return client


def test_a_dead_clients_kernel_and_gpu_lease_go_behind_the_broker(broker, unix_users):
    engine = docker.from_env(timeout=10)
    home = unix_users["alice"].home
    # the policy lets alice hold one GPU at once: a second kernel starts only once the first one's lease is gone
    first = alice_client(broker, home)
    clients = [first]
    try:
        container = first.stdout.readline().strip()
        assert container, "the client script did not start its kernel"
        first.kill()
        first.wait()

        def gone(container_id):
            return not engine.api.containers(all=True, filters={"id": container_id})

        wait_until(lambda: gone(container), 30, "the dead client's kernel container removed by the broker")
        second = alice_client(broker, home)
        clients.append(second)
        replacement = second.stdout.readline().strip()
        assert replacement, "the dead client's GPU lease was not given back"
    finally:
        for client in clients:
            client.kill()
            client.wait()
    wait_until(lambda: gone(replacement), 30, "the second dead client's kernel removed too")
