"""Park and resume on a shared host: the broker parks any user's kernel, and applies the idle policy to all.

The broker is the one that may act on every user's process (the driver's checkpoint API, as root), and its lease
book is where a parked kernel gives its GPU back: the lease keeps the record (``KernelLease.park``) and holds no
GPU until the kernel resumes. It follows each GPU kernel's IOPub socket (in the socket folder it made) to know
how long the kernel has been idle and to resume it when a cell is run.

Its ``Parker`` knows kernels by container id: kernel ids are chosen by each user's server and may repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

from jupyter_gpuenv import host
from jupyter_gpuenv.broker import folders as broker_folders
from jupyter_gpuenv.broker.leases import RUNNING, KernelLease, LeaseBook
from jupyter_gpuenv.broker.policy import check_start
from jupyter_gpuenv.containers.allocation import Holdings
from jupyter_gpuenv.errors import UnknownKernel
from jupyter_gpuenv.parking.activity import KernelActivity, iopub_address
from jupyter_gpuenv.parking.parker import Parker
from jupyter_gpuenv.parking.rules import (
    BY_PERSON,
    BY_POLICY,
    IdlePolicy,
    KernelFacts,
    ParkRecord,
    idle_to_park,
    why_not_park,
)

log = logging.getLogger("jupyter_gpuenv.broker")
CONNECTION_FILE_LIMIT = 1 << 16  # bytes: a connection file is a few hundred
UNREADABLE_RETRY = 30.0  # seconds before a connection file that could not be read is looked at again


class LeaseStore:
    """``parker.Store`` over the broker's lease book: a parked lease holds no GPU; its record says which it had."""

    def __init__(self, book: LeaseBook, lock: asyncio.Lock, names: Any) -> None:
        self.book, self.lock, self.names = book, lock, names

    def lease(self, container_id: str) -> KernelLease | None:
        return next((k for k in self.book if container_id and k.container_id == container_id), None)

    def get(self, container_id: str) -> ParkRecord | None:
        lease = self.lease(container_id)
        return ParkRecord(**lease.park) if lease is not None and lease.park else None

    def all(self) -> list[ParkRecord]:
        return [ParkRecord(**k.park) for k in self.book if k.park]

    def put(self, record: ParkRecord) -> None:
        lease = self.lease(record.kernel_id)
        if lease is not None:
            lease.park, lease.gpus = asdict(record), []
            self.book.put(lease)

    def drop(self, container_id: str) -> None:
        lease = self.lease(container_id)
        if lease is not None and lease.park:
            lease.gpus = list(lease.park["gpus"]) if lease.park["state"] == "parked" else []
            lease.park = None
            self.book.put(lease)

    def locked(self) -> asyncio.Lock:
        return self.lock

    async def others(self, container_id: str) -> Holdings:
        lease = self.lease(container_id)
        held = self.book.holdings(excluding=(lease.user, lease.kernel_id) if lease else None)
        held.names = self.names()
        return held


