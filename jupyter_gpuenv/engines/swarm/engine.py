"""``SwarmEngine``: the container half of the Engine contract (start, kernels, state, signal, remove) over a Swarm
manager's Engine API. A kernel is a service of one task (``service``); what it holds is read back from Swarm
(``placements``), so any manager answers the same and no file on one host keeps a lease.

A kernel is named by its service (``gpuenv-<kernel id>`` or the service's id): that is its ``container_id`` in
the contract's words, since which container runs it, on which host, is Swarm's business.

What a manager cannot do: signal, exec into, pull on or checkpoint a task on another node (the Engine API has
no such call for a service; ``docker service update --force`` replaces the task, it does not signal it). So
``signal`` works for a task on this engine's own node, through the node's engine; a task elsewhere is signalled
by the broker of its node (``broker.relay``). Every SDK error is translated where the Docker adapter translates
its own (``engines.docker.engine.translated``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import docker
from docker.errors import NotFound

from jupyter_gpuenv.engines.base import ContainerState
from jupyter_gpuenv.engines.docker.engine import translated
from jupyter_gpuenv.engines.swarm import placements as p
from jupyter_gpuenv.engines.swarm import service as s
from jupyter_gpuenv.errors import EngineRefused, EngineUnreachable, NoFreeGpu, UnknownKernel

POLL = 0.05  # seconds between two looks at a task being placed: a start waits on Swarm, not on us
NO_ROOM = "insufficient resources"  # Swarm's words for a task no node can take
RELEASE_WAIT = 10.0  # seconds a start waits for Swarm to give back a GPU whose kernel was removed (~1.8 s seen)


class SwarmEngine:
    """Kernels as Swarm services. ``manager_url``: a manager's Engine API (the broker's own engine, on a host that
    is a manager); ``local_url``: this node's engine (default: the same), for what only a node can do."""

    def __init__(self, manager_url: str, timeout: float = 5.0, local_url: str | None = None, start_timeout: float = 60):
        self.manager_url, self.local_url = manager_url, local_url or manager_url
        self.timeout, self.start_timeout = timeout, start_timeout
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="gpuenv-swarm")
        self._clients: dict[str, docker.APIClient] = {}
        self._node: tuple[str, str, str] | None = None  # (id, address, hostname)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()

    # -- the one way to the engines -----------------------------------------------------------------
    def _api(self, url: str) -> docker.APIClient:
        if url not in self._clients:
            self._clients[url] = docker.APIClient(base_url=url, timeout=max(1, int(self.timeout)))
        return self._clients[url]

    async def _call(self, doing: str, fn: Callable[..., Any], *args: Any, budget: float | None = None) -> Any:
        def run() -> Any:
            with translated(self.manager_url, doing):
                return fn(*args)

        budget = budget or self.timeout * 3 + 1
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._pool, run), budget)
        except asyncio.TimeoutError:
            raise EngineUnreachable(
                f"the Swarm manager at {self.manager_url} did not answer within {budget:.0f} s (to {doing})"
            ) from None

    def _read(self) -> tuple[list[p.Node], list[p.Placement], list[dict]]:
        api = self._api(self.manager_url)
        nodes = p.read_nodes(api.nodes())
        tasks = api.tasks()
        return nodes, p.read_placements(api.services(filters={"label": s.KERNEL}), tasks, nodes), tasks

    # -- reading the lease truth ----------------------------------------------------------------------
    async def nodes(self) -> list[p.Node]:
        return await self._call("list the swarm's nodes", lambda: p.read_nodes(self._api(self.manager_url).nodes()))

    async def kernels(self) -> list[p.Placement]:
        """Every kernel service of the swarm, with where it runs and the GPUs Swarm reserved for it."""
        return (await self._call("list the kernel services", self._read))[1]

    async def snapshot(self) -> tuple[list[p.Node], list[p.Placement]]:
        """Nodes and kernels read together (one look), for decisions that need both (room, policy)."""
        nodes, placements, _ = await self._call("read the swarm", self._read)
        return nodes, placements

    async def lost(self) -> dict[str, str]:
        """Kernels on hosts Swarm stopped hearing from: kernel id → the sentence for its notebook."""
        nodes, placements = await self.snapshot()
        return p.dead_hosts(placements, nodes)

    # -- start ------------------------------------------------------------------------------------------
    async def start_kernel(self, request: s.KernelRequest, node: str | None = None) -> p.Placement:
        """Create the kernel's service and wait until its task runs; where it runs and what it holds.

        ``node``: a node id (or hostname) it must run on (the broker prepared that host for it). NoFreeGpu with
        ``placements.no_room``'s sentence when no host has room, before anything is created; when another start
        took the room meanwhile (Swarm leaves the task pending) the service is removed and the same sentence
        raised. EngineRefused with Swarm's words when the task fails to start (an image the host lacks, a
        folder that is not there)."""
        spec = s.service_spec(request)
        began = time.monotonic()
        nodes, placements = await self.snapshot()
        chosen = None
        if node is not None:
            chosen = next((n for n in nodes if node in (n.id, n.hostname)), None)
            if chosen is None:
                raise EngineRefused(f"the swarm has no host {node!r}")
            spec["TaskTemplate"]["Placement"]["Constraints"].append(f"node.id=={chosen.id}")
        if request.gpu_count:
            room = p.free_gpus(request.gpu_kind, nodes, placements)
            if chosen is not None:
                room = {k: v for k, v in room.items() if k == chosen.id}
            if not any(len(free) >= request.gpu_count for free in room.values()):
                raise NoFreeGpu(p.no_room(request.gpu_kind, request.gpu_count, nodes, placements))
        api = self._api(self.manager_url)
        created = await self._call(
            "create the kernel's service", lambda: api.create_service(**s.create_service_kwargs(spec))
        )
        try:
            return await self._placed(request, created["ID"], began, chosen.id if chosen else None)
        except BaseException:
            await self._call("remove a service that did not start", _remove, api, created["ID"])
            raise

    async def _placed(self, request: s.KernelRequest, service_id: str, began: float, node: str | None) -> p.Placement:
        while time.monotonic() - began < self.start_timeout:
            nodes, placements = await self.snapshot()
            mine = next((x for x in placements if x.service_id == service_id), None)
            if mine is not None and mine.state == "running":
                return mine
            if mine is not None and mine.state == "pending" and NO_ROOM in mine.reason:
                others = [x for x in placements if x.service_id != service_id]
                room = p.free_gpus(request.gpu_kind, nodes, others) if request.gpu_count else {}
                releasing = any(len(free) >= request.gpu_count for n, free in room.items() if node in (None, n))
                # a GPU whose kernel was just removed is free in Swarm's record about 1.8 s later (its task must
                # first be reported shut down); Swarm places ours then. Room that nobody releases: refused.
                if not releasing or time.monotonic() - began > RELEASE_WAIT:
                    raise NoFreeGpu(p.no_room(request.gpu_kind or "CPU host", request.gpu_count or 1, nodes, others))
            if mine is not None and mine.state in p.ENDED:
                raise EngineRefused(
                    f"the kernel's task could not start on {mine.host or 'any host'}: run it again, or ask the "
                    f"administrator\n{mine.reason}"
                )
            await asyncio.sleep(POLL)
        raise EngineUnreachable(f"the kernel's task did not start within {self.start_timeout:.0f} s")

    # -- one kernel -----------------------------------------------------------------------------------
    async def _find(self, container_id: str) -> tuple[p.Placement | None, list[p.Node], list[dict]]:
        nodes, placements, tasks = await self._call("read the swarm", self._read)
        found = next((x for x in placements if container_id in (x.service_id, s.service_name(x.kernel_id))), None)
        return found, nodes, tasks

    async def state(self, container_id: str) -> ContainerState:
        """Whether the kernel runs; ``gone`` once its service is removed. A task on a host Swarm stopped hearing
        from does not run, whatever Swarm last heard (``lost`` says which host)."""
        found, nodes, tasks = await self._find(container_id)
        if found is None:
            return ContainerState(running=False, gone=True)
        down = {n.hostname for n in nodes if not n.up}
        if found.state == "running" and found.host not in down:
            return ContainerState(running=True)
        task = _newest(tasks, found.service_id)
        code = task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode") if task else None
        return ContainerState(running=False, exit_code=code if found.state in ("complete", "failed") else None)

    async def signal(self, container_id: str, signum: int) -> None:
        """``signum`` to the kernel, through its node's engine: possible for a task on this engine's own node. A
        task elsewhere is signalled by its node's broker; here that is an EngineRefused that says so."""
        found, _, tasks = await self._find(container_id)
        if found is None:
            return
        task = _newest(tasks, found.service_id) or {}
        local = await self.node_id()
        if task.get("NodeID") != local:
            raise EngineRefused(
                f"the kernel runs on host {found.host}: only that host's broker can signal it (the relay's "
                "signal operation, docs/multi-host.md)"
            )
        container = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID", "")
        if not container:
            return
        api = self._api(self.local_url)
        try:
            await self._call("signal the kernel", lambda: api.kill(container, signum))
        except EngineRefused as exc:
            if "is not running" not in str(exc):
                raise

    async def remove(self, container_id: str) -> ContainerState | None:
        """Remove the kernel's service (its GPUs are free at once); its last state, None if it was gone."""
        last = await self.state(container_id)
        if last.gone:
            return None
        found, _, _ = await self._find(container_id)
        if found is not None:
            await self._call("remove the kernel's service", _remove, self._api(self.manager_url), found.service_id)
        return last

    async def placement(self, container_id: str) -> p.Placement:
        """Where one kernel runs and what it holds; UnknownKernel when there is no such kernel service."""
        found, _, _ = await self._find(container_id)
        if found is None:
            raise UnknownKernel(f"no kernel service {container_id}")
        return found

    async def node_id(self) -> str:
        """This engine's own node in the swarm (its ``docker info``)."""
        return (await self._own_node())[0]

    async def node_address(self) -> str:
        """This engine's node's swarm address: where the other hosts' brokers reach this one's."""
        return (await self._own_node())[1]

    async def node_name(self) -> str:
        """This engine's node's hostname, as Swarm reports it to every manager."""
        return (await self._own_node())[2]

    async def _own_node(self) -> tuple[str, str, str]:
        if self._node is None:
            info = await self._call("ask the engine which node it is", self._api(self.local_url).info)
            swarm = info.get("Swarm", {})
            self._node = (swarm.get("NodeID") or "", swarm.get("NodeAddr") or "", info.get("Name") or "")
        return self._node


def _remove(api: docker.APIClient, service_id: str) -> None:
    with suppress(NotFound):  # removed meanwhile: what we wanted
        api.remove_service(service_id)


def _newest(tasks: list[dict], service_id: str) -> dict | None:
    mine = [t for t in tasks if t.get("ServiceID") == service_id]
    return max(mine, key=lambda t: t.get("CreatedAt", "")) if mine else None
