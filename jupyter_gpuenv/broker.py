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
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, Dict, Enum, Float, Int, Unicode
from traitlets.config import Configurable

from . import broker_metrics, host, labels, preflight, runtime
from .broker_parking import BrokerParking
from .containers import check_cwd, within
from .docker_engine import DockerEngine
from .engine import KernelRequest
from .environments import Environment, parse_environment
from .errors import (
    EngineUnreachable,
    GpuEnvError,
    InvalidEnvironment,
    InvalidKernelId,
    InvalidRequest,
    NotPermitted,
    UnknownKernel,
)
from .leases import RUNNING, KernelLease, LeaseBook
from .parking import IdlePolicy
from .policy import Policy, check_start
from .sampler import Sampler
from .visibility import from_environment

log = logging.getLogger("jupyter_gpuenv.broker")
_KERNEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
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
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_REQUEST = 1 << 16
TOKEN_MEMORY = 10.0  # seconds a hub token's owner is remembered (a revoked token works this much longer)


class Broker(Configurable):
    """The broker's settings, ``c.Broker.<name>`` in its configuration file."""

    socket = Unicode(
        "/run/jupyter-gpuenv/broker.sock",
        config=True,
        help="The unix socket servers connect to. Its folder is made root-owned (0755) and also holds the lease "
        "book (leases.json) and each kernel's socket folder (sockets/<uid>/<kernel id>, owned by that user).",
    )
    environments = Dict(
        config=True,
        help="The container environments of this host, by name, in the schema of c.GpuEnv.environments. "
        "Nothing else can start: a user's kernelspec only names one of these.",
    )
    policy = Dict(
        config=True,
        help="Who may use what: {'default': RULE, 'groups': {GROUP: RULE}, 'users': {NAME: RULE}}, a RULE being "
        "{'environments': [NAMES] or '*', 'max_gpus': N, 'max_kernels': N}. A user's own rule wins, then the "
        "most permissive of their groups', then the default. Empty: everyone may use everything.",
    )
    show_other_users = Enum(
        ["name", "anonymous"],
        "name",
        config=True,
        help="How a refusal and the panel name another person's kernel: by user name, or as 'another user'.",
    )
    docker_url = Unicode(None, allow_none=True, config=True, help="The Docker engine. Unset: the default socket.")
    docker_timeout = Float(5.0, config=True, help="Seconds the engine may take to answer one call.")
    visible_devices = Unicode(
        None, allow_none=True, config=True, help="GPUs the broker gives out ('0,1', UUIDs). Unset: all of them."
    )
    pull_missing_images = Bool(True, config=True, help="Pull an environment's missing image at its first start.")
    kernel_runtime_dir = Unicode(
        "/var/lib/jupyter-gpuenv/kernel-runtimes",
        config=True,
        help="Prepared kernel runtimes (`jupyter gpuenv prepare-runtime --dir ...`) for images without ipykernel.",
    )
    identify = Enum(
        ["peer", "hub-token"],
        "peer",
        config=True,
        help="How the broker knows who calls. 'peer': the caller's Unix account, from the socket itself (servers "
        "run as each person's account: TLJH, SystemdSpawner, LocalProcessSpawner). 'hub-token': the caller "
        "presents its server's JUPYTERHUB_API_TOKEN and the hub says whose it is (servers in containers that "
        "all run as one uid: DockerSpawner).",
    )
    hub_api_url = Unicode(
        os.environ.get("JUPYTERHUB_API_URL", ""),
        config=True,
        help="The hub's API, for hub-token mode (a hub-managed service gets it as JUPYTERHUB_API_URL).",
    )
    hub_uid = Int(1000, config=True, help="hub-token mode: the uid every user's server runs as (docker-stacks: 1000).")
    hub_gid = Int(100, config=True, help="hub-token mode: its gid (docker-stacks: 100).")
    hub_work_dir = Unicode(
        "/home/jovyan/work",
        config=True,
        help="hub-token mode: where each user's volume is mounted in their server's container; their kernels get "
        "the same volume at the same path, and nothing else of the host.",
    )
    hub_volume = Unicode(
        "jupyterhub-user-{username}",
        config=True,
        help="hub-token mode: the Docker volume that holds a user's files, as DockerSpawner names it.",
    )
    sample_interval = Float(2.0, config=True, help="Seconds between two reads of the GPUs (NVML).")
    park_idle_minutes = Float(
        0.0,
        config=True,
        help="Park every user's kernel that has been idle this many minutes while its GPUs did no work: its GPU "
        "memory moves to host memory, its GPU is free for others, its variables stay, and running a cell resumes "
        "it. 0: never (users may still park their own).",
    )
    park_min_gpu_memory_gib = Float(
        1.0, config=True, help="The idle policy parks only kernels holding at least this much GPU memory (GiB)."
    )
    park_timeout = Float(300.0, config=True, help="Seconds a park or resume may take before it is reported failed.")
    metrics_port = Int(
        9839,
        config=True,
        help="The port of the broker's Prometheus endpoint, http://<metrics_address>:<port>/metrics: every user's "
        "kernels and GPU usage on this host, one scrape target for the administrator (docs/metrics.md). 0: off.",
    )
    metrics_address = Unicode(
        "127.0.0.1", config=True, help="Where the endpoint listens: a loopback address, unless metrics_public is True."
    )
    metrics_public = Bool(
        False,
        config=True,
        help="Allow a metrics_address that is not loopback, for a Prometheus on another machine. The series name "
        "every user's notebooks; the token keeps them from other users, but plain HTTP does not hide them on the "
        "network: use one you trust, or a TLS proxy.",
    )
    metrics_token_file = Unicode(
        "/var/lib/jupyter-gpuenv/metrics.token",
        config=True,
        help="The bearer token a scrape must send. Made if missing (64 hex digits, 0600, root's); refused if everyone "
        "may read it. Give Prometheus a copy, or `chgrp prometheus` it and `chmod 0640`.",
    )
    usage_dir = Unicode(
        "/var/lib/jupyter-gpuenv/usage",
        config=True,
        help="The host's usage ledger (every user's kernels; root's, 0700): `sudo jupyter gpuenv usage --dir <it>` "
        "prints GPU-hours per user without Prometheus. Empty: no ledger.",
    )
    usage_flush_interval = Float(
        60.0,
        config=True,
        help="Seconds between two writes of the usage ledger (the first record after a quiet spell is written at "
        "once, and one when the broker stops).",
    )
    orphan_interval = Float(
        10.0, config=True, help="Seconds between two looks for kernels whose server is gone (they are removed)."
    )
    shared_network_namespace = Bool(
        True,
        config=True,
        help="Kernels without network join one no-network namespace per user (loopback only; never another "
        "user's) instead of one each: a faster start. A user's kernels then share 127.0.0.1, as local kernels do. "
        "False: a namespace per kernel.",
    )


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
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def _arg(args: dict[str, Any], key: str, kind: type, required: bool = True) -> Any:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidRequest(f"'{key}' must be a {kind.__name__}")
    return value


