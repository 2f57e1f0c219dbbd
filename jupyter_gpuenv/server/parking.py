"""Park and resume one Jupyter server's kernels.

The parker (``parking.parker``) is the part a server and the broker share. ``ServerParking`` fits it to one
Jupyter server: its kernel manager, its sampler, its kernels' connection
files, the idle policy, and the broker for container kernels on a shared host.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from tornado.ioloop import PeriodicCallback
from tornado.web import HTTPError

from jupyter_gpuenv import host
from jupyter_gpuenv.errors import CannotPark, GpuEnvError, UnknownKernel
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.parking.activity import iopub_address
from jupyter_gpuenv.parking.parker import FileStore, Parker
from jupyter_gpuenv.parking.rules import (
    BY_PERSON,
    BY_POLICY,
    IdlePolicy,
    KernelFacts,
    idle_to_park,
    why_not_park,
)

PARKING, RESUMING, RUNNING = "parking", "resuming", "running"
BROKER_SUMMARY_TTL = 60.0  # seconds the broker's "can this host park" answer is reused


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
