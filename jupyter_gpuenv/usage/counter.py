"""GPU usage accounting: how many GPU-seconds each kernel, notebook and user held.

Each NVML sample, :class:`UsageTracker` (on the server's event loop, reading memory only) turns the sampler's
snapshot and the running kernels into :class:`KernelUsage` rows and gives them to :class:`UsageMeter`, which
integrates: every sample adds the time since the previous one (capped, so a suspended machine or a stalled sampler
is not billed) times the GPUs and the GPU memory each kernel holds. The meter's totals are the Prometheus counters
(usage.metrics); its pending stretches go to the ledger (usage.ledger) every ``usage_flush_interval``, so
``jupyter gpuenv usage`` answers without a Prometheus.

The seam for shared hosts: :class:`UsageCounter` does the counting and does not care where rows come from. For
:class:`UsageTracker` they are this server's kernels, labelled with this server's user; the broker
(broker.metrics) feeds its own counter with every user's kernels on the host, each row carrying its owner, and
serves the same series.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.usage.ledger import Ledger, UsageRecord, UsageRow, summarize

PATH_REFRESH = 2.0  # seconds between two reads of the session list (notebook paths), besides new kernels
RETIRED_GRACE = 300.0  # seconds an ended kernel's counters stay when nothing scrapes them


@dataclass(frozen=True)
class KernelUsage:
    """What one kernel holds at one sample, with the names its usage is counted under."""

    kernel_id: str
    notebook: str = ""  # the session's path; "" for a kernel started without a session
    environment: str = ""
    container: str = ""
    user: str = ""
    gpus: tuple[int, ...] = ()
    gpu_memory: int | None = None  # bytes its processes hold; None when NVML did not answer
    parked: bool = False  # checkpointed to host memory: it holds no GPU

    @property
    def held_gpus(self) -> int:
        return 0 if self.parked else len(self.gpus)

    @property
    def held_bytes(self) -> int:
        return 0 if self.parked else self.gpu_memory or 0


@dataclass
class KernelTotals:
    """One kernel's usage since this server started counting it, under its latest names."""

    labels: KernelUsage
    gpu_seconds: float = 0.0
    gpu_memory_byte_seconds: float = 0.0
    retired_at: float | None = None  # when the kernel was last seen running; None while it runs
    exported_final: bool = False  # a scrape has read the totals after the kernel ended


@dataclass
class _Pending:
    labels: KernelUsage
    start: float
    end: float
    gpu_seconds: float = 0.0
    gpu_memory_byte_seconds: float = 0.0