class BrokerDaemon:
    """The broker at work: its engine, its GPU sampler, its lease book, its policy."""

    def __init__(self, settings: Broker) -> None:
        self.settings = settings
        self.folder = os.path.dirname(os.path.abspath(settings.socket))
        self.sockets = os.path.join(self.folder, "sockets")
        self.policy = Policy.parse(settings.policy)
        self.environments = {
            name: parse_environment(name, raw, "c.Broker.environments") for name, raw in settings.environments.items()
        }
        self.docker = DockerEngine(settings.docker_url, settings.docker_timeout, None, log)
        self.book = LeaseBook(os.path.join(self.folder, "leases.json"))
        self.sampler = Sampler(
            interval=settings.sample_interval,
            history_length=2 + int(settings.park_idle_minutes * 60 / settings.sample_interval),  # the idle window
            visibility=from_environment(settings.visible_devices),
            attribute=lambda snapshot: broker_metrics.attribute(snapshot, self.book),  # GPU memory by container
            log=log,
        )
        self.metrics = broker_metrics.BrokerMetrics(settings, self.book, self.sampler)
        self.lock = asyncio.Lock()  # one GPU decision at a time, for every user of the host
        idle = IdlePolicy(settings.park_idle_minutes, int(settings.park_min_gpu_memory_gib * 2**30))
        self.parking = BrokerParking(self, idle, settings.park_timeout)
        self._tokens: dict[str, tuple[str, tuple[str, ...], float]] = {}
        self.hostname = socket.gethostname()
        self.shells: dict[str, tuple[str, Any]] = {}  # open terminal shells: id -> (their user's name, the shell)

    # -- life ------------------------------------------------------------------------------------------
    def prepare_folders(self) -> None:
        """The broker's folder: root's, not writable by anyone else; made if missing."""
        for path in (self.folder, self.sockets):
            os.makedirs(path, mode=0o755, exist_ok=True)
            info = os.lstat(path)
            if info.st_uid != os.getuid() or info.st_mode & 0o022 or os.path.islink(path):
                raise SystemExit(f"{path} must be a folder of the broker's own user, writable by no one else")

    async def recover(self) -> None:
        """After a restart: keep running kernels' leases, remove what an interrupted start left."""
        self.book.load()
        mine = self.settings.socket  # this broker's containers; another broker on the same engine keeps its own
        containers = {c.kernel_id: c for c in await self.docker.kernels() if c.labels.get(labels.BROKER) == mine}
        for lease in self.book:
            found = containers.pop(lease.kernel_id, None)
            if lease.state != RUNNING:
                log.warning("gpuenv broker: removing what the interrupted start of kernel %s left", lease.kernel_id)
                if found is not None:
                    await self.docker.remove(found.id)
                shutil.rmtree(lease.socket_dir, ignore_errors=True)
                self.book.drop(lease)
            elif found is None or not found.active:
                self.book.drop(lease)  # its container ended while we were away: the GPU is free again
        for orphan in containers.values():  # created, and the broker died before it wrote the lease
            log.warning("gpuenv broker: removing container %s, which no lease names", orphan.name)
            await self.docker.remove(orphan.id)

    async def serve(self) -> None:
        self.prepare_folders()
        self.sampler.start()
        await self.recover()
        await self.metrics.start()
        if os.path.exists(self.settings.socket):
            os.unlink(self.settings.socket)
        server = await asyncio.start_unix_server(self.handle, path=self.settings.socket, limit=MAX_REQUEST)
        os.chmod(self.settings.socket, 0o666)  # anyone may ask; who asks is known from the socket
        log.info("gpuenv broker: serving %s (%d environments)", self.settings.socket, len(self.environments))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        sweeper = asyncio.ensure_future(self.sweep_orphans(stop))
        parking = asyncio.ensure_future(self.parking.tend(stop, self.settings.sample_interval))
        async with server:
            await stop.wait()
        sweeper.cancel()
        parking.cancel()
        await self.metrics.stop()
        self.sampler.stop()
        self.docker.close()

    async def sweep_orphans(self, stop: asyncio.Event) -> None:
        """Kernels whose server process is gone (a killed server, a crashed spawner) are removed."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.orphan_interval)
            async with self.lock:
                for lease in self.book:
                    if (
                        lease.state == RUNNING
                        and lease.server_pid
                        and process_start(lease.server_pid) != (lease.server_started)
                    ):
                        log.warning("gpuenv broker: kernel %s of %s lost its server; removing it", lease.kernel_id,
                                    lease.user)  # fmt: skip
                        await self._remove_lease(lease)
                try:  # a user's namespace holder, once no kernel of theirs joins it and its server is gone
                    await self.docker.remove_unused_holders(self._holder_orphaned)
                except GpuEnvError as exc:
                    log.warning("gpuenv broker: unused namespace holders are removed later: %s", exc)

    def _holder_orphaned(self, holder: labels.KernelContainer) -> bool:
        pid = holder.server_pid
        return holder.server_host == self.hostname and pid.isdigit() and process_start(int(pid)) == 0

    async def _remove_lease(self, lease: KernelLease) -> None:
        try:
            if lease.container_id:
                await self.docker.remove(lease.container_id)
        finally:
            shutil.rmtree(lease.socket_dir, ignore_errors=True)
            self.book.drop(lease)

    # -- one request -----------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")

        try:
            pid, uid, _ = peer(writer.get_extra_info("socket"))
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                    raise ValueError
            except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                raise InvalidRequest('a request is one line of JSON: {"op": NAME, "args": {...}}') from None
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise InvalidRequest("'args' must be a JSON object")
            caller = await self.identify(uid, pid, request.get("hub_token"))
            if request["op"] == "exec_shell":  # answered, then this connection carries the shell's bytes
                await self.exec_shell(caller, args, reader, writer)
                return
            send({"result": await self.dispatch(caller, request["op"], args, lambda p: send({"progress": p}))})
        except GpuEnvError as exc:
            send({"error": {"type": type(exc).__name__, "status": exc.status, "message": str(exc)}})
        except Exception:  # a bug: say so, and keep serving everyone else
            log.exception("gpuenv broker: a request failed")
            send({"error": {"type": "BrokerError", "status": 500, "message": "the GPU broker failed; see its log"}})
        finally:
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, OSError):
                pass

    async def dispatch(self, caller: Caller, op: str, args: dict[str, Any], progress: Callable) -> Any:
        if op == "hello":
            return {"user": caller.name, "uid": caller.uid, "mode": self.settings.identify}
        if op == "environments":
            return [await self.environment_row(caller, name) for name in sorted(self.environments)
                    if self.policy.rule_for(caller.name, list(caller.groups)).allows(name)]  # fmt: skip
        if op == "socket_folder":
            return {"path": self.socket_folder(caller, _arg(args, "kernel_id", str))}
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
            owner, shell = self.shells.get(_arg(args, "shell", str), (None, None))
            if owner != caller.name:
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
            return {k.container_id: names[k.kernel_id] for k in self.book if k.container_id}
        if op in ("state", "signal", "remove"):
            lease = self.book.by_container(caller.name, _arg(args, "container_id", str))
            if lease is None:
                raise UnknownKernel("no such kernel container of yours")
            if op == "state":
                return asdict(await self.docker.state(lease.container_id))
            if op == "signal":
                await self.docker.signal(lease.container_id, _arg(args, "signum", int))
                return {}
            async with self.lock:
                last = await self.docker.remove(lease.container_id)
                self.book.drop(lease)
            return asdict(last) if last else None
        raise InvalidRequest(f"unknown operation {op!r}")

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
        if not _KERNEL_ID.match(kernel_id):
            raise InvalidKernelId(f"kernel id {kernel_id!r} is not allowed: use letters, digits, '-' and '_'")
        holder = self.book.holder_of(kernel_id)
        if caller is not None and holder is not None and holder.user != caller.name:
            raise InvalidKernelId(f"kernel id {kernel_id!r} is taken on this host: let the server choose one")
        return kernel_id

    def socket_folder(self, caller: Caller, kernel_id: str) -> str:
        """sockets/<uid>/<kernel id>: the user's own (0700) in the broker's root-owned tree, never in /tmp."""
        mine = os.path.join(self.sockets, caller.folder)
        path = os.path.join(mine, self._kernel_id(kernel_id, caller))
        for folder in (mine, path):
            try:
                os.mkdir(folder, 0o700)
                os.chown(folder, caller.uid, caller.gid)
            except FileExistsError:
                info = os.lstat(folder)
                if not os.path.isdir(folder) or os.path.islink(folder):
                    raise InvalidRequest(f"{folder} is not a folder of {caller.name}'s") from None
                if info.st_uid == os.getuid() and folder == mine:  # made by the engine for a spawner's bind mount
                    os.chown(folder, caller.uid, caller.gid)
                    os.chmod(folder, 0o700)
                elif info.st_uid != caller.uid:
                    raise InvalidRequest(f"{folder} is not a folder of {caller.name}'s") from None
        return path

    def _user_folder(self, caller: Caller, path: str, what: str) -> str:
        """A folder the caller owns, or one inside their home: what a kernel of theirs may see."""
        if not os.path.isabs(path):
            raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
        if caller.volume:  # a path inside the user's own container: only their volume's folder is theirs
            normal = os.path.normpath(path)
            if not within(normal, caller.home):
                raise NotPermitted(f"{what} {path} is outside {caller.home}, the folder this host shares with kernels")
            return normal
        real = os.path.realpath(path)
        try:
            owner = os.stat(real).st_uid
        except OSError:
            raise InvalidRequest(f"{what} {path} does not exist") from None
        if owner != caller.uid and not within(real, os.path.realpath(caller.home)):
            raise NotPermitted(f"{what} {path} is not {caller.name}'s: a kernel sees only its user's own folders")
        return real

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
        image = await preflight.image_facts(self.docker, env)
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
            holders = held.exclusive.get(g.uuid, []) + held.shared.get(g.uuid, [])
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

    async def start_kernel(self, caller: Caller, args: dict[str, Any], progress: Callable) -> dict[str, Any]:
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
        root_dir = self._user_folder(caller, _arg(args, "root_dir", str), "the server's root folder")
        cwd = os.path.normpath(_arg(args, "cwd", str)) if caller.volume else os.path.realpath(_arg(args, "cwd", str))
        check_cwd(cwd, root_dir, caller.home)
        socket_dir = self.socket_folder(caller, kernel_id)
        connection_file = _arg(args, "connection_file", str)
        if os.path.dirname(os.path.realpath(connection_file)) != socket_dir:
            raise InvalidRequest("the connection file must be in the kernel's socket folder")
        keep = [g for g in (args.get("keep_gpus") or []) if isinstance(g, str)]
        server_env = {k: v for k, v in (args.get("server_env") or {}).items() if isinstance(v, str)}

        verdict = await self._verdict(env)
        verdict.raise_if_refused()
        if verdict.state in (preflight.IMAGE_MISSING, preflight.PULLING):
            await self.docker.pull(env.image, lambda p: progress(p.as_dict()))
            verdict = await self._verdict(env)
            verdict.raise_if_refused()
        async with self.lock:
            mine = [k for k in self.book.of_user(caller.name) if k.kernel_id != kernel_id]
            wanted = env.gpus.count if env.gpus.kind in ("count", "exclusive", "ids") else (
                len(self.sampler.latest.gpus) if env.gpus.wants_gpus else 0
            )  # fmt: skip
            check_start(rule, caller.name, env.name, wanted, sum(len(k.gpus) for k in mine), len(mine))
            lease = KernelLease(kernel_id, caller.uid, caller.name, env.name, socket_dir, server_pid=caller.pid,
                                server_started=process_start(caller.pid))  # fmt: skip
            lease.notebook = server_env.get("JPY_SESSION_NAME", "")[:1000]  # the caller's word: a label, nothing more
            self.book.put(lease)
            held = self.book.holdings(excluding=(caller.name, kernel_id))
            held.names = self._names(caller)
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
                terminal=args.get("terminal") is True,  # a terminal's own container: the broker's fixed command
            )
            try:
                placement = await self.docker.start_kernel(request)
            except BaseException:
                self.book.drop(lease)
                raise
            lease.state, lease.container_id = RUNNING, placement.container_id
            lease.gpus, lease.exclusive = [g.uuid for g in placement.gpus], env.gpus.kind == "exclusive"
            self.book.put(lease)
        log.info("gpuenv broker: %s's kernel %s runs in %s (GPUs %s)", caller.name, kernel_id,
                 placement.container_id[:12], [g.index for g in placement.gpus] or "none")  # fmt: skip
        return {
            "container_id": placement.container_id,
            "gpu_mode": placement.gpu_mode,
            "gpus": [asdict(g) for g in placement.gpus],
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


def load_settings(config_file: str | None) -> Broker:
    """The settings in ``config_file`` (default /etc/jupyter-gpuenv/broker_config.py), checked as a whole:
    ``broker_setup.ConfigProblems`` names everything wrong with it at once."""
    from .broker_setup import load_config

    return load_config(config_file)


def main(config_file: str | None) -> int:
    from .broker_catalog import CatalogBroker, serve
    from .broker_setup import ConfigProblems

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s")
    try:
        daemon = CatalogBroker(load_settings(config_file))
    except ConfigProblems as exc:  # every problem, each on a line of its own
        log.error("gpuenv broker: %s", exc)
        return 2
    except (InvalidEnvironment, ValueError) as exc:
        log.error("gpuenv broker: %s", exc)
        return 2
    asyncio.run(serve(daemon))
    return 0
