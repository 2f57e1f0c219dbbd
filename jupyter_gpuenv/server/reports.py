"""What GET environments and GET kernels (and the metrics) report: read from the same sources a start uses.

Every environment's row is the ``preflight`` verdict the provisioner would reach, so the panel never offers
what a start would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.host import ContainerMemory, container_memory


def kernel_rows(kernel_manager, snapshot: Snapshot, parking=None) -> list[dict[str, Any]]:
    """Every running kernel: its environment, container, GPUs, the GPU memory its processes hold, and whether it
    is parked (with ``parking``, the server's ``ServerParking``)."""
    memory: dict[str, int] = {}
    used_gpus: dict[str, set[int]] = {}
    for gpu in snapshot.gpus:
        for proc in gpu.processes:
            if proc.kernel_id:
                memory[proc.kernel_id] = memory.get(proc.kernel_id, 0) + (proc.used_memory or 0)
                used_gpus.setdefault(proc.kernel_id, set()).add(gpu.index)
    rows = []
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            km = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        provisioner = km.provisioner
        environment = getattr(provisioner, "environment_name", None)
        placement = getattr(provisioner, "placement", None)
        last_exit = getattr(provisioner, "last_exit", None)
        assigned = [g.index for g in placement.gpus] if placement else []
        rows.append(
            {
                "kernel_id": kernel_id,
                "kernel_name": km.kernel_name,
                "environment": environment,
                "container_id": placement.container_id if placement else None,
                "gpu_mode": placement.gpu_mode if placement else None,
                "gpus": assigned or sorted(used_gpus.get(kernel_id, ())),
                "gpu_memory": memory.get(kernel_id) if snapshot.available else None,
                "last_exit": asdict(last_exit) if last_exit else None,
                "park": parking.row(kernel_id, snapshot) if parking is not None else None,
                "host_memory": None,  # filled by add_host_memory, off the loop
            }
        )
    return rows


def add_host_memory(
    rows: list[dict[str, Any]],
    warn_at: float,
    read: Callable[[str], ContainerMemory | None] = container_memory,
) -> None:
    """Each container kernel's memory against its limit, from its cgroup: ``{used, limit, warning}``, ``warning``
    from ``warn_at`` of the limit on (``c.GpuEnv.memory_warning_at``). Reads files: call it in a thread."""
    for row in rows:
        memory = read(row["container_id"]) if row["container_id"] else None
        row["host_memory"] = None if memory is None else host_memory(memory, warn_at)


def host_memory(memory: ContainerMemory, warn_at: float) -> dict[str, Any]:
    warning = memory.limit is not None and memory.used >= warn_at * memory.limit
    return {"used": memory.used, "limit": memory.limit, "warning": warning}


def kernel_report(kernel_manager, snapshot: Snapshot, parking=None) -> dict[str, Any]:
    return {"kernels": kernel_rows(kernel_manager, snapshot, parking)}
