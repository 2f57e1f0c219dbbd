"""Parking rules: which kernel may be parked, which idle kernel is parked by policy, whether one may resume.

Pure: the facts come in (the kernel's activity, its GPU processes, the GPUs' recent utilization, who holds
which GPU), a decision goes out. The record of a parked kernel (``ParkRecord``) is what releases its GPU lease:
on one person's machine the server keeps it in a private file that GPU allocation reads (``ParkBook``); on a
shared host the broker's lease book holds it. ``server.parking`` and the broker act on these decisions.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from jupyter_gpuenv.containers.allocation import Holdings, describe
from jupyter_gpuenv.errors import NoFreeGpu
from jupyter_gpuenv.gpus.nvml import GpuSample

PARKED, FAILED = "parked", "failed"  # a record's state; parking/resuming are transient, in memory only
BY_PERSON, BY_POLICY = "you", "idle policy"
GPU_AT_REST = 5  # percent utilization at or under which a GPU is doing no work


@dataclass
class ParkRecord:
    kernel_id: str
    pids: list[int]  # host pids of its GPU processes: the driver acts on these
    gpus: list[str]  # uuids it held: what it gets back
    exclusive: bool = False
    container_id: str = ""  # "" for a local kernel
    host_memory: int = 0  # bytes of GPU memory moved to host memory
    since: float = 0.0
    by: str = BY_PERSON
    state: str = PARKED
    message: str | None = None


@dataclass(frozen=True)
class IdlePolicy:
    """Park a kernel idle ``idle_minutes`` (0: never) whose GPUs did no work meanwhile and that holds at least
    ``min_gpu_memory`` bytes."""

    idle_minutes: float = 0.0
    min_gpu_memory: int = 1 << 30

    @property
    def on(self) -> bool:
        return self.idle_minutes > 0

    def as_dict(self) -> dict[str, Any] | None:
        return {"idle_minutes": self.idle_minutes, "min_gpu_memory": self.min_gpu_memory} if self.on else None


@dataclass(frozen=True)
class KernelFacts:
    """What the rules need of one kernel."""

    kernel_id: str
    execution_state: str  # jupyter's: idle, busy, starting, dead, …
    last_activity: float  # epoch seconds of its last message
    pids: tuple[int, ...] = ()  # its processes on a GPU now
    gpu_memory: int = 0  # bytes they hold
    gpus: tuple[str, ...] = ()  # uuids they are on
    parked: bool = False
    memory_room: int | None = None  # bytes its process may still take in host memory (None: unknown)
    room_by: str = ""  # what limits that: "the host", "its container's memory limit"


def why_not_park(facts: KernelFacts, unavailable: str | None) -> str | None:
    """The sentence that says why this kernel cannot be parked now; None when it can."""
    if unavailable:
        return f"parking is not possible here: {unavailable}"
    if facts.parked:
        return "the kernel is parked already"
    if facts.execution_state == "busy":
        return "the kernel is running a cell: park it once the cell has finished"
    if facts.execution_state in ("restarting", "dead"):  # "starting" stays until a client asks the kernel anything
        return f"the kernel is {facts.execution_state}"
    if not facts.pids:
        return "the kernel holds no GPU memory: there is nothing to park"
    if facts.memory_room is not None and facts.gpu_memory > facts.memory_room:
        return (
            f"parking moves its {facts.gpu_memory / 2**30:.1f} GiB of GPU memory into host memory, and "
            f"{facts.room_by} leaves room for {facts.memory_room / 2**30:.1f} GiB: free some memory first"
        )
    return None


def idle_to_park(
    now: float,
    kernels: Iterable[KernelFacts],
    policy: IdlePolicy,
    history: list[dict[str, Any]],
    unavailable: str | None,
) -> list[KernelFacts]:
    """The kernels the idle policy parks now: idle long enough, holding enough, on GPUs that did no work since.

    ``history``: the sampler's entries (``{"t": …, "gpus": [{"uuid", "utilization_gpu"}, …]}``), oldest first.
    """
    if not policy.on or unavailable:
        return []
    window = policy.idle_minutes * 60
    chosen = []
    for k in kernels:
        quiet = k.execution_state in ("idle", "starting")  # "starting": no client has asked it anything since
        if why_not_park(k, None) or not quiet or now - k.last_activity < window:
            continue
        if k.gpu_memory < policy.min_gpu_memory:
            continue
        recent = [e for e in history if e.get("t", 0) >= now - window]
        worked = any(
            (g.get("utilization_gpu") or 0) > GPU_AT_REST
            for e in recent
            for g in e.get("gpus", [])
            if g.get("uuid") in k.gpus
        )
        if not worked:
            chosen.append(k)
    return chosen


def resume_blocker(record: ParkRecord, holdings: Holdings, gpus: list[GpuSample]) -> NoFreeGpu | None:
    """Why the parked kernel cannot have its GPUs back now (another kernel took one), or None.

    ``holdings``: what every other kernel holds now (parked ones hold nothing). An exclusive kernel needs its
    GPUs free of anyone; a sharing one needs them not held exclusively by another.
    """
    taken = [
        uuid
        for uuid in record.gpus
        if (holdings.held_by_anyone(uuid) if record.exclusive else uuid in holdings.exclusive)
    ]
    if not taken:
        return None
    mine = [g for g in gpus if g.uuid in record.gpus]
    return NoFreeGpu(
        f"its GPU is taken while it was parked ({describe(mine, holdings)}): resume it once that kernel ends, "
        "or restart this kernel to start it on another GPU"
    )


class ParkBook:
    """One server's parked kernels, in a 0600 file of its user's private folder (one person's machine).

    Each of the user's servers keeps its own (``parked-<pid>.json``: a server forgets only its own kernels), and
    GPU allocation reads them all under the allocation lock (``released_in``): a parked kernel's container still
    carries the GPU labels it was started with, and its record says that it holds them no longer.
    """

    @classmethod
    def of_server(cls, private_dir: str, pid: int) -> ParkBook:
        return cls(os.path.join(private_dir, f"parked-{pid}.json"))

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, ParkRecord]:
        try:
            with open(self.path) as f:
                raw = json.load(f)
        except (FileNotFoundError, ValueError):
            return {}
        return {r["kernel_id"]: ParkRecord(**r) for r in raw if isinstance(r, dict)}

    def save(self, records: dict[str, ParkRecord]) -> None:
        if not records:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        staging = f"{self.path}.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(r) for r in records.values()], f, indent=1)
        os.replace(staging, self.path)


def released(records: Iterable[ParkRecord]) -> set[str]:
    """Containers whose GPUs are released: their kernels are parked (or failed to come back)."""
    return {r.container_id for r in records if r.container_id}


def released_in(private_dir: str) -> set[str]:
    """The containers every server of this user on this host has parked (each of their books)."""
    found: set[str] = set()
    for path in glob.glob(os.path.join(private_dir, "parked-*.json")):
        found |= released(ParkBook(path).load().values())
    return found
