"""Which notebook kernel a GPU process belongs to.

NVML names host PIDs. A local kernel is found by walking a PID's parents up to a kernel's own process; a
container kernel by the container id in ``/proc/<pid>/cgroup`` (``…/docker/<id>``, ``…/docker-<id>.scope``,
podman's, containerd's and cri-o's). The kernels themselves are given as :class:`KernelIndex` — built from
the server's kernel manager by the caller — so everything here is pure apart from reading ``/proc``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_gpuenv.gpus.nvml import Snapshot

# docker (both drivers), podman, containerd and cri-o name the container in its cgroup path; Kubernetes'
# cgroupfs driver puts the bare id under /kubepods/<class>/pod<uid>/
_CONTAINER_ID = re.compile(r"(?:/docker/|/docker-|/libpod-|/cri-containerd-|/crio-|/kubepods/[^\n]*/)([0-9a-f]{64})")


@dataclass
class KernelIndex:
    """Running kernels: by their process id (local kernels) and by container id (container kernels)."""

    by_pid: dict[int, str] = field(default_factory=dict)
    by_container: dict[str, str] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)  # container id -> whose (another user's, via the broker)


def container_id_from_cgroup(text: str) -> str | None:
    """The container id a process runs in, from the text of ``/proc/<pid>/cgroup``; None on the host."""
    match = _CONTAINER_ID.search(text)
    return match.group(1) if match else None


def read_cgroup(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return ""


def parent_pid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The parent of ``pid`` from ``/proc/<pid>/stat``; None when the process is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields we want follow the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def owning_kernel(
    pid: int,
    kernels: KernelIndex,
    *,
    cgroup_of: Callable[[int], str] = read_cgroup,
    parent_of: Callable[[int], int | None] = parent_pid,
    max_depth: int = 32,
) -> tuple[str | None, str | None]:
    """``(kernel_id, container_id)`` for a GPU process; either may be None."""
    container = container_id_from_cgroup(cgroup_of(pid))
    if container is not None:
        return kernels.by_container.get(container), container
    current: int | None = pid
    for _ in range(max_depth):
        if current is None or current <= 1:
            break
        if current in kernels.by_pid:
            return kernels.by_pid[current], None
        current = parent_of(current)
    return None, None


def attribute(snapshot: Snapshot, kernels: KernelIndex, **lookups) -> None:
    """Fill ``kernel_id`` and ``container_id`` of every process in the snapshot, in place."""
    for gpu in snapshot.gpus:
        for proc in gpu.processes:
            proc.kernel_id, proc.container_id = owning_kernel(proc.pid, kernels, **lookups)
            cid = proc.container_id or ""
            # the broker names another user's container by its short id (12 digits), one's own by the whole
            proc.user = (kernels.others.get(cid) or kernels.others.get(cid[:12])) if proc.kernel_id is None else None
