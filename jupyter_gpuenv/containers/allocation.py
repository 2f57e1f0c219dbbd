"""Which GPUs a new container kernel gets.

Pure: given the GPUs this server may use and what running kernel containers hold (read from the engine's
container labels, the one record every server on the host shares), pick GPUs for a policy. The provisioner
runs this under a host-wide lock while it creates the container, so the label that records the choice
exists before the next kernel chooses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jupyter_gpuenv.environments.definition import GpuPolicy
from jupyter_gpuenv.errors import NoFreeGpu, NoGpu
from jupyter_gpuenv.gpus.nvml import GpuSample


@dataclass
class Holdings:
    """GPU uuid -> kernels holding it, split by whether they hold it exclusively."""

    exclusive: dict[str, list[str]] = field(default_factory=dict)
    shared: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # kernel id -> how a refusal names its holder

    def add(self, uuid: str, kernel_id: str, exclusive: bool) -> None:
        (self.exclusive if exclusive else self.shared).setdefault(uuid, []).append(kernel_id)

    def holders(self, uuid: str | None) -> list[str]:
        """The kernels holding GPU ``uuid``, exclusive ones first; none for a GPU without a uuid (none can name it)."""
        return [] if uuid is None else self.exclusive.get(uuid, []) + self.shared.get(uuid, [])

    def held_by_anyone(self, uuid: str | None) -> bool:
        return bool(self.holders(uuid))


def _least_used(gpus: list[GpuSample]) -> list[GpuSample]:
    return sorted(gpus, key=lambda g: (g.memory.used if g.memory.used is not None else 0, g.index))


def describe(gpus: list[GpuSample], holdings: Holdings) -> str:
    parts = []
    for g in gpus:
        holders = holdings.holders(g.uuid)
        named = sorted({holdings.names[h] for h in holders if h in holdings.names})
        unnamed = [h[:8] for h in holders if h not in holdings.names]
        who = ", ".join(named + ([f"kernel(s) {', '.join(unnamed)}"] if unnamed else []))
        parts.append(f"GPU {g.index} held by {who}" if holders else f"GPU {g.index} free")
    return "; ".join(parts) or "this server sees no GPU"


def choose(
    policy: GpuPolicy, visible: list[GpuSample], holdings: Holdings, keep: list[str] | None = None
) -> list[GpuSample]:
    """GPUs for ``policy`` among ``visible``. ``keep`` (uuids) re-selects a restarted kernel's GPUs."""
    usable = [g for g in visible if g.uuid and not g.error]
    if keep:
        chosen = [g for g in usable if g.uuid in keep]
        exclusive = policy.kind == "exclusive"  # then a kernel that shares the GPU is in the way too
        taken = [g for g in chosen if g.uuid in holdings.exclusive or exclusive and g.uuid in holdings.shared]
        if len(chosen) != len(keep) or taken:
            raise NoFreeGpu(
                "the GPUs this kernel had before its restart are no longer available: " + describe(usable, holdings)
            )
        return chosen
    if policy.kind == "none":
        return []
    if not usable:
        raise NoGpu(f"this environment asks for GPUs ({policy}) but this server sees none")
    not_exclusive = [g for g in usable if g.uuid not in holdings.exclusive]
    if policy.kind == "all":
        if not not_exclusive:
            raise NoFreeGpu("every GPU is held exclusively by another kernel: " + describe(usable, holdings))
        return not_exclusive
    if policy.kind == "count":
        if len(not_exclusive) < policy.count:
            raise NoFreeGpu(
                f"this environment asks for {policy.count} GPU(s) but only "
                f"{len(not_exclusive)} can be shared: " + describe(usable, holdings)
            )
        return sorted(_least_used(not_exclusive)[: policy.count], key=lambda g: g.index)
    if policy.kind == "ids":
        chosen = []
        for token in policy.ids:
            match = [
                g
                for g in usable
                if (
                    str(g.index) == token
                    if token.isdigit()
                    else g.uuid is not None and g.uuid.upper().startswith(token.upper())
                )
            ]
            if not match:
                raise NoFreeGpu(
                    f"GPU {token!r} is not among the GPUs this server may use "
                    f"({', '.join(str(g.index) for g in usable) or 'none'})"
                )
            if match[0].uuid in holdings.exclusive:
                raise NoFreeGpu(f"GPU {token} is held exclusively by another kernel: " + describe(usable, holdings))
            chosen.append(match[0])
        return chosen
    # exclusive: GPUs no other kernel holds in any way
    free = [g for g in usable if not holdings.held_by_anyone(g.uuid)]
    if len(free) < policy.count:
        raise NoFreeGpu(
            f"no {policy.count} free GPU(s) for an exclusive kernel ({describe(usable, holdings)}): "
            "shut down a kernel that holds one, or use an environment that shares GPUs"
        )
    return sorted(_least_used(free)[: policy.count], key=lambda g: g.index)
