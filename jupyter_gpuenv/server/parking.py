"""Park and resume kernels: the driver's checkpoint calls, the lease they release and take again, auto-resume.

``Parker`` is the part a server and the broker share: it runs the blocking driver calls in threads of its own
with a time limit (a restore that wedges becomes a sentence, not a hang), keeps what is under way, records a
parked kernel in a ``Store`` (which releases its GPU lease) and resumes it when a cell is run in it.
``ServerParking`` fits it to one Jupyter server: its kernel manager, its sampler, its kernels' connection
files, the idle policy, and the broker for container kernels on a shared host.
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

from tornado.ioloop import PeriodicCallback
from tornado.web import HTTPError

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers.allocation import Holdings
from jupyter_gpuenv.containers.claims import soft_claims
from jupyter_gpuenv.errors import CannotPark, DriverFailed, GpuEnvError, NoFreeGpu, UnknownKernel
from jupyter_gpuenv.gpus.nvml import GpuSample, Snapshot
from jupyter_gpuenv.parking import checkpoint
from jupyter_gpuenv.parking.activity import KernelActivity, iopub_address
from jupyter_gpuenv.parking.rules import (
    BY_PERSON,
    BY_POLICY,
    FAILED,
    PARKED,
    IdlePolicy,
    KernelFacts,
    ParkBook,
    ParkRecord,
    idle_to_park,
    released_in,
    resume_blocker,
    why_not_park,
)
from jupyter_gpuenv.parking.timeline import CELL, POLICY, RELEASE, REQUEST, ROUND, Timeline

PARKING, RESUMING, RUNNING = "parking", "resuming", "running"
BROKER_SUMMARY_TTL = 60.0  # seconds the broker's "can this host park" answer is reused


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


def _epoch(value: Any) -> float:
    if value is None:
        return time.time()
    timestamp = getattr(value, "timestamp", None)
    return timestamp() if timestamp else float(value)


class ServerParking:
    """Parking for one Jupyter server's kernels (local and container), and its idle policy.

    With a broker, container kernels are parked by the broker (it holds the host's leases and the rights to act
    on any user's process); this server forwards the person's requests and shows the broker's record.
    """

    def __init__(self, settings: Any, sampler: Any, kernel_manager: Any, engine: Any, log: logging.Logger) -> None:
        self.settings, self.sampler, self.kernel_manager, self.engine, self.log = (
            settings,
            sampler,
            kernel_manager,
            engine,
            log,
        )
        # with a broker, this server parks only its local kernels; its book is private either way (books_dir)
        self.parker = Parker(
            FileStore(engine.books_dir, engine.kernels),
            timeout=settings.park_timeout,
            log=log,
            inventory=lambda: list(sampler.latest.gpus),
        )
        # a kernel container removed by this server releases its GPU: a cell waiting for it resumes at once (a
        # release by another server of the same user is seen at the next round)
        listeners = getattr(engine, "removal_listeners", None)
        if listeners is not None:
            listeners.append(self.parker.released)
        self.policy = IdlePolicy(settings.park_idle_minutes, int(settings.park_min_gpu_memory_gib * 2**30))
        self.brokered: dict[str, dict] = {}  # with a broker: container id -> the broker's park row
        self._callback: PeriodicCallback | None = None
        self._broker_summary: tuple[float, dict | None] = (0.0, None)

    @property
    def broker(self) -> bool:
        """Whether the broker parks container kernels (a shared host) and this server forwards requests."""
        return self.engine.shared_host

    def start(self) -> None:
        """Tend each sample interval, on the server's loop (a callback that may be set up before it runs)."""
        interval = max(self.settings.sample_interval, 0.5) * 1000
        self._callback = PeriodicCallback(self._round, interval)
        self._callback.start()

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
        listeners = getattr(self.engine, "removal_listeners", [])
        if self.parker.released in listeners:  # the engine is the process's: it outlives this server
            listeners.remove(self.parker.released)
        self.parker.close()

    # -- facts -----------------------------------------------------------------------------------------
    def _manager(self, kernel_id: str) -> Any:
        try:
            return self.kernel_manager.get_kernel(kernel_id)
        except (KeyError, HTTPError):  # jupyter_server's manager answers 404 itself
            raise UnknownKernel(f"no kernel {kernel_id!r} on this server") from None

    def facts(self, kernel_id: str, snapshot: Snapshot | None = None) -> KernelFacts:
        km = self._manager(kernel_id)
        snapshot = snapshot or self.sampler.latest
        return self.parker.facts(
            kernel_id,
            [(g, p) for g in snapshot.gpus for p in g.processes if p.kernel_id == kernel_id],
            execution_state=str(getattr(km, "execution_state", "idle")),
            last_activity=_epoch(getattr(km, "last_activity", None)),
        )

    def _brokered(self, km: Any) -> str | None:
        """The container id of a kernel the broker parks (with a broker, container kernels); None otherwise."""
        placement = getattr(km.provisioner, "placement", None)
        return placement.container_id if self.broker and placement is not None else None

    # -- the person's requests -------------------------------------------------------------------------
    async def park(self, kernel_id: str, by: str = BY_PERSON) -> None:
        km = self._manager(kernel_id)
        container = self._brokered(km)
        if container is not None:
            if getattr(km, "execution_state", "idle") == "busy":
                raise CannotPark("the kernel is running a cell: park it once the cell has finished")
            self.brokered[container] = await self.engine.park(container)
            return
        facts = self.facts(kernel_id)
        placement = getattr(km.provisioner, "placement", None)
        environment = getattr(km.provisioner, "environment", None)
        await self.parker.park(
            facts,
            gpus=[g.uuid for g in placement.gpus] if placement else list(facts.gpus),
            exclusive=bool(environment and placement and environment.gpus.kind == "exclusive"),
            container_id=placement.container_id if placement else "",
            by=by,
        )
        info = {"transport": km.transport, "ip": km.ip, "iopub_port": km.iopub_port}
        self.parker.watch(kernel_id, iopub_address(info), lambda: list(self.sampler.latest.gpus))

    async def resume(self, kernel_id: str) -> None:
        km = self._manager(kernel_id)
        container = self._brokered(km)
        if container is not None:
            self.brokered[container] = await self.engine.resume(container)
            return
        await self.parker.resume(kernel_id, list(self.sampler.latest.gpus))

    # -- what GET kernels shows ------------------------------------------------------------------------
    async def summary(self) -> dict[str, Any]:
        """Whether kernels can be parked here: with a broker, as the broker says (it parks container kernels)."""
        if self.broker:  # the broker's answer changes with its configuration only: asked once a minute
            at, answer = self._broker_summary
            if answer is None or time.monotonic() - at > BROKER_SUMMARY_TTL:
                try:
                    answer = await self.engine.parking()
                except GpuEnvError as exc:
                    return {"available": False, "reason": str(exc), "auto_park": None}
                self._broker_summary = (time.monotonic(), answer)
            return answer
        reason = await self.parker.unavailable()
        return {"available": reason is None, "reason": reason, "auto_park": self.policy.as_dict()}

    def row(self, kernel_id: str, snapshot: Snapshot) -> dict[str, Any]:
        try:
            km = self._manager(kernel_id)
        except UnknownKernel:
            return {}
        container = self._brokered(km)
        if container is not None:
            unknown = {"state": RUNNING, "can_park": False, "reason": "the GPU broker has not said yet (a moment)"}
            return self.brokered.get(container) or unknown
        return self.parker.row(kernel_id, why_not_park(self.facts(kernel_id, snapshot), self.parker.known_unavailable))

    # -- in the background -----------------------------------------------------------------------------
    async def _round(self) -> None:
        try:
            await self.tend()
        except Exception:  # a bug: log it, and keep tending
            self.log.exception("gpuenv: parking's background round failed")

    async def _refresh_brokered(self, running: set[str]) -> None:
        """The broker's park rows of this server's container kernels; no request while it has none."""
        ours = False
        for kernel_id in running:
            with contextlib.suppress(UnknownKernel):
                ours = ours or self._brokered(self._manager(kernel_id)) is not None
        if not ours:
            self.brokered = {}
            return
        with contextlib.suppress(GpuEnvError):
            rows = await self.engine.kernel_rows()
            self.brokered = {k["container_id"]: k["park"] for k in rows if "park" in k}

    async def tend(self) -> None:
        """Forget ended kernels, try again for cells that wait, apply the idle policy; refresh the broker's rows."""
        running = set(self.kernel_manager.list_kernel_ids())
        if self.broker:  # first: a fault in this server's own book must not keep the broker's rows from the panel
            await self._refresh_brokered(running)
        for record in self.parker.store.all():
            if record.kernel_id not in running or not all(host.process_alive(p) for p in record.pids):
                self.parker.forget(record.kernel_id)
        inventory = list(self.sampler.latest.gpus)
        await self.parker.retry_waiting(inventory)
        if not self.policy.on:
            return
        candidates = []
        for kernel_id in running:
            with contextlib.suppress(UnknownKernel):
                km = self._manager(kernel_id)
                if self._brokered(km) is None:  # the broker applies its own policy to its kernels
                    candidates.append(self.facts(kernel_id))
        unavailable = await self.parker.unavailable()
        for facts in idle_to_park(time.time(), candidates, self.policy, self.sampler.history(), unavailable):
            try:
                await self.park(facts.kernel_id, by=BY_POLICY)
            except GpuEnvError as exc:
                self.log.warning("gpuenv: idle kernel %s was not parked: %s", facts.kernel_id, exc)
