"""Park and resume kernels: the driver's checkpoint calls, the lease they release and take again, auto-resume.

``Parker`` is the part a server and the broker share: it runs the blocking driver calls in threads of its own
with a time limit (a restore that wedges becomes a sentence, not a hang), keeps what is under way, records a
parked kernel in a ``Store`` (which releases its GPU lease) and resumes it when a cell is run in it.
``FileStore`` is one person's machine's store: a park book in a private folder. ``server.parking`` fits the
parker to one Jupyter server, ``broker.parking`` to a shared host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers.allocation import Holdings
from jupyter_gpuenv.containers.claims import soft_claims
from jupyter_gpuenv.errors import CannotPark, DriverFailed, GpuEnvError, NoFreeGpu
from jupyter_gpuenv.gpus.nvml import GpuSample
from jupyter_gpuenv.parking import checkpoint
from jupyter_gpuenv.parking.activity import KernelActivity
from jupyter_gpuenv.parking.rules import (
    BY_PERSON,
    BY_POLICY,
    FAILED,
    PARKED,
    KernelFacts,
    ParkBook,
    ParkRecord,
    released_in,
    resume_blocker,
    why_not_park,
)
from jupyter_gpuenv.parking.timeline import CELL, POLICY, RELEASE, REQUEST, ROUND, Timeline

PARKING, RESUMING, RUNNING = "parking", "resuming", "running"


class Store(Protocol):
    """Where parked kernels are recorded, so that their GPUs count as free for everyone who allocates."""

    def get(self, kernel_id: str) -> ParkRecord | None: ...

    def all(self) -> list[ParkRecord]: ...

    def put(self, record: ParkRecord) -> None: ...

    def drop(self, kernel_id: str) -> None: ...

    def locked(self) -> contextlib.AbstractAsyncContextManager:
        """The allocation lock: no kernel chooses GPUs while a lease is released or taken again."""

    async def others(self, kernel_id: str) -> Holdings:
        """What every other kernel holds now (a parked one holds nothing)."""


class Parker:
    def __init__(
        self,
        store: Store,
        *,
        timeout: float,
        log: logging.Logger,
        driver: Any = None,
        inventory: Callable[[], list[GpuSample]] = list,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.log = log
        self._driver = driver
        self.inventory = inventory  # the GPUs now (the sampler's), for the sentences that name a GPU's holder
        self.timelines: dict[str, dict[str, dict]] = {}  # kernel id -> {"park": …, "resume": …}: the last of each
        self._release_pending = False
        self._release_task: asyncio.Future | None = None
        self.under_way: dict[str, str] = {}  # kernel id -> PARKING or RESUMING
        self.waiting: dict[str, str] = {}  # kernel id -> why a cell waits for its GPU (auto-resume refused)
        self.watches: dict[str, KernelActivity] = {}
        self.resumed_at: dict[str, float] = {}  # a resume counts as activity: the idle policy waits again
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="gpuenv-checkpoint")
        self._unavailable: str | None | bool = False  # False: not asked yet

    @property
    def driver(self) -> Any:
        """The checkpoint driver, loaded at the first park (a server that never parks never loads libcuda)."""
        if self._driver is None:
            self._driver = checkpoint.load_driver()
        return self._driver

    async def _blocking(self, doing: str, fn: Callable, *args: Any, late: Callable | None = None) -> Any:
        """``fn(*args)`` in a checkpoint thread, within the time limit. A call past it cannot be stopped: it goes on
        in its thread, and ``late`` (if given) is called with its result once it returns."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            if late is not None:
                future.add_done_callback(lambda f: f.exception() is None and late(f.result()))
            raise DriverFailed(
                f"the NVIDIA driver did not {doing} within {self.timeout:.0f} s (c.GpuEnv.park_timeout)"
            ) from None

    @property
    def known_unavailable(self) -> str | None:
        """What ``unavailable`` answered, without asking the driver (None until it was asked)."""
        return self._unavailable if isinstance(self._unavailable, str) else None

    async def unavailable(self) -> str | None:
        """Why parking cannot work on this machine at all (asked of the driver once), or None."""
        if self._unavailable is False:
            self._unavailable = await self._blocking("answer", self.driver.unavailable)
        return self._unavailable  # type: ignore[return-value]

    def close(self) -> None:
        for watch in self.watches.values():
            watch.stop()
        self.watches.clear()
        self._pool.shutdown(wait=False)

    def facts(
        self, kernel_id: str, procs: list[tuple[GpuSample, Any]], *, execution_state: str, last_activity: float
    ) -> KernelFacts:
        """What the rules need of a kernel whose GPU processes are ``procs`` ((GPU, process) pairs of a snapshot);
        a resume counts as activity."""
        pids = sorted({p.pid for _, p in procs})
        room, by = host.memory_room(pids[0]) if pids else (None, "")
        return KernelFacts(
            kernel_id=kernel_id,
            execution_state=execution_state,
            last_activity=max(last_activity, self.resumed_at.get(kernel_id, 0)),
            pids=tuple(pids),
            gpu_memory=sum(p.used_memory or 0 for _, p in procs),
            gpus=tuple(sorted({g.uuid for g, _ in procs if g.uuid})),
            parked=self.store.get(kernel_id) is not None,
            memory_room=room,
            room_by=by,
        )

    # -- park ------------------------------------------------------------------------------------------
    async def park(
        self, facts: KernelFacts, *, gpus: list[str], exclusive: bool, container_id: str, by: str = BY_PERSON
    ) -> ParkRecord:
        kid = facts.kernel_id
        if kid in self.under_way:
            raise CannotPark(f"the kernel is {self.under_way[kid]} already")
        reason = why_not_park(facts, await self.unavailable())
        if reason:
            raise CannotPark(reason)
        self.under_way[kid] = PARKING
        timeline = Timeline("park", POLICY if by == BY_POLICY else REQUEST, facts.gpu_memory)
        error: str | None = None
        try:
            pids = list(facts.pids)

            def undo(late: checkpoint.Outcome) -> None:  # a park that ended past the limit: the kernel runs on
                if late.error is None:
                    self.log.warning("gpuenv: kernel %s: undoing a park that finished too late", kid)
                    self._pool.submit(checkpoint.resume, self.driver, pids)

            outcome = await self._blocking("park the kernel", checkpoint.park, self.driver, pids, late=undo)
            for step, _pid, start, seconds in outcome.steps:
                timeline.add(step, start, seconds)
            if outcome.error is not None:
                if outcome.rolled_back:
                    raise DriverFailed(f"the kernel could not be parked, and runs as it was: {outcome.error}")
                raise DriverFailed(f"the kernel could not be parked and may not run on: {outcome.error}; restart it")
            record = ParkRecord(
                kernel_id=kid,
                pids=list(facts.pids),
                gpus=list(gpus),
                exclusive=exclusive,
                container_id=container_id,
                host_memory=facts.gpu_memory,
                since=time.time(),
                by=by,
            )
            async with self._locked(timeline):
                with timeline.phase("book"):
                    self.store.put(record)  # from here its GPUs are free for the next kernel
        except GpuEnvError as exc:
            error = str(exc)
            raise
        finally:
            self.under_way.pop(kid, None)
            self._keep(kid, timeline.end(error))
        self.log.info(
            "gpuenv: kernel %s parked by %s: %.2f GiB to host memory in %.3f s (%s)",
            kid,
            by,
            facts.gpu_memory / 2**30,
            timeline.seconds,
            timeline.summary(),
        )
        self.released()  # a cell of another kernel may wait for this GPU
        return record

    def _keep(self, kernel_id: str, timeline: Timeline) -> None:
        self.timelines.setdefault(kernel_id, {})[timeline.action] = timeline.as_dict()

    @contextlib.asynccontextmanager
    async def _locked(self, timeline: Timeline) -> AsyncIterator[None]:
        """The store's allocation lock, the wait for it a phase of ``timeline``."""
        start = time.monotonic()
        async with self.store.locked():
            timeline.add("allocation lock", start, time.monotonic() - start)
            yield

    # -- resume ----------------------------------------------------------------------------------------
    async def resume(self, kernel_id: str, inventory: list[GpuSample], trigger: str = REQUEST) -> None:
        record = self.store.get(kernel_id)
        if record is None or record.state != PARKED:
            if record is not None:  # failed: its GPU state is gone
                raise DriverFailed(record.message or "the kernel's GPU state could not be restored: restart it")
            raise CannotPark("the kernel is not parked")
        if kernel_id in self.under_way:
            raise CannotPark(f"the kernel is {self.under_way[kernel_id]} already")
        self.under_way[kernel_id] = RESUMING
        timeline = Timeline("resume", trigger, record.host_memory)
        keep = True
        try:
            async with self._locked(timeline):
                with timeline.phase("holdings"):
                    others = await self.store.others(kernel_id)
                blocker = resume_blocker(record, others, inventory)
                if blocker is not None:
                    keep = False  # refused before anything was done: the last resume's timeline stays
                    raise blocker
                try:
                    outcome = await self._blocking("restore the kernel", checkpoint.resume, self.driver, record.pids)
                    error = outcome.error
                    for step, _pid, start, seconds in outcome.steps:
                        timeline.add(step, start, seconds)
                except DriverFailed as exc:
                    error = exc
                with timeline.phase("book"):
                    if error is None:
                        self.store.drop(kernel_id)  # it holds its GPUs again
                    else:
                        record.state = FAILED
                        record.message = (
                            f"its GPU state could not be restored ({error}): restart the kernel; its variables are lost"
                        )
                        self.store.put(record)
                if error is not None:
                    raise DriverFailed(record.message)
        except GpuEnvError as exc:
            if keep:
                self._keep(kernel_id, timeline.end(str(exc)))
            raise
        finally:
            self.under_way.pop(kernel_id, None)
        self._keep(kernel_id, timeline.end())
        self.waiting.pop(kernel_id, None)
        self.resumed_at[kernel_id] = time.time()
        self.unwatch(kernel_id)
        self.log.info(
            "gpuenv: kernel %s resumed (%s) in %.3f s (%s)", kernel_id, trigger, timeline.seconds, timeline.summary()
        )

    # -- a cell run in a parked kernel resumes it -------------------------------------------------------
    def cell_started(self, kernel_id: str, inventory: Callable[[], list[GpuSample]]) -> None:
        """A cell was run in the kernel (its IOPub said so): resume it if it is parked."""
        record = self.store.get(kernel_id)
        if record is not None and record.state == PARKED and kernel_id not in self.under_way:
            self.waiting.setdefault(kernel_id, "resuming for the cell that was run")
            asyncio.ensure_future(self.resume_for_cell(kernel_id, inventory(), CELL))

    def watch(self, kernel_id: str, address: str, inventory: Callable[[], list[GpuSample]]) -> None:
        """Follow a parked kernel's IOPub until it resumes (a server; the broker follows every GPU kernel)."""
        if kernel_id not in self.watches:
            self.watches[kernel_id] = watch = KernelActivity(
                address, lambda: self.cell_started(kernel_id, inventory), self.log
            )
            watch.start()

    def unwatch(self, kernel_id: str) -> None:
        watch = self.watches.pop(kernel_id, None)
        if watch is not None:
            watch.stop()

    async def resume_for_cell(self, kernel_id: str, inventory: list[GpuSample], trigger: str = CELL) -> None:
        """The cell waits inside the driver until the kernel is resumed; when its GPU is taken it waits on (the
        reason is on the kernel's row) until a GPU is released (``released``) or the background round tries again
        (``retry_waiting``)."""
        try:
            await self.resume(kernel_id, inventory, trigger)
        except NoFreeGpu as exc:
            self.waiting[kernel_id] = f"a cell waits for this kernel's GPU: {exc}"
        except GpuEnvError as exc:
            self.waiting.pop(kernel_id, None)
            self.log.warning("gpuenv: kernel %s was not resumed for its cell: %s", kernel_id, exc)

    async def retry_waiting(self, inventory: list[GpuSample], trigger: str = ROUND) -> None:
        for kernel_id in list(self.waiting):
            if kernel_id not in self.under_way:
                await self.resume_for_cell(kernel_id, inventory, trigger)

    def released(self, *_: Any) -> None:
        """A GPU was released here (a kernel's container removed, a lease dropped, a kernel parked): the cells that
        wait for a GPU try again now, not at the next round. Calls while a retry runs make one more retry."""
        if not self.waiting:
            return
        self._release_pending = True
        if self._release_task is None or self._release_task.done():
            try:
                self._release_task = asyncio.ensure_future(self._retry_released())
            except RuntimeError:  # no loop runs (a book loaded at start): the first round tries
                self._release_pending = False

    async def _retry_released(self) -> None:
        while self._release_pending:
            self._release_pending = False
            await self.retry_waiting(self.inventory(), RELEASE)

    def forget(self, kernel_id: str) -> None:
        """The kernel ended or restarted: its record goes (its processes, and what they held, are gone)."""
        self.unwatch(kernel_id)
        self.waiting.pop(kernel_id, None)
        self.resumed_at.pop(kernel_id, None)
        self.timelines.pop(kernel_id, None)
        if self.store.get(kernel_id) is not None:
            self.store.drop(kernel_id)

    # -- what the panel shows --------------------------------------------------------------------------
    def row(self, kernel_id: str, cannot: str | None) -> dict[str, Any]:
        record = self.store.get(kernel_id)
        state = self.under_way.get(kernel_id) or (record.state if record else RUNNING)
        message = self.waiting.get(kernel_id) or (record.message if record else None)
        if record is not None and record.by == BY_POLICY and message is None and record.state == PARKED:
            message = "parked by the idle policy: running a cell resumes it"
        return {
            "state": state,
            "can_park": state == RUNNING and cannot is None,
            "reason": cannot if state == RUNNING else None,
            "host_memory": record.host_memory if record else None,
            "since": record.since if record else None,
            "by": record.by if record else None,
            "message": message,
            "timeline": self.timelines.get(kernel_id, {}),
        }