class BrokerParking:
    def __init__(self, daemon: Any, policy: IdlePolicy, timeout: float) -> None:
        self.daemon = daemon
        self.policy = policy
        names = lambda: {k.kernel_id: daemon.name_of(k) for k in daemon.book}  # noqa: E731
        self.store = LeaseStore(daemon.book, daemon.lock, names)
        self.parker = Parker(self.store, timeout=timeout, log=log, inventory=lambda: list(daemon.sampler.latest.gpus))
        daemon.book.release_listeners.append(self.parker.released)  # a kernel's end wakes a cell waiting for its GPU
        self.activity: dict[str, KernelActivity] = {}  # container id -> its kernel's IOPub
        self.unreadable: dict[str, float] = {}  # container id -> when its connection file could not be read

    # -- facts -----------------------------------------------------------------------------------------
    def facts(self, lease: KernelLease) -> KernelFacts:
        gpus = self.daemon.sampler.latest.gpus  # the sampler names each process's container (broker_metrics)
        procs = [(g, p) for g in gpus for p in g.processes if p.container_id == lease.container_id]
        seen = self.activity.get(lease.container_id)
        return self.parker.facts(
            lease.container_id,
            procs,
            execution_state=seen.execution_state if seen else "idle",
            last_activity=seen.last_activity if seen else 0,
        )

    def row(self, lease: KernelLease) -> dict[str, Any]:
        return self.parker.row(lease.container_id, why_not_park(self.facts(lease), self.parker.known_unavailable))

    # -- the operations ----------------------------------------------------------------------------------
    def _lease(self, user: str, container_id: Any) -> KernelLease:
        lease = self.daemon.book.by_container(user, container_id if isinstance(container_id, str) else "")
        if lease is None or lease.state != RUNNING:
            raise UnknownKernel("no such kernel container of yours")
        return lease

    async def park(self, user: str, container_id: Any, by: str = BY_PERSON) -> dict[str, Any]:
        lease = self._lease(user, container_id)
        await self.parker.park(
            self.facts(lease), gpus=list(lease.gpus), exclusive=lease.exclusive, container_id=lease.container_id, by=by
        )
        log.info("gpuenv broker: %s's kernel %s parked (%s)", lease.user, lease.kernel_id, by)
        return self.row(lease)

    async def resume(self, user: str, container_id: Any, groups: tuple[str, ...] = ()) -> dict[str, Any]:
        """Resume one of ``user``'s kernels: its GPUs must be free, and the policy must allow them (a parked kernel
        holds no GPU, so its user may have started another meanwhile)."""
        lease = self._lease(user, container_id)
        if lease.park and lease.park.get("state") == "parked":
            others = [k for k in self.daemon.book.of_user(user) if k.kernel_id != lease.kernel_id]
            rule = self.daemon.policy.rule_for(user, list(groups))
            wanted = len(lease.park.get("gpus") or [])
            check_start(rule, user, lease.environment, wanted, sum(len(k.gpus) for k in others), len(others))
        await self.parker.resume(lease.container_id, list(self.daemon.sampler.latest.gpus))
        return self.row(lease)

    async def summary(self) -> dict[str, Any]:
        reason = await self.parker.unavailable()
        return {"available": reason is None, "reason": reason, "auto_park": self.policy.as_dict()}

    # -- in the background -----------------------------------------------------------------------------
    async def tend(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            await asyncio.sleep(interval)
            try:
                await self.round()
            except Exception:  # a bug: log it, keep serving
                log.exception("gpuenv broker: parking's background round failed")
        for watch in self.activity.values():
            watch.stop()
        self.parker.close()

    async def round(self) -> None:
        leases = {k.container_id: k for k in self.daemon.book if k.state == RUNNING and k.container_id}
        for container_id in list(self.activity):
            if container_id not in leases:
                self.activity.pop(container_id).stop()
                self.parker.forget(container_id)
        self.unreadable = {c: t for c, t in self.unreadable.items() if c in leases}
        for container_id, lease in leases.items():
            if lease.park and not all(host.process_alive(p) for p in lease.park["pids"]):
                self.parker.forget(container_id)  # its kernel restarted: the new one holds what it was given
            if container_id not in self.activity and (lease.gpus or lease.park):
                await self._follow(lease)
        # no retry of waiting cells here: every GPU on this host is released through the lease book (a lease dropped,
        # a kernel parked), which wakes them (``Parker.released``)
        facts = [self.facts(k) for k in leases.values() if k.gpus and not k.park]
        unavailable = await self.parker.unavailable() if self.policy.on else None
        for f in idle_to_park(time.time(), facts, self.policy, self.daemon.sampler.history(), unavailable):
            lease = leases[f.kernel_id]
            try:
                await self.park(lease.user, lease.container_id, by=BY_POLICY)
            except Exception as exc:  # one kernel's failure is logged; the others are still looked at
                log.warning("gpuenv broker: idle kernel %s of %s was not parked: %s", lease.kernel_id, lease.user, exc)

    @staticmethod
    def _address(lease: KernelLease, info: dict) -> str:
        """The kernel's IOPub address, only where a kernel of this lease can listen: its own socket folder (ipc)
        or loopback (tcp). The file is the user's: root connects nowhere else on their word."""
        port = info["iopub_port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError("iopub_port")
        if info.get("transport") == "ipc" and info.get("ip") == os.path.join(lease.socket_dir, "k"):
            return iopub_address(info)
        if info.get("transport") == "tcp" and info.get("ip") == "127.0.0.1":
            return iopub_address(info)
        raise ValueError("a connection file that points outside the kernel's own sockets")

    async def _follow(self, lease: KernelLease) -> None:
        """Follow a kernel's IOPub, found in its connection file: a file of the user's, read as the rule for root
        says (``broker_folders.read_user_file``: regular, theirs, small, no links, off the loop). One that could
        not be read is looked at again only after UNREADABLE_RETRY seconds."""
        if time.monotonic() - self.unreadable.get(lease.container_id, -UNREADABLE_RETRY) < UNREADABLE_RETRY:
            return
        try:
            raw = await asyncio.get_running_loop().run_in_executor(
                None, broker_folders.read_user_file, lease.socket_dir, "connection.json", lease.uid,
                CONNECTION_FILE_LIMIT,
            )  # fmt: skip
            address = self._address(lease, json.loads(raw))
        except FileNotFoundError:
            return  # not written yet: the next round looks again
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            if lease.container_id not in self.unreadable:
                log.info("gpuenv broker: kernel %s of %s: its connection file is not followed for now (%s)",
                         lease.kernel_id, lease.user, exc)  # fmt: skip
            self.unreadable[lease.container_id] = time.monotonic()
            return
        self.unreadable.pop(lease.container_id, None)
        container_id = lease.container_id
        inventory = lambda: list(self.daemon.sampler.latest.gpus)  # noqa: E731
        cell_started = lambda: self.parker.cell_started(container_id, inventory)  # noqa: E731
        self.activity[container_id] = watch = KernelActivity(address, cell_started, log)
        watch.start()
