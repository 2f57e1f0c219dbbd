"""Kernel channels between hosts: broker ⇄ broker, over mutual TLS with the swarm's own node certificates.

A kernel keeps no network on any host: it binds its five ZMQ channels as ipc sockets in its socket folder on the
host Swarm chose (B). The person's server, on host A, connects to the same five paths in its socket folder on A,
where A's broker listens (``Listeners``). Each connection accepted there opens a TLS connection to B's broker
(``RelayServer``, on B's swarm address and ``c.Broker.relay_port``), says which socket it wants (one JSON line),
and from then on the bytes go both ways untouched: ZMTP needs nothing but a byte pipe.

Who may connect: only a node of the same swarm. Both sides present the node certificate Swarm gave their host
(``swarm-node.crt``/``.key``, signed by the swarm's root CA, ``swarm-root-ca.crt``), so there is no new CA to run;
each side checks the other's chain against that CA and its role (OU ``swarm-manager`` or ``swarm-worker``), and
the caller checks that it reached the node it meant (CN = the node id Swarm placed the task on). The files are
root's: a person on a host cannot present them. A person reaches only their own kernel's sockets on A (their
0700 socket folder); on B, only sockets inside the broker's socket tree are ever opened.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_gpuenv.containers.labels import KERNEL_ID

ROLES = ("swarm-manager", "swarm-worker")
CHUNK = 1 << 18
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
HEADER_LIMIT = 4096
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class NodeCertificates:
    """A swarm node's certificate folder (``<data-root>/swarm/certificates``)."""

    folder: str

    @property
    def certificate(self) -> str:
        return os.path.join(self.folder, "swarm-node.crt")

    @property
    def key(self) -> str:
        return os.path.join(self.folder, "swarm-node.key")

    @property
    def ca(self) -> str:
        return os.path.join(self.folder, "swarm-root-ca.crt")


def _plain_key(path: str) -> int:
    """Swarm writes PEM headers into its key file (``kek-version: 0``), which OpenSSL does not read: the key
    without them, in a memory file (``/proc/self/fd/N``: never on a disk), which the caller closes."""
    text = Path(path).read_text()
    if "ENCRYPTED" in text:
        raise ssl.SSLError(f"{path} is locked (swarm autolock): unlock the swarm before the broker starts")
    lines = [ln for ln in text.splitlines() if not re.match(r"^[A-Za-z-]+: ", ln)]
    fd = os.memfd_create("gpuenv-relay-key")
    os.write(fd, ("\n".join(lines) + "\n").encode())
    return fd


def context(certs: NodeCertificates, server: bool) -> ssl.SSLContext:
    """TLS 1.3 with this node's certificate, trusting only the swarm's root CA; the peer must show one too."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    key = _plain_key(certs.key)
    try:
        ctx.load_cert_chain(certs.certificate, f"/proc/self/fd/{key}")
    finally:
        os.close(key)
    ctx.load_verify_locations(certs.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False  # a node is known by its id (the certificate's CN), checked in peer_identity
    return ctx


def peer_identity(cert: dict[str, Any] | None) -> tuple[str, str]:
    """(node id, role) from a verified peer certificate; PermissionError when it is not a swarm node's."""
    subject = {k: v for rdn in (cert or {}).get("subject", ()) for k, v in rdn}
    node, role = subject.get("commonName", ""), subject.get("organizationalUnitName", "")
    if role not in ROLES or not node:
        raise PermissionError(f"the peer's certificate is not a swarm node's (OU {role!r})")
    return node, role


