"""This server's GPU usage: its kernels, counted each sample by ``usage.counter`` and named by their notebooks."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from tornado.ioloop import PeriodicCallback

from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.server import reports
from jupyter_gpuenv.usage.counter import PATH_REFRESH, KernelUsage, UsageCounter, server_user
from jupyter_gpuenv.usage.ledger import Ledger

if TYPE_CHECKING:  # server.parking is the extension's to start; this only reads its records
    from jupyter_gpuenv.server.parking import ServerParking


class UsageTracker(UsageCounter):
    """This server's kernels, from its kernel manager, named by their sessions' paths and this server's user."""

    def __init__(
        self,
        *,
        sampler,
        kernel_manager,
        session_manager=None,
        ledger: Ledger | None = None,
        user: str | None = None,
        flush_interval: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        super().__init__(sampler=sampler, ledger=ledger, flush_interval=flush_interval, log=log)
        self.kernel_manager, self.session_manager = kernel_manager, session_manager
        self.user = user if user is not None else server_user()
        self._paths: dict[str, str] = {}  # kernel id -> session path
        self._paths_known: set[str] = set()  # kernel ids running at the last read of the sessions
        self._paths_at = -math.inf
        self.parking: ServerParking | None = None  # the server's, once it exists: a parked kernel holds no GPU

    def start(self) -> None:
        self._callback = PeriodicCallback(self.tick, self.sampler.interval * 1000)
        self._callback.start()

    async def usages(self, snapshot: Snapshot) -> list[KernelUsage]:
        rows = reports.kernel_rows(self.kernel_manager, snapshot, self.parking)
        running = {row["kernel_id"] for row in rows}
        if not running <= self._paths_known or time.monotonic() - self._paths_at > PATH_REFRESH:
            await self._refresh_paths(running)
        return [self._usage(row) for row in rows]

    async def _refresh_paths(self, running: set[str]) -> None:
        self._paths_at, self._paths_known = time.monotonic(), running
        if self.session_manager is None:
            return
        try:
            sessions = await self.session_manager.list_sessions()
        except Exception as exc:
            self._log_once("sessions", exc, f"gpuenv: could not read the sessions to name notebooks: {exc!r}")
            return
        self._paths = {s["kernel"]["id"]: s.get("path") or s.get("name") or "" for s in sessions if s.get("kernel")}

    def _usage(self, row: dict[str, Any]) -> KernelUsage:
        return KernelUsage(
            kernel_id=row["kernel_id"],
            notebook=self._paths.get(row["kernel_id"], ""),
            environment=row.get("environment") or "",
            container=(row.get("container_id") or "")[:12],
            user=self.user,
            gpus=tuple(row.get("gpus") or ()),
            gpu_memory=row.get("gpu_memory"),
            parked=(row.get("park") or {}).get("state") == "parked",
        )
