"""``jupyter gpuenv broker``: the one process on a shared GPU host that talks to the Docker engine.

Every user's Jupyter server asks it, over a unix socket, to start, signal and remove container kernels. It
knows who asks from the socket itself (``SO_PEERCRED``: the caller's uid, nothing to forge), runs each kernel
as its caller's uid with the caller's own folders, lets the administrator's policy alone decide what runs,
and keeps one lease book for every GPU on the host. No user needs the Docker socket.

Wire protocol: one JSON object per line. The request is ``{"op": NAME, "args": {...}}``; the answer is zero
or more ``{"progress": ...}`` lines, then one ``{"result": ...}`` or ``{"error": {"type", "status",
"message"}}`` whose status is the one ``errors`` gives the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jupyter_gpuenv import host
from jupyter_gpuenv.broker import cluster as broker_cluster
from jupyter_gpuenv.broker import folders as broker_folders
from jupyter_gpuenv.broker import metrics as broker_metrics
from jupyter_gpuenv.broker import relay
from jupyter_gpuenv.broker.leases import RUNNING, KernelLease, LeaseBook
from jupyter_gpuenv.broker.parking import BrokerParking
from jupyter_gpuenv.broker.policy import Policy, check_start
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.broker.warm import BrokerWarm, HandedLock
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.containers.claims import PREFIX as WARM_PREFIX
from jupyter_gpuenv.containers.spec import check_cwd, within
from jupyter_gpuenv.engines.base import KernelRequest, image_facts_of
from jupyter_gpuenv.engines.docker.engine import DockerEngine
from jupyter_gpuenv.engines.swarm.placements import ENDED, Node
from jupyter_gpuenv.engines.swarm.service import KernelRequest as ServiceRequest
from jupyter_gpuenv.engines.swarm.service import service_name
from jupyter_gpuenv.environments import preflight, runtime
from jupyter_gpuenv.environments.definition import Environment, GpuPolicy, parse_environment
from jupyter_gpuenv.errors import (
    CannotStartHere,
    EngineUnreachable,
    GpuEnvError,
    InvalidEnvironment,
    InvalidKernelId,
    InvalidRequest,
    NotPermitted,
    TooMany,
    UnknownKernel,
)
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.gpus.visibility import from_environment
from jupyter_gpuenv.parking.rules import IdlePolicy

log = logging.getLogger("jupyter_gpuenv.broker")
_START_ARGS = {
    "kernel_id",
    "environment",
    "root_dir",
    "cwd",
    "socket_dir",
    "connection_file",
    "keep_gpus",
    "server_env",
    "terminal",
    "wait",  # cluster only: wait in line for a GPU instead of being refused (progress lines give the place)
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_REQUEST = 1 << 16
TOKEN_MEMORY = 10.0  # seconds a hub token's owner is remembered (a revoked token works this much longer)
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
HEARTBEAT = 3.0  # seconds between two "still working" lines of a long answer: the client's silence limit is longer
RESTART_MEMORY = 300.0  # seconds the GPUs of a removed kernel can be kept by its restart (keep_gpus)
ROOT = (0, 0)
# Tests only: widen the windows between the broker's checks and its use of what it checked, for kernel ids that
# start with "race-", so that a test can swap what was checked every time (tests/broker/test_broker_hostile.py).
RACE_DELAY = float(os.environ.get("GPUENV_BROKER_RACE_DELAY") or 0)


async def race_window(kernel_id: str) -> None:
    if RACE_DELAY and kernel_id.startswith("race-"):
        await asyncio.sleep(RACE_DELAY)


class Refusals:
    """One log line per refusal, at most ``burst`` a minute for one caller; then one line saying how many were
    not written. A user who sends a thousand bad requests costs the log a few lines."""

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        self.burst, self.window = burst, window
        self._seen: dict[Any, tuple[float, int, int]] = {}  # key -> (window start, written, not written)

    def allow(self, key: Any) -> bool:
        now = time.monotonic()
        start, written, quiet = self._seen.get(key, (now, 0, 0))
        if now - start > self.window:
            if quiet:
                log.warning("gpuenv broker: %d more refusals of %s were not logged", quiet, key)
            start, written, quiet = now, 0, 0
        if len(self._seen) > 4096:  # forget the quiet ones: a flood of callers must not grow this
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] <= self.window}
        ok = written < self.burst
        self._seen[key] = (start, written + ok, quiet + (not ok))
        return ok


HOLDER_SWEEP = 10.0  # seconds between two looks for unused namespace holders (two engine calls each)


@dataclass(frozen=True)
class Caller:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[str, ...]
    pid: int
    volume: str | None = None  # hub-token mode: the user's files are this Docker volume, mounted at ``home``

    @property
    def folder(self) -> str:
        """Their folder under sockets/: by uid, or by hub name where every server runs as one uid."""
        return f"hub-{self.name}" if self.volume else str(self.uid)


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def caller_from_uid(uid: int, pid: int) -> Caller:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise NotPermitted(f"uid {uid} has no account on this host: the broker serves its users only") from None
    groups = tuple(sorted({grp.getgrgid(g).gr_name for g in os.getgrouplist(entry.pw_name, entry.pw_gid)}))
    return Caller(entry.pw_name, uid, entry.pw_gid, entry.pw_dir, groups, pid)


def process_start(pid: int) -> int:
    """A process's start time in clock ticks since boot (0 if gone): with its pid, it names one process."""
    return host.process_start(pid) or 0


def _arg(args: dict[str, Any], key: str, kind: type, required: bool = True) -> Any:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidRequest(f"'{key}' must be a {kind.__name__}")
    if isinstance(value, str):
        broker_folders.check_text(value, f"'{key}'")
    return value


def _server_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest("'server_env' must be an object of strings")
    return value