class UsageMeter:
    """Integrates kernel usage over samples. Thread-safe: the loop observes, a scrape or a worker thread reads."""

    def __init__(self, *, max_gap: float, retired_grace: float = RETIRED_GRACE) -> None:
        self.max_gap = max_gap
        self.retired_grace = retired_grace
        self._lock = threading.Lock()
        self._totals: dict[str, KernelTotals] = {}
        self._pending: dict[str, _Pending] = {}
        self._last_at: float | None = None

    def observe(self, at: float, usages: list[KernelUsage]) -> None:
        """One sample at ``at`` (seconds since the epoch): every running kernel and what it holds."""
        with self._lock:
            if at == self._last_at:
                return  # the same sample again
            # the clock stepped back: start over rather than count nothing until it has caught up
            dt = 0.0 if self._last_at is None or at < self._last_at else min(at - self._last_at, self.max_gap)
            self._last_at = at
            for usage in usages:
                totals = self._totals.get(usage.kernel_id)
                # a kernel seen for the first time counts from now: the time since the last sample may predate it
                held_for = dt if totals is not None and totals.retired_at is None else 0.0
                if totals is None:
                    totals = self._totals[usage.kernel_id] = KernelTotals(labels=usage)
                totals.labels, totals.retired_at, totals.exported_final = usage, None, False
                gpu_seconds, byte_seconds = held_for * usage.held_gpus, held_for * usage.held_bytes
                totals.gpu_seconds += gpu_seconds
                totals.gpu_memory_byte_seconds += byte_seconds
                if gpu_seconds or byte_seconds:
                    pending = self._pending.get(usage.kernel_id)
                    if pending is None:
                        pending = self._pending[usage.kernel_id] = _Pending(usage, start=at - held_for, end=at)
                    pending.labels, pending.end = usage, at
                    pending.gpu_seconds += gpu_seconds
                    pending.gpu_memory_byte_seconds += byte_seconds
            self._retire_missing({u.kernel_id for u in usages}, at)

    def pause(self) -> None:
        """NVML stopped answering: the time until the next sample is not counted."""
        with self._lock:
            self._last_at = None

    def retire_missing(self, running: set[str], now: float) -> None:
        with self._lock:
            self._retire_missing(running, now)

    def _retire_missing(self, running: set[str], now: float) -> None:
        for kernel_id, totals in self._totals.items():
            if kernel_id not in running and totals.retired_at is None:
                totals.retired_at = now

    def totals(self) -> list[KernelTotals]:
        with self._lock:
            return [dataclasses.replace(t) for t in self._totals.values()]

    def mark_exported(self, retired: list[tuple[str, float]]) -> None:
        """A scrape has read these ended kernels' final totals (kernel id, retired at)."""
        with self._lock:
            for kernel_id, retired_at in retired:
                totals = self._totals.get(kernel_id)
                if totals is not None and totals.retired_at == retired_at:
                    totals.exported_final = True

    def purge(self, now: float) -> None:
        """Forget ended kernels whose final totals were scraped, or that nothing scraped for a grace period."""
        with self._lock:
            for kernel_id, totals in list(self._totals.items()):
                retired = totals.retired_at
                if retired is not None and (totals.exported_final or now - retired > self.retired_grace):
                    del self._totals[kernel_id]

    def take_pending(self) -> list[UsageRecord]:
        """The usage not yet written to the ledger, as records; the meter forgets it."""
        with self._lock:
            records = [_record(p) for p in self._pending.values()]
            self._pending.clear()
        return records

    def peek_pending(self) -> list[UsageRecord]:
        with self._lock:
            return [_record(p) for p in self._pending.values()]

    def restore_pending(self, records: list[UsageRecord]) -> None:
        """Records that could not be written: merged back, so a failing disk loses nothing and grows nothing."""
        with self._lock:
            for r in records:
                pending = self._pending.get(r.kernel_id)
                if pending is None:  # labels are only what the ledger needs
                    labels = KernelUsage(r.kernel_id, r.notebook, r.environment, user=r.user)
                    pending = self._pending[r.kernel_id] = _Pending(labels, start=r.start, end=r.end)
                pending.start, pending.end = min(pending.start, r.start), max(pending.end, r.end)
                pending.gpu_seconds += r.gpu_seconds
                pending.gpu_memory_byte_seconds += r.gpu_memory_byte_seconds


def _record(p: _Pending) -> UsageRecord:
    u = p.labels
    return UsageRecord(
        start=p.start,
        end=p.end,
        user=u.user,
        notebook=u.notebook,
        kernel_id=u.kernel_id,
        environment=u.environment,
        gpu_seconds=p.gpu_seconds,
        gpu_memory_byte_seconds=p.gpu_memory_byte_seconds,
    )


@dataclass(frozen=True)
class View:
    """What a scrape reads: published whole by the tracker each tick, so a scrape never sees half an update."""

    snapshot: Snapshot
    usages: list[KernelUsage] = field(default_factory=list)
    totals: list[KernelTotals] = field(default_factory=list)


def server_user() -> str:
    """The user this server runs for: JupyterHub's name for it, else the account's."""
    if os.environ.get("JUPYTERHUB_USER"):
        return os.environ["JUPYTERHUB_USER"]
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry for this uid (containers with an arbitrary uid)
        return str(os.getuid())


