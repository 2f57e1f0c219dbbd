"""A remote kernel and the two brokers' relays on the test swarm, for tests/swarm/test_relay.py and bench/relay.py."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from conftest import wait_until
from jupyter_client import BlockingKernelClient

from jupyter_gpuenv.broker import relay
from jupyter_gpuenv.engines.swarm import service as s
from jupyter_gpuenv.engines.swarm.engine import SwarmEngine
from swarm.netns_loop import NetnsLoop

PORT = 7491
UID = 1001
IMAGE = "gpuenv-test-kernel:latest"


def certificates(node) -> relay.NodeCertificates:
    return relay.NodeCertificates(str(node.folder / "data" / "swarm" / "certificates"))


@dataclass
class RemoteKernel:
    connection_file: str  # on host A: what the person's server reads
    local_dir: str  # the kernel's socket folder on B, for same-host comparisons
    kernel_id: str
    service_id: str
    peer: relay.Peer


def socket_folder(root: str, kernel_id: str) -> str:
    path = os.path.join(root, str(UID), kernel_id)
    os.makedirs(path)
    os.chown(path, UID, UID)
    os.chmod(path, 0o700)
    return path


def start_remote_kernel(swarm, engine: SwarmEngine, roots: dict[str, str], host: str = "gpu-1") -> RemoteKernel:
    """A real ipykernel in a task on ``host``, its socket folder there mounted where the server's is on A."""
    kernel_id = str(uuid.uuid4())
    a_dir, b_dir = socket_folder(roots["A"], kernel_id), socket_folder(roots["B"], kernel_id)
    connection = {
        "transport": "ipc",
        "ip": f"{a_dir}/k",
        **{f"{n}_port": i + 1 for i, n in enumerate(("shell", "iopub", "stdin", "control", "hb"))},
        "key": secrets.token_hex(16),
        "signature_scheme": "hmac-sha256",
        "kernel_name": "",
    }
    for folder in (a_dir, b_dir):
        Path(folder, "kernel.json").write_text(json.dumps(connection))
        os.chown(Path(folder, "kernel.json"), UID, UID)
    request = s.KernelRequest(
        kernel_id=kernel_id,
        user="alice",
        uid=UID,
        gid=UID,
        environment="pytorch",
        image=IMAGE,
        command=("python3", "-m", "ipykernel_launcher", "-f", f"{a_dir}/kernel.json"),
        gpu_kind="GPU-H200",
        gpu_count=1,
        mounts=(s.BindMount(b_dir, a_dir),),
        env={"HOME": "/tmp", "IPYTHONDIR": "/tmp/ipython"},
    )
    placed = asyncio.run(engine.start_kernel(request, node=host))
    # the task runs before the kernel has bound its channels; a client without a KernelManager gives up on a
    # kernel whose heartbeat does not answer yet
    wait_until(lambda: len([f for f in os.listdir(b_dir) if f.startswith("k-")]) == 5, 60, "the kernel's sockets")
    node = swarm.node(host)
    peer = relay.Peer(node.client().info()["Swarm"]["NodeID"], node.address, PORT)
    return RemoteKernel(f"{a_dir}/kernel.json", b_dir, kernel_id, placed.service_id, peer)


async def relay_server(certs, root, address):
    server = relay.RelayServer(certs, root)
    await server.start(address, PORT)
    return server


def listen(a: NetnsLoop, swarm, kernel: RemoteKernel, opened: list) -> None:
    async def make():
        listeners = relay.Listeners(certificates(swarm.node("manager-1")), kernel.peer, UID, kernel.kernel_id)
        await listeners.open(relay.channel_paths(json.loads(Path(kernel.connection_file).read_text())))
        return listeners

    opened.append(a.run(make()))


def execute(connection_file: str, code: str, timeout: float = 60) -> str:
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=timeout)
        out: list[str] = []
        reply = client.execute_interactive(
            code,
            timeout=timeout,
            output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(out)
    finally:
        client.stop_channels()