def open_file_limit(raise_soft: bool = True) -> int:
    """The broker's open-file limit, first raised to the hard limit (systemd units start at a soft 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class BrokerDaemon:
    """The broker at work: its engine, its GPU sampler, its lease book, its policy."""

    def __init__(self, settings: Broker) -> None:
        self.settings = settings
        self.folder = os.path.dirname(os.path.abspath(settings.socket))
        self.sockets = os.path.join(self.folder, "sockets")
        self.staging = os.path.join(self.folder, "staging")  # root-only: user folders pinned for Docker's mounts
        self.policy = Policy.parse(settings.policy)
        self.environments = {
            name: parse_environment(name, raw, "c.Broker.environments") for name, raw in settings.environments.items()
        }
        self.docker = DockerEngine(settings.docker_url, settings.docker_timeout, None, log)
        self.cluster = broker_cluster.connect(settings)  # None: kernels run on this host's engine
        self.kernel_engine = self.cluster.engine if self.cluster else self.docker  # state and signal of a kernel
        self.relay_server: relay.RelayServer | None = None  # cluster: other hosts' kernels' channels come here
        self.relayed: dict[str, tuple[relay.Listeners, relay.Peer]] = {}  # kernel id -> channels to its host
        self.book = LeaseBook(os.path.join(self.folder, "leases.json"))
        self.sampler = Sampler(
            interval=settings.sample_interval,
            history_length=2 + int(settings.park_idle_minutes * 60 / settings.sample_interval),  # the idle window
            visibility=from_environment(settings.visible_devices),
            attribute=lambda snapshot: broker_metrics.attribute(snapshot, self.book),  # GPU memory by container
            log=log,
        )
        self.warm = BrokerWarm(self)  # every person's warm kernels (warm.py)
        self.metrics = broker_metrics.BrokerMetrics(settings, self.book, self.sampler, self.warm.counts)
        self.lock = asyncio.Lock()  # one GPU decision at a time, for every user of the host
        idle = IdlePolicy(settings.park_idle_minutes, int(settings.park_min_gpu_memory_gib * 2**30))
        self.parking = BrokerParking(self, idle, settings.park_timeout)
        self._tokens: dict[str, tuple[str, tuple[str, ...], float]] = {}
        self.hostname = socket.gethostname()
        self.node_name = self.hostname  # in a cluster: this host as Swarm names it (set when the relay starts)
        self.shells: dict[str, tuple[str, Any]] = {}  # open terminal shells: id -> (their user's name, the shell)
        self.connections: Counter = Counter()  # open connections by caller (uid; pid in hub-token mode)
        self.max_connections = settings.max_connections or max(64, open_file_limit(raise_soft=False) // 2)
        self.pending: dict[str, tuple[str, float]] = {}  # socket folder with no kernel yet -> (its user, made at)
        self.starting: set[str] = set()  # socket folders of starts under way (a pull can take minutes)
        self.released: dict[tuple[str, str], tuple[list[str], float]] = {}  # (user, kernel id) -> GPUs it had, when
        self.refusals = Refusals()
        # (user, kernel id) -> the socket folder of a kernel that took a warm one (warm-<hex>, not its kernel id)
        self.bound_folders: dict[tuple[str, str], str] = {}

    # -- life ------------------------------------------------------------------------------------------
    def prepare_folders(self) -> None:
        """The broker's folder: root's, not writable by anyone else; made if missing. ``sockets/`` may be entered
        but not listed (0711): who has kernels is nobody else's business."""
        for path, mode in ((self.folder, 0o755), (self.sockets, 0o711)):
            os.makedirs(path, mode=mode, exist_ok=True)
            info = os.lstat(path)
            if info.st_uid != os.getuid() or info.st_mode & 0o022 or os.path.islink(path):
                raise SystemExit(f"{path} must be a folder of the broker's own user, writable by no one else")
            os.chmod(path, mode)
        broker_folders.prepare_staging(self.staging)
        if not self.settings.max_connections:
            self.max_connections = max(64, open_file_limit() // 2)

    async def recover(self) -> None:
        """After a restart: keep running kernels' leases, remove what an interrupted start left."""
        self.book.load()
        if self.cluster is not None:
            await self._recover_in_cluster()
            return
        mine = self.settings.socket  # this broker's containers; another broker on the same engine keeps its own
        containers = {c.kernel_id: c for c in await self.docker.kernels() if c.labels.get(labels.BROKER) == mine}
        for lease in self.book:
            found = containers.pop(lease.kernel_id, None)
            if found is None:  # a kernel that took a warm container: its labels keep the warm name
                found = next((c for c in containers.values() if c.id and c.id == lease.container_id), None)
                if found is not None:
                    del containers[found.kernel_id]
            if lease.state != RUNNING:
                log.warning("gpuenv broker: removing what the interrupted start of kernel %s left", lease.kernel_id)
                if found is not None:
                    await self.docker.remove(found.id)
                shutil.rmtree(lease.socket_dir, ignore_errors=True)
                self.book.drop(lease)
            elif found is None or not found.active:
                self.book.drop(lease)  # its container ended while we were away: the GPU is free again
        for orphan in containers.values():  # created, and the broker died before it wrote the lease; or warm
            log.warning("gpuenv broker: removing container %s, which no lease names", orphan.name)
            await self.docker.remove(orphan.id)
        # socket folders asked for before the restart, whose start never came: given their grace again
        leased = {k.socket_dir for k in self.book}
        sockets = os.open(self.sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for user in os.listdir(sockets):
                try:  # an older broker gave each user their folder: root's now, so none can swap what is inside
                    os.close(broker_folders.open_folder(sockets, user, mode=0o711, owner=ROOT, make=False, adopt=True))
                except NotPermitted:
                    continue
                for kernel in os.listdir(os.path.join(self.sockets, user)):
                    path = os.path.join(self.sockets, user, kernel)
                    if path not in leased:
                        self.pending[path] = ("", time.monotonic())
        finally:
            os.close(sockets)

    async def _recover_in_cluster(self) -> None:
        """After a restart, in a cluster: Swarm's record decides which leases still hold (a manager keeps it across
        our restart); an interrupted start's service goes. Other brokers' kernels are theirs to sweep."""
        cluster = self.cluster
        assert cluster is not None
        running = {k.kernel_id: k for k in await cluster.engine.kernels()}
        for lease in self.book:
            found = running.get(lease.kernel_id)
            if lease.state != RUNNING or found is None or found.state in ENDED:
                if found is not None:
                    await cluster.remove(found.service_id)
                if lease.state != RUNNING:
                    shutil.rmtree(lease.socket_dir, ignore_errors=True)
                self.book.drop(lease)
                continue
            try:  # the channels of a kernel on another host: listened for again, where its server expects them
                entry = pwd.getpwuid(lease.uid)
                who = Caller(lease.user, lease.uid, entry.pw_gid, entry.pw_dir, (), lease.server_pid)
                await self._relay_channels(who, lease.kernel_id, lease.connection_file, found.host)
            except (OSError, KeyError, ValueError, StopIteration, GpuEnvError) as exc:
                log.warning("gpuenv broker: kernel %s on %s lost its channels here (%s); removing it",
                            lease.kernel_id, found.host, exc)  # fmt: skip
                await cluster.remove(found.service_id)
                self.book.drop(lease)

    async def serve(self) -> None:
        self.prepare_folders()
        self.sampler.start()
        await self.recover()
        await self.metrics.start()
        if self.cluster is not None:
            await self._serve_relay()
        if os.path.exists(self.settings.socket):
            os.unlink(self.settings.socket)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.settings.socket)
        os.chmod(self.settings.socket, 0o666)  # anyone may ask; who asks is known from the socket
        listener.listen(BACKLOG)
        listener.setblocking(False)
        log.info("gpuenv broker: serving %s (%d environments)", self.settings.socket, len(self.environments))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        tasks = [
            asyncio.ensure_future(self.sweep_orphans(stop)),
            asyncio.ensure_future(self.sweep_folders(stop)),
            asyncio.ensure_future(self.parking.tend(stop, self.settings.sample_interval)),
            asyncio.ensure_future(self.warm.tend(stop, process_start)),
            asyncio.ensure_future(self.accept(listener)),
        ]
        await stop.wait()
        listener.close()
        for task in tasks:
            task.cancel()
        for listeners, _ in self.relayed.values():
            await listeners.close()
        if self.relay_server is not None:
            await self.relay_server.close()
        await self.warm.stop()  # no warm container outlives the broker that knows it
        await self.metrics.stop()
        self.sampler.stop()
        self.docker.close()

    def _client_gone(self, lease: KernelLease) -> bool:
        return bool(
            lease.state == RUNNING and lease.server_pid and process_start(lease.server_pid) != lease.server_started
        )

    async def sweep_orphans(self, stop: asyncio.Event) -> None:
        """Kernels whose client process is gone (a killed server or script, a crashed spawner) are removed within
        about ``orphan_interval`` seconds, so that their GPUs are free again: the kernel itself ended already (its
        watcher saw the client's lock go, containers.CLIENT_LOCK), but the lease is the broker's."""
        holders_swept = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(self.settings.orphan_interval)
            if any(self._client_gone(lease) for lease in self.book):  # no lock taken while nothing is to do
                async with self.lock:
                    for lease in self.book:
                        if self._client_gone(lease):
                            log.warning("gpuenv broker: kernel %s of %s lost its client; removing it", lease.kernel_id,
                                        lease.user)  # fmt: skip
                            await self._remove_lease(lease)
            if time.monotonic() - holders_swept < HOLDER_SWEEP:
                continue
            holders_swept = time.monotonic()
            async with self.lock:
                try:  # a user's namespace holder, once no kernel of theirs joins it and its server is gone
                    await self.docker.remove_unused_holders(self._holder_orphaned)
                except GpuEnvError as exc:
                    log.warning("gpuenv broker: unused namespace holders are removed later: %s", exc)

    async def sweep_folders(self, stop: asyncio.Event) -> None:
        """Socket folders that no kernel took within ``socket_folder_grace`` are removed."""
        grace = self.settings.socket_folder_grace
        while not stop.is_set():
            await asyncio.sleep(min(self.settings.orphan_interval, max(grace / 2, 0.5)))
            leased = {k.socket_dir for k in self.book}
            now = time.monotonic()
            for path, (_, made) in list(self.pending.items()):
                if path in leased:
                    del self.pending[path]
                elif path not in self.starting and now - made > grace:
                    self._drop_folder(path)

    def _drop_folder(self, path: str) -> None:
        """Remove a kernel's socket folder (root's parents: nobody can swap it; rmtree works by descriptor)."""
        self.pending.pop(path, None)
        for key in [k for k, v in self.bound_folders.items() if v == path]:
            del self.bound_folders[key]
        shutil.rmtree(path, ignore_errors=True)

    def _holder_orphaned(self, holder: labels.KernelContainer) -> bool:
        pid = holder.server_pid
        return holder.server_host == self.hostname and pid.isdigit() and process_start(int(pid)) == 0

    async def _remove_lease(self, lease: KernelLease) -> None:
        try:
            if lease.container_id:
                await self._remove_kernel(lease.container_id)
        finally:
            self._drop_folder(lease.socket_dir)
            self.book.drop(lease)

    # -- one request -----------------------------------------------------------------------------------
    def _admit(self, sock: socket.socket) -> tuple[int, int, str] | None:
        """Count a new connection against its caller's cap and everyone's: (pid, uid, its key), or None when it was
        refused (answered 429 at once and closed, so a flood costs the broker no file for longer than that)."""
        pid, uid, _ = peer(sock)
        key = f"uid {uid}" if self.settings.identify == "peer" else f"pid {pid}"  # hub-token: one uid for all
        mine = self.connections[key]
        if mine < self.settings.max_connections_per_user and sum(self.connections.values()) < self.max_connections:
            self.connections[key] += 1
            return pid, uid, key
        if self.refusals.allow(key):
            log.warning("gpuenv broker: %s holds %d connections: one more refused", key, mine)
        exc = TooMany(
            "too many connections to the GPU broker are open "
            + ("from your processes" if mine >= self.settings.max_connections_per_user else "on this host")
            + ": close some, and ask again"
        )
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"error": _error(exc)}).encode() + b"\n", socket.MSG_DONTWAIT)
        return None

    def _release(self, key: str) -> None:
        self.connections[key] -= 1
        if not self.connections[key]:
            del self.connections[key]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: at most ``max_connections_per_user`` of one caller's, ``max_connections`` in all."""
        admitted = self._admit(writer.get_extra_info("socket"))
        if admitted is None:
            writer.close()
            return
        try:
            await self._serve(reader, writer, *admitted)
        finally:
            self._release(admitted[2])

    async def accept(self, listener: socket.socket) -> None:
        """Take connections one at a time, refusing those over a cap before the next is taken: the listen queue is
        deep (one person refilling it must not leave others' connect failing with EAGAIN), and asyncio's own
        server would take a whole queue's worth at once, more files than the broker may have."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of files: the caps keep this rare; wait instead of spinning
                if self.refusals.allow("accept"):
                    log.warning("gpuenv broker: cannot accept a connection (%s)", exc.strerror)
                await asyncio.sleep(0.1)
                continue
            admitted = self._admit(conn)
            if admitted is None:
                conn.close()
                continue
            asyncio.ensure_future(self._connection(conn, admitted))

    async def _connection(self, conn: socket.socket, admitted: tuple[int, int, str]) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST)
            await self._serve(reader, writer, *admitted)
        finally:
            self._release(admitted[2])

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int, uid: int, key: str
    ) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")

        op = "?"
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                    raise ValueError
            except (ValueError, RecursionError, ConnectionError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                raise InvalidRequest('a request is one line of JSON: {"op": NAME, "args": {...}}') from None
            op = request["op"][:40]
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise InvalidRequest("'args' must be a JSON object")
            caller = await self.identify(uid, pid, request.get("hub_token"))
            if op == "exec_shell":  # answered, then this connection carries the shell's bytes
                await self.exec_shell(caller, args, reader, writer)
                return
            work = asyncio.ensure_future(self.dispatch(caller, op, args, lambda p: send({"progress": p})))
            while not (await asyncio.wait({work}, timeout=HEARTBEAT))[0]:
                send({"progress": {"working": op}})  # the client's silence limit stays meaningful on long work
            result = work.result()
            if isinstance(result, HandedLock):
                await self._send_lock(writer, result)
            else:
                send({"result": result})
        except GpuEnvError as exc:
            if exc.status >= 500 or self.refusals.allow(key):
                log.info("gpuenv broker: %s refused (%s, %s): %s", op, key, type(exc).__name__, exc)
            send({"error": _error(exc)})
        except Exception:  # a bug: say so once, and keep serving everyone else
            if self.refusals.allow(key):
                log.exception("gpuenv broker: %s of %s failed", op, key)
            send({"error": {"type": "BrokerError", "status": 500, "message": "the GPU broker failed; see its log"}})
        finally:
            try:
                await asyncio.wait_for(writer.drain(), 10)
                writer.close()
            except (ConnectionError, OSError, asyncio.TimeoutError):
                writer.transport.abort()

    async def _send_lock(self, writer: asyncio.StreamWriter, handed: HandedLock) -> None:
        """The answer, with ``handed.fd`` (a warm kernel's client lock) passed to the caller as an open file; then
        the broker's own descriptor is closed (the caller's is the same open file: the lock stays held)."""
        try:
            while writer.transport.get_write_buffer_size():  # every earlier line out first, in order
                await writer.drain()
                await asyncio.sleep(0.001)
            raw = writer.get_extra_info("socket")
            with socket.socket(fileno=os.dup(raw.fileno())) as sock:  # asyncio's transport has no sendmsg
                socket.send_fds(sock, [json.dumps({"result": handed.answer}).encode() + b"\n"], [handed.fd])
        finally:
            os.close(handed.fd)

    async def dispatch(self, caller: Caller, op: str, args: dict[str, Any], progress: Callable) -> Any:
        if op == "hello":
            return {"user": caller.name, "uid": caller.uid, "mode": self.settings.identify}
        if op == "environments":  # each image asked about at once: a stalled engine costs one timeout, not five
            rule = self.policy.rule_for(caller.name, list(caller.groups))
            allowed = [name for name in sorted(self.environments) if rule.allows(name)]
            return list(await asyncio.gather(*(self.environment_row(caller, name) for name in allowed)))
        if op == "socket_folder":
            return {"path": await self.socket_folder(caller, _arg(args, "kernel_id", str))}
        if op == "keep_warm":  # a person's server runs: their warm kernels are kept (warm.py)
            self.warm.keep_warm(caller, _arg(args, "root_dir", str), process_start)
            return {}
        if op == "take_warm":
            if caller.uid == 0:
                raise NotPermitted("the broker never runs a kernel as root: start it from a user's server")
            kernel_id = self._kernel_id(_arg(args, "kernel_id", str), caller)
            env = self._environment(caller, args.get("environment"))
            notebook = _arg(args, "notebook", str, required=False) or ""
            root_dir = _arg(args, "root_dir", str)
            return await self.warm.take(caller, kernel_id, env, root_dir, notebook, process_start)
        if op == "remove_socket_folder":
            self.remove_socket_folder(caller, _arg(args, "kernel_id", str))
            return {}
        if op == "start_kernel":
            return await self.start_kernel(caller, args, progress)
        if op == "kernels":
            return [{**asdict(k), "park": self.parking.row(k)} for k in self.book.of_user(caller.name)]
        if op == "park":
            return await self.parking.park(caller.name, args.get("container_id"))
        if op == "resume":
            return await self.parking.resume(caller.name, args.get("container_id"), caller.groups)
        if op == "parking":
            return await self.parking.summary()
        if op == "shell_resize":
            owner, shell = self.shells.get(_arg(args, "shell", str), ("", None))
            if owner != caller.name or shell is None:
                raise UnknownKernel("no such shell of yours")
            rows, cols = _arg(args, "rows", int), _arg(args, "cols", int)
            if not (0 < rows <= 1000 and 0 < cols <= 1000):
                raise InvalidRequest("a terminal's rows and cols are between 1 and 1000")
            await shell.resize(rows, cols)
            return {}
        if op == "gpus":
            return self.gpus(caller)
        if op == "holders":  # whose kernel each container is, as show_other_users says (the panel names them)
            names = self._names(caller)
            return {
                k.container_id if k.user == caller.name else k.container_id[:12]: names[k.kernel_id]
                for k in self.book
                if k.container_id and (k.user == caller.name or self.settings.show_other_users == "name")
            }
        if op in ("state", "signal", "remove"):
            lease = self.book.by_container(caller.name, _arg(args, "container_id", str))
            if lease is None:
                raise UnknownKernel("no such kernel container of yours")
            if op == "state":
                return asdict(await self.kernel_engine.state(lease.container_id))
            if op == "signal":
                signum = _arg(args, "signum", int)
                remote = self.relayed.get(lease.kernel_id)
                if remote is not None:  # only the kernel's own host can signal it
                    await relay.ask(self.relay_ssl, remote[1], "signal", kernel=lease.kernel_id, signum=signum)
                else:
                    await self.kernel_engine.signal(lease.container_id, signum)
                return {}
            async with self.lock:
                last = await self._remove_kernel(lease.container_id)
                self.book.drop(lease)
            # a restart starts the same kernel id again at once: it may keep these GPUs (keep_gpus), no others
            now = time.monotonic()
            self.released = {k: v for k, v in self.released.items() if now - v[1] < RESTART_MEMORY}
            self.released[(caller.name, lease.kernel_id)] = (list(lease.gpus), now)
            self.pending.setdefault(lease.socket_dir, (caller.name, now))  # its folder: until the restart, or swept
            if os.path.basename(lease.socket_dir) != lease.kernel_id:  # it took a warm kernel's folder
                self.bound_folders[(caller.name, lease.kernel_id)] = lease.socket_dir
            return asdict(last) if last else None
        raise InvalidRequest(f"unknown operation {op!r}")

    async def _remove_kernel(self, container_id: str) -> Any:
        """A kernel's container goes (on this host, or its service in the cluster: whoever waits is told); the
        channels to another host's kernel close, and that host's broker forgets its socket folder."""
        if self.cluster is None:
            return await self.docker.remove(container_id)
        last = await self.cluster.remove(container_id)
        lease = next((k for k in self.book if k.container_id == container_id), None)
        remote = self.relayed.pop(lease.kernel_id, None) if lease else None
        if remote is not None and lease is not None:
            await remote[0].close()
            try:
                await relay.ask(self.relay_ssl, remote[1], "forget", uid=lease.uid, kernel=lease.kernel_id)
            except (OSError, PermissionError, ValueError, asyncio.TimeoutError) as exc:
                log.warning("gpuenv broker: %s keeps kernel %s's socket folder (%s)", remote[1].node_id,
                            lease.kernel_id, exc)  # fmt: skip
        return last

    # -- several hosts: the relay ------------------------------------------------------------------------
    async def _serve_relay(self) -> None:
        """Listen for the other hosts' brokers on this node's swarm address (mutual TLS, swarm certificates)."""
        assert self.cluster is not None
        certs = relay.NodeCertificates(self.settings.swarm_certificates)
        self.relay_ssl = relay.context(certs, server=False)
        self.relay_server = relay.RelayServer(certs, self.sockets, self._relay_control)
        address = await self.cluster.engine.node_address()
        self.node_name = await self.cluster.engine.node_name()  # how Swarm, and every sentence, names this host
        await self.relay_server.start(address, self.settings.relay_port)
        log.info("gpuenv broker: kernel channels of other hosts on %s:%d", address, self.settings.relay_port)

    async def _relay_control(self, header: dict[str, Any]) -> dict[str, Any]:
        """What another host's broker asks of this one for a kernel placed here: its socket folder with the
        connection file (``prepare``), a signal (``signal``), the folder gone (``forget``)."""
        assert self.cluster is not None
        op, kernel_id, uid = header.get("op"), str(header.get("kernel", "")), header.get("uid")
        if not labels.KERNEL_ID.fullmatch(kernel_id):
            raise PermissionError("not a kernel id")
        if op == "signal":
            await self.cluster.engine.signal(service_name(kernel_id), int(header["signum"]))
            return {}
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            raise PermissionError("a kernel never runs as root")
        path = os.path.join(self.sockets, str(uid), kernel_id)
        if op == "forget":
            self._drop_folder(path)
            return {}
        if op != "prepare":
            raise PermissionError(f"no operation {op!r}")
        gid, name, connection = header.get("gid"), str(header.get("file", "")), header.get("connection")
        if not isinstance(gid, int) or isinstance(gid, bool) or gid <= 0 or not isinstance(connection, dict):
            raise PermissionError("prepare takes a gid and a connection")
        self._check_shared_folders(uid, str(header.get("root", "")), str(header.get("home", "")))
        if not relay.NAME.fullmatch(name):
            raise PermissionError("not a connection file name")
        data = json.dumps(connection).encode()
        if len(data) > 1 << 16:
            raise PermissionError("a connection file is at most 64 KiB")
        await asyncio.get_running_loop().run_in_executor(None, self._prepare_folder, uid, gid, kernel_id, name, data)
        return {"folder": path}

    def _check_shared_folders(self, uid: int, root: str, home: str) -> None:
        """The server's root folder a kernel placed here mounts must be here too (shared storage), and the
        person's, or inside their home, as on one host: resolved once, by descriptor (``broker_folders``);
        PermissionError naming this host and the folder otherwise."""

        def pin(path: str) -> broker_folders.Pinned:
            try:
                return broker_folders.resolve(path, "the folder")
            except InvalidRequest:
                raise PermissionError(f"{path} does not exist on {self.node_name}: the kernels' hosts need the "
                                      "people's folders on shared storage (docs/multi-host.md)") from None  # fmt: skip

        root_pin = pin(root)
        home_pin = pin(home) if home else None
        try:
            in_home = (
                home_pin is not None
                and broker_folders.owner_of(home_pin) == uid
                and broker_folders.inside(root_pin, home_pin)
            )
            if broker_folders.owner_of(root_pin) != uid and not in_home:
                raise PermissionError(f"{root} on {self.node_name} is not the person's (uid {uid})")
        finally:
            root_pin.close()
            if home_pin is not None:
                home_pin.close()

    def _prepare_folder(self, uid: int, gid: int, kernel_id: str, name: str, data: bytes) -> None:
        """sockets/<uid>/<kernel id>/<name> for a kernel another host's broker placed here: made by descriptor,
        as ``socket_folder`` makes one, the connection file the user's (0600)."""
        sockets = os.open(self.sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mine = broker_folders.open_folder(sockets, str(uid), mode=0o711, owner=ROOT, adopt=True)
        finally:
            os.close(sockets)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(kernel_id, 0o700, dir_fd=mine)
            folder = broker_folders.open_folder(mine, kernel_id, mode=0o700, owner=(uid, gid), make=False)
        finally:
            os.close(mine)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=folder)
            try:
                os.fchown(fd, uid, gid)
                os.write(fd, data)
            finally:
                os.close(fd)
        finally:
            os.close(folder)

    async def _prepare_remote(
        self,
        caller: Caller,
        kernel_id: str,
        socket_dir: str,
        connection_file: str,
        node: Node,
        request: ServiceRequest,
        folders: dict[str, str],
    ) -> ServiceRequest:
        """Before a kernel is placed on ``node``: that host's broker checks the person's ``folders`` are there and
        theirs, and makes the kernel's socket folder there with the connection file, which is mounted where the
        socket folder is here (this host's is the relay's). CannotStartHere or EngineUnreachable naming the host."""
        assert self.cluster is not None
        if node.id == await self.cluster.engine.node_id():
            return request
        name = os.path.basename(connection_file)
        raw = await asyncio.get_running_loop().run_in_executor(
            None, broker_folders.read_user_file, socket_dir, name, caller.uid, 1 << 16
        )
        peer = relay.Peer(node.id, node.address, self.settings.relay_port)
        try:
            answer = await relay.ask(self.relay_ssl, peer, "prepare", uid=caller.uid, gid=caller.gid, kernel=kernel_id,
                                     file=name, connection=json.loads(raw), **folders)  # fmt: skip
        except ConnectionError as exc:  # its broker said no
            raise CannotStartHere(f"host {node.hostname} cannot run this kernel: {exc}") from None
        except (OSError, PermissionError, ValueError, asyncio.TimeoutError) as exc:
            raise EngineUnreachable(
                f"the broker of host {node.hostname} ({node.address}:{peer.port}) did not answer: is it running? "
                f"({type(exc).__name__}: {exc})"
            ) from None
        mounts = tuple(
            dataclasses.replace(m, source=answer["folder"]) if m.target == socket_dir else m for m in request.mounts
        )
        return dataclasses.replace(request, mounts=mounts)

    async def _relay_channels(self, caller: Caller, kernel_id: str, connection_file: str, host: str) -> None:
        """The kernel runs on ``host``: its five channels are listened for here and carried there."""
        assert self.cluster is not None
        nodes = await self.cluster.engine.nodes()
        node = next(n for n in nodes if n.hostname == host)
        if node.id == await self.cluster.engine.node_id():
            return
        raw = await asyncio.get_running_loop().run_in_executor(
            None, broker_folders.read_user_file, os.path.dirname(connection_file), os.path.basename(connection_file),
            caller.uid, 1 << 16,
        )  # fmt: skip
        peer = relay.Peer(node.id, node.address, self.settings.relay_port)
        listeners = relay.Listeners(relay.NodeCertificates(self.settings.swarm_certificates), peer, caller.uid,
                                    kernel_id)  # fmt: skip
        await listeners.open(relay.channel_paths(json.loads(raw)), owner=(caller.uid, caller.gid))
        self.relayed[kernel_id] = (listeners, peer)

    # -- who asks --------------------------------------------------------------------------------------
    async def identify(self, uid: int, pid: int, token: Any) -> Caller:
        if self.settings.identify == "peer":
            return caller_from_uid(uid, pid)
        if not isinstance(token, str) or not token:
            raise NotPermitted("this GPU broker knows servers by their hub token: none was sent")
        name, groups = await self.hub_user(token)
        if not _HUB_NAME.match(name):
            raise NotPermitted(f"the hub user name {name!r} cannot name a folder here; ask the administrator")
        return Caller(
            name, self.settings.hub_uid, self.settings.hub_gid, self.settings.hub_work_dir, groups, pid,
            volume=self.settings.hub_volume.format(username=name),
        )  # fmt: skip

    async def hub_user(self, token: str) -> tuple[str, tuple[str, ...]]:
        """Whose token it is, as the hub says (GET /user with that token); remembered for TOKEN_MEMORY seconds.

        A revoked or expired token is therefore refused at most TOKEN_MEMORY seconds late.
        """
        now = time.monotonic()
        key = hashlib.sha256(token.encode()).hexdigest()
        known = self._tokens.get(key)
        if known and known[2] > now:
            return known[0], known[1]
        client = AsyncHTTPClient()
        try:
            response = await client.fetch(
                f"{self.settings.hub_api_url.rstrip('/')}/user",
                headers={"Authorization": f"token {token}"},
                request_timeout=self.settings.docker_timeout,
                raise_error=False,
            )
        except (OSError, HTTPClientError) as exc:  # refused, unknown host, or no answer in time
            raise EngineUnreachable(f"the hub at {self.settings.hub_api_url} is not reachable ({exc})") from None
        if response.code in (401, 403, 404):
            raise NotPermitted("the hub does not accept this server's token (revoked or expired)")
        if response.code != 200:
            raise EngineUnreachable(f"the hub answered {response.code} when asked whose token this is")
        try:
            model = json.loads(response.body)
            model["name"]
        except (ValueError, TypeError, KeyError):
            raise EngineUnreachable("the hub's answer to 'whose token is this' was not a user model") from None
        if model.get("kind", "user") != "user":
            raise NotPermitted("only a user's server may start kernels (this token is a service's)")
        found = (model["name"], tuple(sorted(model.get("groups") or ())))
        self._tokens = {k: v for k, v in self._tokens.items() if v[2] > now}
        self._tokens[key] = (*found, now + TOKEN_MEMORY)
        return found

    # -- operations ------------------------------------------------------------------------------------
    def _kernel_id(self, kernel_id: str, caller: Caller | None = None) -> str:
        if not labels.KERNEL_ID.fullmatch(kernel_id):
            raise InvalidKernelId(f"kernel id {kernel_id!r} is not allowed: use letters, digits, '-' and '_'")
        if kernel_id.startswith(WARM_PREFIX):  # the folders and labels of warm kernels: the broker's names
            raise InvalidKernelId(f"kernel id {kernel_id!r} is not allowed: ids starting {WARM_PREFIX!r} are taken")
        holder = self.book.holder_of(kernel_id)
        if caller is not None and holder is not None and holder.user != caller.name:
            raise InvalidKernelId(f"kernel id {kernel_id!r} is taken on this host: let the server choose one")
        return kernel_id

    def _folder_of(self, caller: Caller, kernel_id: str) -> str:
        """A kernel's socket folder: sockets/<user>/<kernel id>, or the warm kernel's it took (also after its
        container was removed, for the restart that follows)."""
        lease = self.book.get(caller.name, kernel_id)
        if lease is not None:
            return lease.socket_dir
        return self.bound_folders.get((caller.name, kernel_id)) or self._socket_path(caller, kernel_id)

    def _socket_path(self, caller: Caller, kernel_id: str) -> str:
        path = os.path.join(self.sockets, caller.folder, kernel_id)
        if len(os.path.join(path, "k-9999")) > 100:
            raise InvalidKernelId(f"kernel id {kernel_id!r} is too long for a unix socket path here")
        return path

    async def socket_folder(self, caller: Caller, kernel_id: str) -> str:
        """sockets/<user>/<kernel id>: the user's own (0700) in folders of root's (0711), never in /tmp.

        Made and handed over through descriptors (``broker_folders``); the user cannot rename or replace anything
        above it, so the path stays what was checked.
        """
        path = self._socket_path(caller, self._kernel_id(kernel_id, caller))
        known = path in self.pending or self.book.get(caller.name, kernel_id) is not None
        waiting = sum(1 for user, _ in self.pending.values() if user == caller.name)
        if not known and waiting >= self.settings.max_pending_socket_folders:
            raise TooMany(
                f"you have {waiting} kernel folders on this host that no kernel runs in yet (starts under way, or "
                f"ended without their server saying so), as many as one person may: they are removed "
                f"{self.settings.socket_folder_grace:.0f} s after they were made"
            )
        sockets = os.open(self.sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mine = broker_folders.open_folder(sockets, caller.folder, mode=0o711, owner=ROOT, adopt=True)
        finally:
            os.close(sockets)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(kernel_id, 0o700, dir_fd=mine)
            await race_window(kernel_id)
            os.close(
                broker_folders.open_folder(mine, kernel_id, mode=0o700, owner=(caller.uid, caller.gid), make=False)
            )
        finally:
            os.close(mine)
        if self.book.get(caller.name, kernel_id) is None:
            self.pending.setdefault(path, (caller.name, time.monotonic()))
        return path

    def remove_socket_folder(self, caller: Caller, kernel_id: str) -> None:
        """A server is done with a kernel's folder (shut down, or its start failed): removed unless a kernel or a
        start still uses it."""
        path = self._folder_of(caller, self._kernel_id(kernel_id, caller))
        lease = self.book.get(caller.name, kernel_id)
        if (lease is None or lease.state != RUNNING) and path not in self.starting:
            self._drop_folder(path)

    def _pin_folders(self, caller: Caller, root: str, home: str) -> dict[str, broker_folders.Pinned]:
        """The server's root folder and the caller's home, each resolved once to a descriptor and checked there:
        ``{the path the kernel sees it at: the pinned folder}``. The root must be the caller's or inside their
        home; a home that does not exist is left out."""
        pinned = {}
        try:
            root_pin = broker_folders.resolve(root, "the server's root folder")
            pinned[root_pin.path] = root_pin
            try:
                home_pin = broker_folders.resolve(home, "the home")
            except InvalidRequest:
                home_pin = None
            in_home = home_pin is not None and broker_folders.inside(root_pin, home_pin)
            if broker_folders.owner_of(root_pin) != caller.uid and not in_home:
                raise NotPermitted(
                    f"the server's root folder {root} is not {caller.name}'s: a kernel sees only its user's own folders"
                )
            if home_pin is not None:
                if home != root_pin.path and not broker_folders.inside(home_pin, root_pin):
                    pinned[home] = home_pin
                else:
                    home_pin.close()
            return pinned
        except BaseException:
            for pin in pinned.values():
                pin.close()
            raise

    def gpus_wanted(self, env: Environment) -> int:
        """How many GPUs a kernel of ``env`` holds, for the policy's max_gpus."""
        if env.gpus.kind in ("count", "exclusive", "ids"):
            return env.gpus.count
        return len(self.sampler.latest.gpus) if env.gpus.wants_gpus else 0

    def name_of(self, lease: KernelLease) -> str:
        """How a refusal names another user's kernel, as show_other_users says."""
        return lease.user if self.settings.show_other_users == "name" else "another user"

    def _names(self, caller: Caller) -> dict[str, str]:
        names = {}
        for lease in self.book:
            if lease.user == caller.name:
                names[lease.kernel_id] = f"your kernel {lease.kernel_id[:8]}"
            else:
                names[lease.kernel_id] = lease.user if self.settings.show_other_users == "name" else "another user"
        return names

    def _environment(self, caller: Caller, name: Any) -> Environment:
        if not isinstance(name, str) or name not in self.environments:
            raise InvalidEnvironment(
                f"no environment {name!r} on this host (defined: {', '.join(sorted(self.environments)) or 'none'})"
            )
        return self.environments[name]

    async def _verdict(self, env: Environment) -> preflight.Verdict:
        image = await image_facts_of(self.docker, env)
        situation = preflight.Situation(
            image=image,
            snapshot=self.sampler.latest,
            prepared_runtimes=runtime.prepared_versions(self.settings.kernel_runtime_dir),
            pull_allowed=self.settings.pull_missing_images,
            pulling=self.docker.pull_progress(env.image) is not None,
        )
        return preflight.check(env, situation)

    async def environment_row(self, caller: Caller, name: str) -> dict[str, Any]:
        env = self.environments[name]
        try:
            verdict = await self._verdict(env)
        except GpuEnvError as exc:
            verdict = preflight.Verdict(preflight.UNAVAILABLE, False, str(exc), exc)
        return {
            "name": name,
            "display_name": env.display_name,
            "image": env.image,
            "gpus": str(env.gpus),
            "state": verdict.state,
            "can_start": verdict.can_start,
            "reason": verdict.reason,
            "reason_code": verdict.reason_code,
            "availability": self.availability(env),
            "warm": self.warm.ready(caller.name, name),  # warm kernels of this person's a start takes now
            "pull_progress": pulling.as_dict() if (pulling := self.docker.pull_progress(env.image)) else None,
            "definition": env.to_config(),
        }

    def availability(self, env: Environment) -> str | None:
        gpus = [g for g in self.sampler.latest.gpus if g.uuid and not g.error]
        if not env.gpus.wants_gpus:
            return None
        held = self.book.holdings()
        if env.gpus.kind == "exclusive":
            free = sum(1 for g in gpus if not held.held_by_anyone(g.uuid))
            return f"exclusive: {free} of {len(gpus)} GPUs free"
        shared = sum(1 for g in gpus if g.uuid not in held.exclusive)
        return f"shared: {shared} of {len(gpus)} GPUs not held exclusively"

    def gpus(self, caller: Caller) -> list[dict[str, Any]]:
        names, held = self._names(caller), self.book.holdings()
        out = []
        for g in self.sampler.latest.gpus:
            holders = held.holders(g.uuid)
            own = [h for h in holders if self.book.get(caller.name, h)]
            out.append({"index": g.index, "uuid": g.uuid, "holders": sorted({names[h] for h in holders}),
                        "your_kernels": own})  # fmt: skip
        return out

    async def exec_shell(
        self, caller: Caller, args: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A terminal's shell in one of the caller's own kernel containers, as the caller (never root).

        Another user's container is unknown (404), as for every operation. The answer ``{"result": {"shell":
        ID}}`` is followed, on the same connection, by the terminal's raw bytes both ways until either side
        ends; the shell is then hung up. ``shell_resize`` with that ID, from the same user, sets its size.
        """
        if caller.uid == 0:
            raise NotPermitted("the broker never opens a root shell: open the terminal from a user's server")
        lease = self.book.by_container(caller.name, _arg(args, "container_id", str))
        if lease is None or lease.state != RUNNING:
            raise UnknownKernel("no such kernel container of yours")
        shell = await self.docker.exec_shell(lease.container_id, f"{caller.uid}:{caller.gid}")
        shell_id = secrets.token_hex(8)
        self.shells[shell_id] = (caller.name, shell)
        log.info("gpuenv broker: %s opened a terminal in kernel %s", caller.name, lease.kernel_id)
        try:
            writer.write(json.dumps({"result": {"shell": shell_id}}).encode() + b"\n")
            await writer.drain()
            await _relay(reader, writer, shell)
        finally:
            self.shells.pop(shell_id, None)
            await shell.close()

    def _keep(self, caller: Caller, kernel_id: str, env: Environment, value: Any) -> list[str]:
        """The GPUs a restart keeps: only those this very kernel of the caller's held (its lease, its park record,
        or its container removed moments ago), never more than its environment gives a kernel."""
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise InvalidRequest("'keep_gpus' must be a list of GPU UUIDs")
        keep = list(dict.fromkeys(value))
        if not keep:
            return []
        had: set[str] = set()
        lease = self.book.get(caller.name, kernel_id)
        if lease is not None:
            had.update(lease.gpus, (lease.park or {}).get("gpus") or ())
        gone = self.released.get((caller.name, kernel_id))
        if gone is not None and time.monotonic() - gone[1] < RESTART_MEMORY:
            had.update(gone[0])
        if not set(keep) <= had:
            raise NotPermitted(
                "keep_gpus names GPUs this kernel did not hold: a kernel keeps its own GPUs across a restart, no others"
            )
        if env.gpus.kind in ("count", "exclusive", "ids") and len(keep) > env.gpus.count:
            raise InvalidRequest(f"keep_gpus names {len(keep)} GPUs; {env.name} gives a kernel {env.gpus.count}")
        return keep

    async def start_kernel(self, caller: Caller, args: dict[str, Any], progress: Callable) -> dict[str, Any]:
        """Everything the caller sent is checked before anything is made; the folders a kernel mounts are pinned
        (``_pin_folders``) and Docker is given only root-owned paths to them."""
        if caller.uid == 0:
            raise NotPermitted("the broker never runs a kernel as root: start it from a user's server")
        unknown = sorted(set(args) - _START_ARGS)
        if unknown:
            raise InvalidRequest(
                f"start_kernel takes no {', '.join(map(repr, unknown))}: only {', '.join(sorted(_START_ARGS))}"
            )
        kernel_id = self._kernel_id(_arg(args, "kernel_id", str), caller)
        env = self._environment(caller, args.get("environment"))
        rule = self.policy.rule_for(caller.name, list(caller.groups))
        check_start(rule, caller.name, env.name, 0, 0, 0)  # the environment itself, before anything is asked
        root_arg, cwd_arg = _arg(args, "root_dir", str), _arg(args, "cwd", str)
        socket_dir = self._folder_of(caller, kernel_id)
        asked = _arg(args, "socket_dir", str, required=False)
        if asked is not None and os.path.normpath(asked) != socket_dir:
            raise InvalidRequest(f"the kernel's socket folder is {socket_dir}, the one the broker gave")
        connection_file = _arg(args, "connection_file", str)
        if os.path.dirname(os.path.normpath(connection_file)) != socket_dir:
            raise InvalidRequest("the connection file must be in the kernel's socket folder")
        keep = self._keep(caller, kernel_id, env, args.get("keep_gpus"))
        server_env = _server_env(args.get("server_env"))
        terminal, wait = args.get("terminal"), args.get("wait")
        for key, value in (("terminal", terminal), ("wait", wait)):
            if value is not None and not isinstance(value, bool):
                raise InvalidRequest(f"'{key}' must be true or false")
        if caller.volume:  # a path inside the user's own container: only their volume's folder is theirs
            root_dir, cwd = os.path.normpath(root_arg), os.path.normpath(cwd_arg)
            if not os.path.isabs(root_dir) or not within(root_dir, caller.home):
                raise NotPermitted(f"the server's root folder {root_arg} is outside {caller.home}, the folder this "
                                   "host shares with kernels")  # fmt: skip
            check_cwd(cwd, root_dir, caller.home)
        elif not os.path.isabs(root_arg):
            raise InvalidRequest(f"the server's root folder must be an absolute path, got {root_arg!r}")
        if socket_dir not in self.pending and self.book.get(caller.name, kernel_id) is None:
            raise InvalidRequest(f"ask for kernel {kernel_id}'s socket folder (socket_folder) before starting it")

        self.starting.add(socket_dir)
        try:
            # in a cluster the GPUs are the chosen host's: this host's image and runtime are checked here
            verdict = await self._verdict(dataclasses.replace(env, gpus=GpuPolicy("none")) if self.cluster else env)
            verdict.raise_if_refused()
            if verdict.state in (preflight.IMAGE_MISSING, preflight.PULLING):
                await self.docker.pull(env.image, lambda p: progress(p.as_dict()))
                verdict = await self._verdict(env)
                verdict.raise_if_refused()
            pinned = {} if caller.volume else self._pin_folders(caller, root_arg, caller.home)
            try:
                if not caller.volume:
                    root_dir = next(iter(pinned))
                    cwd = os.path.realpath(cwd_arg)  # a string the container resolves in its own view
                    check_cwd(cwd, root_dir, caller.home)
                await race_window(kernel_id)
                if self.cluster is not None:
                    return await self._start_in_cluster(caller, kernel_id, env, rule, root_dir, cwd, socket_dir,
                                                        connection_file, server_env, bool(terminal), verdict,
                                                        bool(wait), progress)  # fmt: skip
                return await self._start(caller, kernel_id, env, rule, root_dir, cwd, socket_dir, connection_file,
                                         keep, server_env, bool(terminal), verdict, pinned)  # fmt: skip
            finally:
                for pin in pinned.values():
                    pin.close()
        finally:
            self.starting.discard(socket_dir)

    def _book_start(
        self, caller: Caller, kernel_id: str, env: Environment, socket_dir: str, server_env: dict[str, str]
    ) -> KernelLease:
        """The lease of a start under way, in the book before any container exists (a crash mid-start is then
        cleaned up at recovery); tied to the calling process, so the kernel goes when that client does."""
        lease = KernelLease(kernel_id, caller.uid, caller.name, env.name, socket_dir, server_pid=caller.pid,
                            server_started=process_start(caller.pid))  # fmt: skip
        lease.notebook = server_env.get("JPY_SESSION_NAME", "")[:1000]  # the caller's word: a label, nothing more
        self.book.put(lease)
        return lease

    async def _start(
        self,
        caller: Caller,
        kernel_id: str,
        env: Environment,
        rule: Any,
        root_dir: str,
        cwd: str,
        socket_dir: str,
        connection_file: str,
        keep: list[str],
        server_env: dict[str, str],
        terminal: bool,
        verdict: preflight.Verdict,
        pinned: dict[str, broker_folders.Pinned],
    ) -> dict[str, Any]:
        async with self.lock:
            mine = [k for k in self.book.of_user(caller.name) if k.kernel_id != kernel_id]
            check_start(rule, caller.name, env.name, self.gpus_wanted(env), sum(len(k.gpus) for k in mine), len(mine))
            lease = self._book_start(caller, kernel_id, env, socket_dir, server_env)
            held = self.book.holdings(excluding=(caller.name, kernel_id))
            held.names = self._names(caller)
            try:
                with broker_folders.staged(self.staging, pinned) as sources:
                    request = KernelRequest(
                        environment=env,
                        kernel_id=kernel_id,
                        user=host.User(caller.name, caller.uid, caller.gid, caller.home),
                        server=host.Server(self.hostname, caller.pid),
                        root_dir=root_dir,
                        cwd=cwd,
                        socket_dir=socket_dir,
                        connection_file=connection_file,
                        inventory=list(self.sampler.latest.gpus),
                        keep_gpus=keep,
                        runtime_dir=runtime.runtime_path(self.settings.kernel_runtime_dir, verdict.runtime_version)
                        if verdict.runtime_version
                        else None,
                        server_env=server_env,
                        labels={labels.BROKER: self.settings.socket},
                        user_volume=caller.volume,
                        held=held,
                        shared_network_namespace=self.settings.shared_network_namespace,  # keyed by uid and name
                        terminal=terminal,  # a terminal's own container: the broker's fixed command
                        sources=sources,
                    )
                    placement = await self.docker.start_kernel(request)
            except BaseException:
                self.book.drop(lease)
                raise
            lease.state, lease.container_id = RUNNING, placement.container_id
            lease.gpus, lease.exclusive = [g.uuid for g in placement.gpus], env.gpus.kind == "exclusive"
            self.book.put(lease)
            self.pending.pop(socket_dir, None)
            self.released.pop((caller.name, kernel_id), None)
        log.info("gpuenv broker: %s's kernel %s runs in %s (GPUs %s)", caller.name, kernel_id,
                 placement.container_id[:12], [g.index for g in placement.gpus] or "none")  # fmt: skip
        return {
            "container_id": placement.container_id,
            "gpu_mode": placement.gpu_mode,
            "gpus": [asdict(g) for g in placement.gpus],
        }

    async def _start_in_cluster(
        self,
        caller: Caller,
        kernel_id: str,
        env: Environment,
        rule: Any,
        root_dir: str,
        cwd: str,
        socket_dir: str,
        connection_file: str,
        server_env: dict[str, str],
        terminal: bool,
        verdict: preflight.Verdict,
        wait: bool,
        progress: Callable,
    ) -> dict[str, Any]:
        """The start as a Swarm service on whichever host has room (``broker.cluster``), limits counted on every
        host; not under the host's lock, since a start may wait in line for a GPU."""
        assert self.cluster is not None
        lease = self._book_start(caller, kernel_id, env, socket_dir, server_env)
        folders = {"root": root_dir, "home": caller.home}  # what the chosen host's broker checks there
        try:
            facts = containers.LaunchFacts(
                kernel_id=kernel_id,
                user=host.User(caller.name, caller.uid, caller.gid, caller.home),
                server_host=self.hostname,
                server_pid=caller.pid,
                root_dir=root_dir,
                cwd=cwd,
                socket_dir=socket_dir,
                connection_file=connection_file,
                gpu_mode="none",  # the chosen host's runtime adds the GPUs Swarm reserved
                runtime_dir=runtime.runtime_path(self.settings.kernel_runtime_dir, verdict.runtime_version)
                if verdict.runtime_version
                else None,
                server_env=server_env,
                terminal=terminal,
            )
            request = broker_cluster.service_request(
                env, self.cluster.kind_of(env), containers.spec(env, facts), kernel_id, caller.name, caller.uid,
                caller.gid, lease.notebook,
            )  # fmt: skip
            placement = await self.cluster.start(
                request, rule, wait, progress,
                lambda node, r: self._prepare_remote(caller, kernel_id, socket_dir, connection_file, node, r, folders),
            )  # fmt: skip
            try:
                await self._relay_channels(caller, kernel_id, connection_file, placement.host)
            except BaseException:
                await self.cluster.remove(placement.service_id)
                raise
        except BaseException:
            self.book.drop(lease)
            raise
        lease.state, lease.container_id = RUNNING, placement.service_id
        lease.gpus, lease.exclusive, lease.connection_file = list(placement.gpus), True, connection_file
        self.book.put(lease)
        self.pending.pop(socket_dir, None)
        log.info("gpuenv broker: %s's kernel %s runs on %s (GPUs %s)", caller.name, kernel_id, placement.host,
                 list(placement.gpus) or "none")  # fmt: skip
        return {
            "container_id": placement.service_id,
            "gpu_mode": "swarm",
            "gpus": [{"index": i, "uuid": uuid, "minor": None} for i, uuid in enumerate(placement.gpus)],
            "host": placement.host,
        }


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shell: Any) -> None:
    """Carry a terminal's bytes between a client's connection and its shell until either side ends."""

    async def typed() -> None:
        while data := await reader.read(1 << 16):
            await shell.write(data)

    async def shown() -> None:
        while data := await shell.read():
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(typed()), asyncio.ensure_future(shown())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _error(exc: GpuEnvError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "status": exc.status, "message": str(exc)}