class UsageCounter:
    """Each sample, the rows of ``usages()`` into the meter and a new :class:`View`; every flush interval, the
    meter into the ledger. Subclasses say where the rows come from: a server's kernels, or a broker's leases."""

    def __init__(
        self,
        *,
        sampler,
        ledger: Ledger | None = None,
        flush_interval: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.sampler = sampler
        self.ledger = ledger
        self.flush_interval = flush_interval
        self.log = log or logging.getLogger(__name__)
        self.meter = UsageMeter(max_gap=max(10 * sampler.interval, 30.0))
        self.view = View(snapshot=sampler.latest)
        self._last_flush = time.monotonic()
        self._flushing: asyncio.Future | None = None
        self._callback: Any = None  # what calls tick() each sample: its owner's (start)
        self._logged: set[str] = set()

    def start(self) -> None:
        """Call ``tick`` each sample, on the owner's event loop (a tornado PeriodicCallback, in server/ and broker/)."""
        raise NotImplementedError

    def flush_soon(self, seconds: float) -> None:
        """Write the ledger ``seconds`` from now, or as soon after as there is something to write; then every
        flush interval."""
        self._last_flush = time.monotonic() - self.flush_interval + seconds

    async def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
        await self.flush()

    async def usages(self, snapshot: Snapshot) -> list[KernelUsage]:
        """Every running kernel and what it holds at ``snapshot`` (on the loop: memory only, or awaited)."""
        raise NotImplementedError

    # -- each sample (on the loop) -------------------------------------------------------------------
    async def tick(self) -> None:
        try:
            await self._tick()
        except Exception as exc:
            self._log_once("tick", exc, f"gpuenv: counting GPU usage failed: {exc!r}", exc_info=True)

    async def _tick(self) -> None:
        snapshot = self.sampler.latest
        usages = await self.usages(snapshot)
        if snapshot.available:
            self.meter.observe(snapshot.sampled_at, usages)  # a sample seen before counts once
        else:
            self.meter.pause()
        now = time.time()
        self.meter.retire_missing({u.kernel_id for u in usages}, now)
        self.meter.purge(now)
        self.view = View(snapshot, usages, self.meter.totals())
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self._start_flush()

    # -- the ledger (worker threads) -----------------------------------------------------------------
    def _start_flush(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            return
        records = self.meter.take_pending()
        if not records:  # nothing to write yet: the first record after a quiet spell is written at once
            return
        self._last_flush = time.monotonic()
        if self.ledger is not None:
            self._flushing = asyncio.get_running_loop().run_in_executor(None, self._write, self.ledger, records)

    async def flush(self) -> None:
        """Write everything pending now (at shutdown)."""
        if self._flushing is not None:
            await self._flushing
        self._last_flush = time.monotonic()
        records = self.meter.take_pending()
        if records and self.ledger is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._write, self.ledger, records)

    def _write(self, ledger: Ledger, records: list[UsageRecord]) -> None:
        try:
            ledger.append(records)
        except Exception as exc:  # a worker thread's end: nothing may escape into the loop, nothing may be lost
            self.meter.restore_pending(records)
            self._log_once("ledger", exc, f"gpuenv: could not write the usage ledger in {ledger.folder}: {exc}")

    async def report(self, since: float, until: float, by: str) -> dict[str, Any]:
        """GPU-hours per user or notebook in ``[since, until)``: the ledger plus what is not written yet."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        pending = self.meter.peek_pending()

        def read() -> list[UsageRow]:
            written = self.ledger.read(since, until) if self.ledger is not None else []
            return summarize(written + pending, since, until, by)

        rows = await asyncio.get_running_loop().run_in_executor(None, read)
        return {"since": since, "until": until, "by": by, "usage": rows}

    def _log_once(self, where: str, exc: Exception, message: str, exc_info: bool = False) -> None:
        """One warning per place and kind of error, however often it happens."""
        condition = f"{where}:{type(exc).__name__}"
        if condition not in self._logged:
            self._logged.add(condition)
            self.log.warning(message, exc_info=exc_info)
