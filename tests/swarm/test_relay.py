"""Kernel channels relayed broker ⇄ broker (``broker.relay``) on the test swarm: a real kernel in a task on gpu-1,
a jupyter_client on manager-1's side running code through the relay, and a peer without a swarm certificate
turned away.

Each broker's relay runs on a loop inside its node's network namespace (``netns_loop``), so the TLS hop really
goes from one node's address to the other's over the cluster's bridge.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import tempfile

import pytest

from jupyter_gpuenv.broker import relay
from jupyter_gpuenv.engines.swarm.engine import SwarmEngine
from swarm.netns_loop import NetnsLoop
from swarm.relay_harness import PORT, UID, certificates, execute, listen, relay_server, start_remote_kernel


@pytest.fixture
def relays(swarm):
    """Broker A's side on manager-1 and broker B's relay server on gpu-1, each in its node's namespace; the
    socket trees of both under one short root-only folder (unix socket paths are short)."""
    top = tempfile.mkdtemp(prefix="r-", dir="/tmp")
    os.chmod(top, 0o711)
    roots = {side: os.path.join(top, side) for side in "AB"}
    for root in roots.values():
        os.makedirs(root, mode=0o711)
    a, b = NetnsLoop(swarm.node("manager-1").netns), NetnsLoop(swarm.node("gpu-1").netns)
    server = b.run(relay_server(certificates(swarm.node("gpu-1")), roots["B"], swarm.node("gpu-1").address))
    engine = SwarmEngine(swarm.manager.url, timeout=5, start_timeout=40)
    opened: list[relay.Listeners] = []
    try:
        yield a, b, server, roots, engine, opened
    finally:
        for listeners in opened:
            a.run(listeners.close())
        b.run(server.close())
        a.close()
        b.close()
        for k in asyncio.run(engine.kernels()):
            asyncio.run(engine.remove(k.service_id))
        engine.close()
        shutil.rmtree(top, ignore_errors=True)


async def _server(certs, root, address):
    server = relay.RelayServer(certs, root)
    await server.start(address, PORT)
    return server


def test_a_kernel_on_another_host_runs_code_through_the_brokers_relay(swarm, relays):
    a, _, server, roots, engine, opened = relays
    kernel = start_remote_kernel(swarm, engine, roots)
    listen(a, swarm, kernel, opened)
    code = "import json, os, socket; print(json.dumps([socket.gethostname(), sorted(os.listdir('/sys/class/net'))]))"
    seen = json.loads(execute(kernel.connection_file, code))
    assert seen[1] == ["lo"]  # the kernel has no network
    assert swarm.node("gpu-1").client().containers.get(seen[0])  # its container is the other host's
    assert server.refused == []


def test_a_peer_without_the_swarms_certificate_is_turned_away(swarm, relays, tmp_path):
    a, _, server, roots, engine, _ = relays
    kernel = start_remote_kernel(swarm, engine, roots)
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{stranger}.key", "-out", f"{stranger}.crt", "-days", "1",
         "-subj", f"/O=elsewhere/OU=swarm-manager/CN={kernel.peer.node_id}"],
        check=True, capture_output=True,
    )  # fmt: skip

    async def knock(who: str) -> bytes:
        """Ask broker B for the kernel's shell socket, presenting ``who``'s certificate; its first answer line."""
        if who == "manager-1":  # a node of the swarm: the answer a real broker gets
            ctx = relay.context(certificates(swarm.node("manager-1")), server=False)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            if who == "stranger":
                ctx.load_cert_chain(f"{stranger}.crt", f"{stranger}.key")
        try:
            reader, writer = await asyncio.open_connection(kernel.peer.address, PORT, ssl=ctx)
            writer.write(json.dumps({"uid": UID, "kernel": kernel.kernel_id, "socket": "k-1"}).encode() + b"\n")
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            return answer
        except (ssl.SSLError, ConnectionError, OSError):
            return b""

    assert a.run(knock("manager-1")) == b'{"ok": true}\n'
    assert a.run(knock("stranger")) == b""  # a certificate of another CA (same OU and CN): the handshake fails
    assert a.run(knock("nobody")) == b""  # no certificate at all

    # the swarm's own certificate, but the wrong node: broker A will not send the kernel's channels there
    wrong = relay.Listeners(
        certificates(swarm.node("manager-1")), relay.Peer("not-this-node", kernel.peer.address, PORT), UID, "k"
    )
    with pytest.raises(PermissionError, match="not not-this-node"):
        a.run(wrong.connect("k-1"))
