"""What the provisioner needs from whatever runs its containers: the ``Engine`` interface and its values.

Two implementations stand behind it: ``docker_engine.DockerEngine`` talks to a Docker engine directly (one
person's machine), and a broker client talks to the shared-host broker that owns the engine for every user.
Every method is a coroutine that answers within its engine's timeout or raises one of ``errors``'s
``EngineUnavailable`` classes; none blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from jupyter_gpuenv.containers.allocation import Holdings
from jupyter_gpuenv.containers.labels import KernelContainer
from jupyter_gpuenv.containers.spec import AssignedGpu
from jupyter_gpuenv.containers.warm import FIFO
from jupyter_gpuenv.environments.definition import Environment
from jupyter_gpuenv.environments.preflight import ImageFacts, Verdict
from jupyter_gpuenv.gpus.nvml import GpuSample, Snapshot
from jupyter_gpuenv.host import Server, User
from jupyter_gpuenv.pulls.progress import PullProgress


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    gone: bool = False  # removed from outside


@dataclass
class KernelRequest:
    """One kernel container to create and start; the engine picks its GPUs under its lease lock."""

    environment: Environment
    kernel_id: str
    user: User
    server: Server
    root_dir: str
    cwd: str
    socket_dir: str
    connection_file: str
    inventory: list[GpuSample] = field(default_factory=list)  # the GPUs the server may give
    keep_gpus: list[str] = field(default_factory=list)  # uuids a restarted kernel had: it gets them again
    runtime_dir: str | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # recorded on the container besides the kernel's own
    user_volume: str | None = None  # the user's files as a Docker volume (servers in containers)
    held: Holdings | None = None  # who holds which GPU, when the caller keeps that record (the broker's leases)
    terminal: bool = False  # a container for a terminal alone: it runs containers.TERMINAL_COMMAND, not a kernel
    shared_network_namespace: bool = False  # join the user's no-network namespace holder (network "none" only)
    sources: dict[str, str] = field(default_factory=dict)  # folder -> a root-owned path to mount it from (broker)
    command: list[str] | None = None  # instead of the kernel's launcher: a warm kernel's (server.warm)


@dataclass(frozen=True)
class Placement:
    """Where a kernel runs: its container, how its GPUs are attached, which GPUs."""

    container_id: str
    gpu_mode: str  # "toolkit", "devices" or "none"
    gpus: tuple[AssignedGpu, ...] = ()


@dataclass
class WarmTaken:
    """A warm kernel the engine bound to a start (a shared host's broker does, ``take_warm``): its socket folder, its
    container, and the open client lock (``containers.spec.CLIENT_LOCK``) the engine held while it was warm, now the
    caller's to hold for as long as the kernel is theirs. The caller sends it its order (``containers.warm``)."""

    name: str
    folder: str
    placement: Placement
    lock: int | None

    @property
    def fifo(self) -> str:
        return os.path.join(self.folder, FIFO)

    def release_lock(self) -> int | None:
        fd, self.lock = self.lock, None
        return fd


class Engine(Protocol):
    """Kernel containers: what the provisioner and the reports ask of an engine."""

    async def image_facts(self, image: str, python: str | None = None, env: dict[str, str] | None = None) -> ImageFacts:
        """The image's facts; with ``python``, also its Python version and whether it imports ipykernel."""

    async def pull(self, image: str, on_progress: Callable[[PullProgress], None] | None = None) -> None:
        """Pull ``image``, or wait for the pull of it already under way (one per image, for every caller).

        ``on_progress`` is called about twice a second while waiting. Raises a ``PullFailed`` class (registry
        unreachable, unknown image, credentials needed, stalled, interrupted) or ``DiskTooSmall``. Cancelling
        the wait leaves the pull running for the others.
        """

    def pull_progress(self, image: str) -> PullProgress | None:
        """The pull of ``image`` under way, else None (no engine call)."""

    def pull_failure(self, image: str) -> PullProgress | None:
        """How the last pull of ``image`` failed, until the next one starts; else None (no engine call)."""

    async def kernels(self) -> list[KernelContainer]:
        """Every kernel container on the engine, running or not."""

    async def start_kernel(self, request: KernelRequest) -> Placement:
        """Choose GPUs, create and start the container; NoFreeGpu, EngineRefused, … when it cannot."""

    async def state(self, container_id: str) -> ContainerState:
        """Whether it runs; ``gone`` when it was removed."""

    async def signal(self, container_id: str, signum: int) -> None:
        """Send ``signum`` to the kernel (docker-init forwards it); nothing if the container is gone."""

    async def remove(self, container_id: str) -> ContainerState | None:
        """Remove it, returning its last state (to tell why it ended); None if it was already gone."""

    async def exec_shell(self, container_id: str, user: str) -> Shell:
        """An interactive shell with a terminal inside a running container, as ``user`` ("uid:gid").

        The shell gets what the container has (GPUs, mounts, variables, limits, working folder) and nothing
        more: ``user`` must be the one the container runs as, and never root (NotPermitted). UnknownKernel when
        the container is gone, CannotStartHere when it is not running.
        """

    # -- what a start needs around its container: this server does it on one person's machine (``local``),
    # the broker on a shared host (``broker``). Callers never ask which.
    shared_host: bool
    """Whether other people's kernels share this host's GPUs and a broker decides for everyone: it then runs
    kernels as the caller (never root), parks container kernels, sweeps orphans, and names other people's
    holders. False on one person's machine, where kernels run as this server's own uid (root if it is root)."""

    @property
    def books_dir(self) -> str:
        """Where this server keeps its own books (park records, warm kernels), private to its user."""

    async def environment_report(self, specs: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
        """``GET environments``: ``{"docker": {available, reason}, "environments": [row, ...]}``, each row with the
        verdict a start would reach (``specs``: the server's kernelspecs)."""

    async def sweep_orphans(self) -> list[str]:
        """Remove what an earlier, dead server of this user on this host left; the names of what went."""

    async def holders(self) -> dict[str, Any]:
        """Whose kernel each container on this host's GPUs is, for the panel: other people's by what the
        administrator lets users see (``c.Broker.show_other_users``)."""

    def kernelspec_environment(self, config: dict[str, Any], source: str) -> tuple[str, Environment | None]:
        """The environment a kernelspec's provisioner ``config`` names, and its definition if it is known here
        (None: ask ``environment`` at start). InvalidEnvironment if the kernelspec is wrong for this engine."""

    async def environment(self, name: str, specs: dict[str, Any] | None = None) -> Environment:
        """The definition of environment ``name`` (``specs``: the server's kernelspecs, which may define some);
        InvalidEnvironment or NotPermitted when there is none for this user."""

    async def verdict(self, env: Environment, snapshot: Snapshot, pull_allowed: bool) -> Verdict:
        """Whether a kernel of ``env`` can start now (``preflight.check``), from what this engine can see; an engine
        that checks at start itself (the broker) answers ready."""

    async def socket_folder(self, kernel_id: str) -> str:
        """A new private folder (0700, this user's) for the kernel's sockets and connection file. InvalidKernelId
        when its path would be too long for unix sockets."""

    async def remove_socket_folder(self, kernel_id: str, path: str) -> None:
        """The kernel is done with its socket folder ``path``: it goes, with what is inside."""

    def watch_client(self) -> None:
        """Make sure that this process's kernels go when this process dies, however it dies (blocking: a fork)."""

    async def keep_warm(self, root_dir: str) -> None:
        """This server runs, with ``root_dir`` as its root folder: keep its person's warm kernels (a shared host's
        broker; asked every few seconds, and forgotten once this process is gone). One person's machine: nothing,
        the server keeps its own (``server.warm``)."""

    async def take_warm(
        self, kernel_id: str, env: Environment, root_dir: str, server_env: dict[str, str]
    ) -> WarmTaken | None:
        """A warm kernel of ``env`` made for this person and this root folder, bound to ``kernel_id`` now (its lease,
        its notebook); None when there is none ready, or when the policy would refuse the start (a cold start then
        says why). One person's machine: None (the server's own pool is asked first)."""


class Shell(Protocol):
    """A shell that ``Engine.exec_shell`` opened: its terminal's bytes, both ways (server.terminals owns it)."""

    async def read(self) -> bytes:
        """What the shell wrote next; ``b""`` once it ended (exited, or its container went)."""

    async def write(self, data: bytes) -> None:
        """Type ``data`` into the shell's terminal."""

    async def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's size (the shell's programs get SIGWINCH)."""

    async def close(self) -> None:
        """End the shell as closing a terminal does (SIGHUP: its jobs end, what runs under tmux or nohup stays)."""


class StreamShell:
    """The byte half of a ``Shell`` whose terminal is one stream connection (the engine's exec socket, or the
    broker's request connection): reads end with ``b""`` and writes stop once the other side is gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(1 << 16)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            return
        self._writer.write(data)
        with suppress(ConnectionError, OSError):
            await self._writer.drain()


class ImageFactsSource(Protocol):
    """What ``image_facts_of`` needs: an ``Engine``, or the broker's own ``DockerEngine``, which is not one."""

    async def image_facts(self, image: str, python: str | None = None, env: dict[str, str] | None = None) -> ImageFacts:
        """As ``Engine.image_facts``."""


async def image_facts_of(engine: ImageFactsSource, env: Environment) -> ImageFacts:
    """The one question every verdict (``preflight.check``) asks the engine: its image, and its Python unless its
    own ipykernel is trusted (``kernel_runtime: image``)."""
    probe = None if env.kernel_runtime == "image" else env.python
    return await engine.image_facts(env.image, probe, dict(env.env))
