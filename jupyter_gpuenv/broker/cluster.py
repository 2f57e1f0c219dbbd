"""The broker's side of several GPU hosts (``c.Broker.cluster = "swarm"``): where a kernel start goes, who waits.

    connect(settings)   the one reader of ``c.Broker.cluster``: a ``Cluster``, or None on one host
    service_request     a kernel start as the broker decided it → the Swarm service's request (pure)
    Line                the queue of starts that asked to wait for a GPU, per GPU model (pure)
    Cluster             policy counted on every host, the queue, and the start itself (``SwarmEngine``)

Swarm retries a pending task only about every 14 s, so no task is ever left pending: a kernel's service is
created only when the broker's own count (from Swarm's record of every task's GPUs) says a host has room. A
start that asked to wait stands in line and is told its place (``{"queue": {"position": 2}}``); when a GPU of
its model comes free, the first in line takes it: at once for a release through this broker, within
``LOOK`` seconds for one anywhere else in the cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from jupyter_gpuenv.broker.policy import Rule, check_start
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.containers.spec import ContainerSpec
from jupyter_gpuenv.engines.swarm import placements as p
from jupyter_gpuenv.engines.swarm import service as s
from jupyter_gpuenv.engines.swarm.engine import SwarmEngine
from jupyter_gpuenv.environments.definition import Environment
from jupyter_gpuenv.errors import CannotStartHere, InvalidEnvironment, NoFreeGpu

Prepare = Callable[[p.Node, s.KernelRequest], Awaitable[s.KernelRequest]]
LOOK = 0.25  # seconds between two looks at the swarm while someone waits: a release elsewhere is seen this soon
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", re.IGNORECASE)


def connect(settings: Broker) -> Cluster | None:
    """The cluster this broker places kernels in, or None when it runs kernels on its own host (the default)."""
    if settings.cluster != "swarm":
        return None
    manager = settings.cluster_manager_url or settings.docker_url or "unix:///var/run/docker.sock"
    return Cluster(SwarmEngine(manager, settings.docker_timeout, settings.docker_url), settings.cluster_gpu_kinds)


def gpu_count(env: Environment) -> int:
    """GPUs one kernel of ``env`` takes on a cluster: Swarm's generic resources are whole GPUs, each one kernel's."""
    if env.gpus.kind in ("count", "exclusive"):
        return env.gpus.count
    if env.gpus.kind == "none":
        return 0
    raise InvalidEnvironment(
        f"environment {env.name!r}: gpus {env.gpus} has no meaning across hosts; give a count ('1', 'exclusive:2')"
    )


def size_bytes(text: str | None) -> int:
    """'16g' → bytes, as Docker reads a memory limit; 0 for none."""
    if not text:
        return 0
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise InvalidEnvironment(f"memory {text!r} is not a size such as '16g'")
    return int(float(found[1]) * 1024 ** (" kmgt".index(found[2].lower() or " ")))


def service_request(
    env: Environment, kind: str, spec: ContainerSpec, kernel_id: str, user: str, uid: int, gid: int, notebook: str
) -> s.KernelRequest:
    """The Swarm service of a kernel the broker decided (``spec``: ``containers.spec``'s answer, GPUs left out).

    The mounts are the plain paths (no pinned copies: those are this host's), which on the host the task lands
    on are the person's shared storage. The variables that would hide GPUs are dropped: the task's GPUs are
    what its host's runtime adds, exactly those Swarm reserved."""
    count = gpu_count(env)
    volumes = [m.source for m in spec.mounts if m.kind != "bind"]
    if volumes:
        raise InvalidEnvironment(f"the Docker volume {volumes[0]} is one host's: a cluster mounts shared folders only")
    variables = {k: v for k, v in spec.environment.items() if not (count and k == "CUDA_VISIBLE_DEVICES")}
    return s.KernelRequest(
        kernel_id=kernel_id,
        user=user,
        uid=uid,
        gid=gid,
        environment=env.name,
        image=spec.image,
        command=tuple(spec.command),
        notebook=notebook,
        gpu_kind=kind if count else "",
        gpu_count=count,
        mounts=tuple(s.BindMount(m.source, m.target, m.read_only) for m in spec.mounts),
        env=variables,
        workdir=spec.working_dir,
        memory_bytes=size_bytes(spec.memory),
        nano_cpus=spec.nano_cpus or 0,
    )


@dataclass
class Ticket:
    kind: str
    number: int
    position: int = 0  # last told


@dataclass
class Line:
    """Starts waiting for a GPU, first come first served within each GPU model."""

    waiting: list[Ticket] = field(default_factory=list)
    _numbers: Any = field(default_factory=lambda: itertools.count(1))

    def join(self, kind: str) -> Ticket:
        ticket = Ticket(kind, next(self._numbers))
        self.waiting.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        if ticket in self.waiting:
            self.waiting.remove(ticket)

    def position(self, ticket: Ticket) -> int:
        """1 for the first in line of its model."""
        return [t for t in self.waiting if t.kind == ticket.kind].index(ticket) + 1

    def ahead(self, kind: str) -> int:
        return sum(1 for t in self.waiting if t.kind == kind)


class Cluster:
    """Kernel starts placed by Swarm, with the person's limits counted on every host and a queue for GPUs."""

    def __init__(self, engine: SwarmEngine, gpu_kinds: dict[str, str]) -> None:
        self.engine, self.gpu_kinds = engine, gpu_kinds
        self.line = Line()
        self.lock = asyncio.Lock()  # one count-and-create at a time on this broker
        self._freed = asyncio.Event()

    def kind_of(self, env: Environment) -> str:
        return self.gpu_kinds.get(env.name, "") if gpu_count(env) else ""

    async def usage(self, user: str) -> tuple[int, int]:
        """(kernels, GPUs) ``user`` has on every host of the cluster, from Swarm's services and tasks."""
        mine = [k for k in await self.engine.kernels() if k.user == user and k.state not in p.ENDED]
        return len(mine), sum(len(k.gpus) for k in mine)

    async def start(
        self,
        request: s.KernelRequest,
        rule: Rule,
        wait: bool,
        progress: Callable[[dict[str, Any]], None],
        prepare: Prepare | None = None,
    ) -> p.Placement:
        """Start ``request`` where Swarm has room; NotPermitted past the person's limits on all hosts together;
        NoFreeGpu with the sentence naming hosts and holders, or, with ``wait``, its place in line until a GPU of
        its model is free. ``prepare``: the host is chosen first and made ready for the kernel (its broker makes
        the socket folder there), and the kernel is placed on it; without it, Swarm chooses."""
        if not request.gpu_count:
            async with self.lock:
                await self._check(request, rule)
                return await self._place(request, prepare)
        if not wait and self.line.ahead(request.gpu_kind):
            nodes, now = await self.engine.snapshot()
            waiting = self.line.ahead(request.gpu_kind)
            raise NoFreeGpu(
                p.no_room(request.gpu_kind, request.gpu_count, nodes, now)
                + f"\n{waiting} kernel(s) wait in line for one: ask to wait, and yours takes its place in line"
            )
        ticket = self.line.join(request.gpu_kind)
        try:
            while True:
                place = self.line.position(ticket)
                if place == 1:
                    async with self.lock:
                        await self._check(request, rule)
                        try:
                            return await self._place(request, prepare)
                        except NoFreeGpu:
                            if not wait:
                                raise
                if place != ticket.position:
                    ticket.position = place
                    progress({"queue": {"position": place, "gpu_kind": request.gpu_kind}})
                self._freed.clear()
                with suppress(asyncio.TimeoutError):  # a look at the swarm every LOOK s: releases elsewhere
                    await asyncio.wait_for(self._freed.wait(), LOOK)
        finally:
            self.line.leave(ticket)
            self._freed.set()  # the next in line looks at once

    async def _place(self, request: s.KernelRequest, prepare: Prepare | None) -> p.Placement:
        if prepare is None:
            return await self.engine.start_kernel(request)
        nodes, now = await self.engine.snapshot()
        node = p.choose_node(request.gpu_kind, request.gpu_count, nodes, now)
        if node is None and not request.gpu_count:
            raise CannotStartHere(
                "No host of the cluster takes CPU-only kernels now: the administrator labels such hosts with "
                f"`docker node update --label-add {s.CPU_HOSTS}=true <host>`"
            )
        if node is None:
            raise NoFreeGpu(p.no_room(request.gpu_kind, request.gpu_count, nodes, now))
        return await self.engine.start_kernel(await prepare(node, request), node=node.id)

    async def _check(self, request: s.KernelRequest, rule: Rule) -> None:
        kernels, gpus = await self.usage(request.user)
        check_start(rule, request.user, request.environment, request.gpu_count, gpus, kernels)

    def freed(self) -> None:
        """A kernel of this broker's went: whoever waits looks now."""
        self._freed.set()

    async def remove(self, container_id: str) -> Any:
        last = await self.engine.remove(container_id)
        self.freed()
        return last