class FileStore:
    """One person's machine: this server's parked kernels in a private file, under the allocation lock the engine
    uses; another server of the same user keeps its own, and GPU choices read them all."""

    def __init__(self, private_dir: str, kernels: Callable[[], Any]) -> None:
        self.private_dir = private_dir
        self._kernels = kernels  # the engine's kernel containers (a coroutine function)
        self.book = ParkBook.of_server(private_dir, os.getpid())
        self._records: dict[str, ParkRecord] | None = None

    def _all(self) -> dict[str, ParkRecord]:
        if self._records is None:
            host.private_folder(self.private_dir)
            self._records = self.book.load()
        return self._records

    def get(self, kernel_id: str) -> ParkRecord | None:
        return self._all().get(kernel_id)

    def all(self) -> list[ParkRecord]:
        return list(self._all().values())

    def put(self, record: ParkRecord) -> None:
        self._all()[record.kernel_id] = record
        self.book.save(self._all())

    def drop(self, kernel_id: str) -> None:
        if self._all().pop(kernel_id, None) is not None:
            self.book.save(self._all())

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        path = os.path.join(host.private_folder(self.private_dir), "allocation.lock")
        lock = host.locked_file(path)
        await asyncio.get_running_loop().run_in_executor(None, lock.__enter__)
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    async def others(self, kernel_id: str) -> Holdings:
        kernels = await self._kernels()
        released = released_in(self.private_dir) | soft_claims(kernels, self.private_dir)  # warm: a soft claim only
        return labels.holdings(kernels, excluding=kernel_id, released=released)
