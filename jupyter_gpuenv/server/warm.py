"""Warm kernels: containers started ahead, Python running and ipykernel imported, handed to the next start.

One person's machine (``c.GpuEnv.warm_kernels = {"torch": 1}``): for each named environment of
``c.GpuEnv.environments``, this server keeps that many containers made exactly as a kernel's would be (image, user,
mounts, limits, its own socket folder, no network), running ``WARM_LAUNCHER``: it imports ipykernel and the
environment's ``c.GpuEnv.warm_imports`` (no CUDA context: a warm kernel holds no GPU memory), marks that it is
ready, and waits on a FIFO in its socket folder. A start takes a ready one: the provisioner writes the connection
file into its folder and the order (connection file, working folder, variables) into the FIFO; the kernel binds
its sockets and answers. The kernel id is bound at that moment in the provisioner's placement, from which the panel,
attribution, metrics and the ledger read it; the container's labels keep the warm name it was made with. The pool
refills in the background; a warm kernel whose environment definition changed is replaced; the server's stop
removes every warm container (an earlier server's, left by a crash, are orphans: its pid is in their labels).

Exclusive environments: a warm kernel is made on a GPU free now and holds only a soft claim: allocation and resume
leave out every warm container that no start has bound (``soft_claims``), so any start may take its GPU; the pool
then discards it and refills on another free GPU, if there is one. A start that takes a warm kernel binds it under
the allocation lock, after checking that its GPU is still free (else it starts cold), and records it in this
server's warm book (``warm-bound-<pid>.json``, private): from then on its labels' exclusive claim counts.

Shared hosts: the broker keeps each person's warm kernels (``broker.warm``); this pool stays empty there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

from tornado.ioloop import PeriodicCallback

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.containers.claims import PREFIX, bound_in_file, soft_claims
from jupyter_gpuenv.containers.warm import FIFO, command, definition
from jupyter_gpuenv.engines import base as engine
from jupyter_gpuenv.environments.definition import Environment, parse_environment
from jupyter_gpuenv.errors import GpuEnvError
from jupyter_gpuenv.parking.rules import released_in

REFILL_INTERVAL = 5.0  # seconds between two looks at the pools (a take refills at once)
HAND_OVER_TRIES = 400  # 5 ms apart: a ready warm kernel opens its FIFO within microseconds


@dataclass
class WarmKernel:
    name: str  # warm-<hex>: its container's kernel id label and its socket folder's name
    environment: Environment
    folder: str
    placement: engine.Placement
    lock: int | None = None  # fd of its folder's CLIENT_LOCK, held by this server until a start takes it over

    def release_lock(self) -> int | None:
        """The client lock's fd, now the caller's to hold (and to close when the kernel ends)."""
        fd, self.lock = self.lock, None
        return fd

    def close_lock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    @property
    def fifo(self) -> str:
        return os.path.join(self.folder, FIFO)

    @property
    def ready(self) -> bool:
        return os.path.exists(self.fifo + ".ready")


class WarmKernels:
    """This server's warm kernels, per environment."""

    def __init__(self, settings: Any, the_engine: Any, sampler: Any, root_dir: str, log: logging.Logger) -> None:
        self.settings, self.engine, self.sampler, self.root_dir, self.log = settings, the_engine, sampler, root_dir, log
        self.pools: dict[str, list[WarmKernel]] = {}
        self._callback: PeriodicCallback | None = None
        self._refilling: asyncio.Future | None = None
        self._again = False
        self._said: set[tuple[str, str]] = set()  # (environment, message): each said once
        self._stopped = False

    # -- what is wanted ----------------------------------------------------------------------------------
    def wanted(self) -> dict[str, tuple[Environment, int]]:
        out: dict[str, tuple[Environment, int]] = {}
        if self.engine.shared_host:  # the broker keeps warm kernels there (broker.warm), per person
            return out
        for name, count in self.settings.warm_kernels.items():
            raw = self.settings.environments.get(name)
            if raw is None or not isinstance(count, int) or count <= 0:
                self._say(name, "gpuenv: c.GpuEnv.warm_kernels names %r, which c.GpuEnv.environments does not define")
                continue
            try:
                env = parse_environment(name, raw, "c.GpuEnv.environments")
            except GpuEnvError as exc:
                self._say(name, f"gpuenv: no warm kernels of %r: {exc}")
                continue
            out[name] = (env, count)
        return out

    def _say(self, name: str, message: str) -> None:
        if (name, message) not in self._said:
            self._said.add((name, message))
            self.log.warning(message, name)

    # -- the background ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.warm_kernels and not self.engine.shared_host:
            self._callback = PeriodicCallback(self.refill_soon, REFILL_INTERVAL * 1000)
            self._callback.start()
            self.refill_soon()

    def refill_soon(self) -> None:
        """Refill now; a call while a refill runs makes one more after it (it may have read the old settings)."""
        if self._stopped:
            return
        self._again = True
        if self._refilling is None or self._refilling.done():
            with contextlib.suppress(RuntimeError):  # no loop runs yet: the periodic callback will
                self._refilling = asyncio.ensure_future(self._refill_while_asked())

    async def _refill_while_asked(self) -> None:
        while self._again and not self._stopped:
            self._again = False
            await self.refill()

    async def refill(self) -> None:
        """Replace the warm kernels whose environment changed, drop those that died or whose GPU a start took (a
        soft claim), start the missing ones."""
        wanted = self.wanted()
        taken = (
            await self._held()
            if any(w.environment.gpus.kind == "exclusive" for p in self.pools.values() for w in p)
            else None
        )
        for name in list(self.pools):
            current = wanted.get(name)
            keep = []
            for warm in self.pools[name]:
                same = current is not None and definition(warm.environment) == definition(current[0])
                lost = (  # an exclusive one's soft claim: a start took its GPU
                    taken is not None
                    and warm.environment.gpus.kind == "exclusive"
                    and any(taken.held_by_anyone(g.uuid) for g in warm.placement.gpus)
                )
                if same and not lost and await self._alive(warm):
                    keep.append(warm)
                else:
                    await self._discard(warm)
            self.pools[name] = keep
        for name, (env, count) in wanted.items():
            pool = self.pools.setdefault(name, [])
            while len(pool) < count and not self._stopped:
                try:
                    pool.append(await self._make(env))
                except (GpuEnvError, OSError) as exc:
                    self._say(name, f"gpuenv: a warm kernel of %r could not be started: {exc}")
                    break

    @property
    def private_dir(self) -> str:
        return os.path.join(self.settings.socket_root, f"gpuenv-{os.getuid()}")

    async def _held(self, with_soft_claims: bool = False) -> Any:
        """What kernels hold now (``labels.holdings``), parked ones released; warm ones only ``with_soft_claims``."""
        kernels = await self.engine.kernels()
        released = released_in(self.private_dir) | (
            set() if with_soft_claims else soft_claims(kernels, self.private_dir)
        )
        return labels.holdings(kernels, released=released)

    async def _alive(self, warm: WarmKernel) -> bool:
        try:
            return (await self.engine.state(warm.placement.container_id)).running
        except GpuEnvError:
            return True  # the engine did not answer: look again next time

    async def _make(self, env: Environment) -> WarmKernel:
        name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        folder = await self.engine.socket_folder(name)
        os.mkfifo(os.path.join(folder, FIFO), 0o600)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        lock = os.open(os.path.join(folder, containers.CLIENT_LOCK), flags, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a folder just made: nobody else holds it
        # should this server die, its reaper removes the warm containers as it does its kernels'
        await asyncio.get_running_loop().run_in_executor(None, self.engine.watch_client)
        imports = list(self.settings.warm_imports.get(env.name, []))
        request = engine.KernelRequest(
            environment=env,
            kernel_id=name,
            user=host.current_user(),
            server=host.this_server(),
            root_dir=self.root_dir,
            cwd=self.root_dir,
            socket_dir=folder,
            connection_file=os.path.join(folder, "connection.json"),
            inventory=list(self.sampler.latest.gpus) if self.sampler is not None else [],
            shared_network_namespace=self.settings.shared_network_namespace,
            command=command(env, os.path.join(folder, FIFO), imports),
            # exclusive: a GPU no kernel holds, nor another warm kernel (a soft claim is still no place for two)
            held=await self._held(with_soft_claims=True) if env.gpus.kind == "exclusive" else None,
        )
        try:
            placement = await self.engine.start_kernel(request)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)
            raise
        return WarmKernel(name, env, folder, placement, lock)

    async def _discard(self, warm: WarmKernel) -> None:
        with contextlib.suppress(GpuEnvError):
            await self.engine.remove(warm.placement.container_id)
        shutil.rmtree(warm.folder, ignore_errors=True)
        warm.close_lock()

    def ready_count(self, name: str) -> int:
        """Warm kernels of environment ``name`` a start would take now (GET environments' ``warm``)."""
        return sum(1 for warm in self.pools.get(name) or [] if warm.ready)

    # -- a start -------------------------------------------------------------------------------------------
    def take(self, env: Environment) -> WarmKernel | None:
        """A ready warm kernel of exactly this environment, now the caller's; the pool refills behind it."""
        pool = self.pools.get(env.name) or []
        for warm in pool:
            if warm.ready and definition(warm.environment) == definition(env):
                pool.remove(warm)
                self.refill_soon()
                return warm
        return None

    async def bind(self, warm: WarmKernel) -> None:
        """The start that took ``warm`` makes it its kernel: an exclusive one's GPU must still be free (a start may
        have taken it since: OSError, the caller starts cold), and its claim counts from now on (the warm book)."""
        if warm.environment.gpus.kind != "exclusive":
            return
        await asyncio.get_running_loop().run_in_executor(None, self._bind, warm)

    def _bind(self, warm: WarmKernel) -> None:
        with self.engine._lease_lock():  # the allocation lock: no start chooses GPUs meanwhile
            c = self.engine._client()
            held = self.engine._holdings(c, warm.name)
            if any(held.held_by_anyone(g.uuid) for g in warm.placement.gpus):
                raise OSError("another kernel took its GPU")
            book = os.path.join(self.private_dir, f"warm-bound-{os.getpid()}.json")
            alive = {k.id for k in self.engine._kernels(c)}
            bound = sorted({i for i in bound_in_file(book) if i in alive} | {warm.placement.container_id})
            staging = f"{book}.new"
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(bound, f)
            os.replace(staging, book)

    @staticmethod
    async def hand_over(
        warm: WarmKernel | engine.WarmTaken, connection_file: str, cwd: str, variables: dict[str, str]
    ) -> None:
        """The order: the warm kernel reads it, changes to ``cwd``, sets ``variables`` and binds its sockets."""
        order = json.dumps({"connection_file": connection_file, "cwd": cwd, "env": variables}).encode()
        for _ in range(HAND_OVER_TRIES):
            try:  # ENXIO: the reader is between its mark and opening the FIFO
                fd = os.open(warm.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                await asyncio.sleep(0.005)
        else:
            raise OSError(f"warm kernel {warm.name} does not read its orders")
        try:
            os.write(fd, order)
        finally:
            os.close(fd)

    async def stop(self) -> None:
        """The server stops: no warm container stays behind."""
        self._stopped = True
        if self._callback is not None:
            self._callback.stop()
        if self._refilling is not None and not self._refilling.done():
            with contextlib.suppress(BaseException):
                await self._refilling
        for pool in self.pools.values():
            for warm in pool:
                await self._discard(warm)
        self.pools.clear()