def socket_path(root: str, uid: int, kernel_id: str, name: str) -> str:
    """The kernel socket ``name`` in its socket folder under the broker's tree: ``<root>/<uid>/<kernel>/<name>``."""
    if not KERNEL_ID.fullmatch(kernel_id) or not NAME.fullmatch(name) or not 0 < uid < 1 << 31:
        raise PermissionError("not a kernel socket")
    return os.path.join(root, str(uid), kernel_id, name)


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[Any, Any]) -> None:
    """Bytes both ways until one side ends; then both are closed."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError, OSError, ssl.SSLError):
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        with suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()

    tasks = [asyncio.ensure_future(pump(a[0], b[1])), asyncio.ensure_future(pump(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a[1], b[1]):
            writer.close()


Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class RelayServer:
    """The receiving end on the kernel's host: a TLS listener on the node's swarm address.

    A connection's first line is ``{"uid", "kernel", "socket"}`` for a kernel channel, or ``{"op": NAME, ...}``
    for what only this host's broker can do for a kernel placed here (``control``: make its socket folder,
    signal it, forget it), answered with one line."""

    def __init__(self, certs: NodeCertificates, sockets_root: str, control: Control | None = None) -> None:
        self.ssl = context(certs, server=True)
        self.root, self.control = sockets_root, control
        self.refused: list[str] = []  # why connections were turned away, for the log and the tests
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.Task] = set()

    async def start(self, address: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, address, port, ssl=self.ssl)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await _end(self._open)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
            task.add_done_callback(self._open.discard)
        try:
            peer_identity(writer.get_extra_info("peercert"))
            header = json.loads(await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT))
            if "op" in header:
                await self._control(header, writer)
                return
            path = socket_path(self.root, int(header["uid"]), str(header["kernel"]), str(header["socket"]))
            kernel = await asyncio.wait_for(_kernel_socket(path), CONNECT_TIMEOUT)
        except (PermissionError, ValueError, KeyError, TypeError, OSError, asyncio.TimeoutError) as exc:
            self.refused.append(f"{type(exc).__name__}: {exc}")
            with suppress(ConnectionError, OSError):
                writer.write(json.dumps({"error": str(exc) or type(exc).__name__}).encode() + b"\n")
                await writer.drain()
            writer.close()
            return
        writer.write(b'{"ok": true}\n')
        await splice((reader, writer), kernel)

    async def _control(self, header: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            if self.control is None:
                raise PermissionError("this relay takes kernel channels only")
            answer = {"ok": True, **await self.control(header)}
        except Exception as exc:  # noqa: BLE001 - the asking broker reads the sentence; this one logs it
            self.refused.append(f"{header.get('op')}: {type(exc).__name__}: {exc}")
            answer = {"error": str(exc) or type(exc).__name__}
        with suppress(ConnectionError, OSError):
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()


async def _kernel_socket(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The kernel's socket, once it is there: a client may connect while the kernel is still starting (its task
    runs before the kernel has bound its channels), and a channel closed at once would cost it a ZMQ retry."""
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Peer:
    """Where a kernel's channels go: the node Swarm placed it on, as the relay reaches and recognises it."""

    node_id: str
    address: str
    port: int


class Listeners:
    """The five channels of one remote kernel, listened for on this host at the paths its connection file names."""

    def __init__(self, certs: NodeCertificates, peer: Peer, uid: int, kernel_id: str) -> None:
        self.ssl = context(certs, server=False)
        self.peer, self.uid, self.kernel_id = peer, uid, kernel_id
        self._servers: list[asyncio.AbstractServer] = []
        self._open: set[asyncio.Task] = set()
        self._paths: list[str] = []

    async def open(self, paths: Iterable[str], owner: tuple[int, int] | None = None) -> None:
        """Listen on ``paths`` (made the person's: only they may connect, in their 0700 folder)."""
        for path in paths:
            server = await asyncio.start_unix_server(functools.partial(self._carry, name=os.path.basename(path)), path)
            if owner is not None:
                os.chown(path, *owner)
            os.chmod(path, 0o600)
            self._servers.append(server)
            self._paths.append(path)

    async def close(self) -> None:
        """Stop listening and end the channels under way (the kernel went)."""
        for server in self._servers:
            server.close()
        for path in self._paths:
            with suppress(FileNotFoundError):
                os.unlink(path)
        await _end(self._open)

    async def connect(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A channel to the kernel socket ``name`` on the peer, through its broker."""
        reader, writer, _ = await _ask(self.ssl, self.peer, {"uid": self.uid, "kernel": self.kernel_id, "socket": name})
        return reader, writer

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
            task.add_done_callback(self._open.discard)
        try:
            remote = await self.connect(name)
        except (OSError, PermissionError, ValueError, asyncio.TimeoutError, ssl.SSLError):
            writer.close()  # ZMQ connects again by itself: a kernel not bound yet is seen on the next try
            return
        await splice((reader, writer), remote)


async def _ask(
    ctx: ssl.SSLContext, peer: Peer, header: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    """Connect to ``peer``'s broker, make sure it is that node, send ``header``; its answer line. PermissionError
    when the peer is not the node meant, ConnectionError when its broker says no."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(peer.address, peer.port, ssl=ctx), CONNECT_TIMEOUT)
    try:
        node, _ = peer_identity(writer.get_extra_info("peercert"))
        if node != peer.node_id:
            raise PermissionError(f"reached node {node}, not {peer.node_id}, at {peer.address}")
        writer.write(json.dumps(header).encode() + b"\n")
        answer = json.loads(await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT) or b"{}")
        if not answer.get("ok"):
            raise ConnectionError(answer.get("error", "its broker closed the connection"))
    except BaseException:
        writer.close()
        raise
    return reader, writer, answer


async def ask(ctx: ssl.SSLContext, peer: Peer, op: str, **args: Any) -> dict[str, Any]:
    """What only the broker of ``peer`` can do for a kernel placed there (``RelayServer``'s control): its answer."""
    _, writer, answer = await _ask(ctx, peer, {"op": op, **args})
    writer.close()
    return answer


async def _end(tasks: set[asyncio.Task]) -> None:
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def channel_paths(connection: dict[str, Any]) -> list[str]:
    """The five ipc socket paths a connection file names (``<ip>-<port>``, as jupyter_client makes them)."""
    if connection.get("transport") != "ipc":
        raise ValueError("only ipc kernels are relayed: a tcp kernel would need a network of its own")
    names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    return [f"{connection['ip']}-{connection[n]}" for n in names]
