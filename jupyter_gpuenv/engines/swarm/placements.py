"""Where each kernel runs and which GPUs it holds, read back from Swarm. Pure: it is handed the ``attrs`` of
``services.list()``, ``tasks`` and ``nodes.list()`` (any manager answers the same) and reads them.

Swarm records the GPUs it reserved for a task in the task itself (``Task.GenericResources``: one
``NamedResourceSpec`` per UUID), next to the node it chose; the service's labels say whose kernel it is. So
the lease truth is Swarm's, readable from every manager, and nothing of ours has to agree with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jupyter_gpuenv.engines.swarm import service as s

# Task states in which Swarm counts the task's generic resources as taken (it gives them back at any end state)
HOLDING = {"assigned", "accepted", "preparing", "ready", "starting", "running"}
ENDED = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    up: bool  # Swarm hears its heartbeats ("ready"); "down" or "unknown" otherwise
    available: bool  # not drained or paused
    gpus: tuple[tuple[str, str], ...]  # (kind, uuid) it advertises
    labels: dict[str, str]
    address: str = ""  # where the node's broker is reached (its swarm address)


@dataclass(frozen=True)
class Placement:
    """One kernel as Swarm has it."""

    kernel_id: str
    user: str
    service_id: str
    state: str  # the task's: "pending" (no node yet), "running", "failed", …; "" before Swarm made a task
    host: str  # the node's hostname, "" while pending
    gpus: tuple[str, ...]  # the UUIDs reserved for it
    reason: str  # Swarm's words for why it is not running, "" if it is

    @property
    def holds_gpus(self) -> bool:
        return self.state in HOLDING


def read_nodes(nodes: Iterable[dict]) -> list[Node]:
    out = []
    for n in nodes:
        resources = n.get("Description", {}).get("Resources", {}).get("GenericResources") or []
        gpus = tuple(
            (r["NamedResourceSpec"]["Kind"], r["NamedResourceSpec"]["Value"])
            for r in resources
            if "NamedResourceSpec" in r
        )
        out.append(
            Node(
                id=n["ID"],
                hostname=n.get("Description", {}).get("Hostname", n["ID"][:12]),
                up=n.get("Status", {}).get("State") == "ready",
                available=n.get("Spec", {}).get("Availability") == "active",
                gpus=gpus,
                labels=dict(n.get("Spec", {}).get("Labels") or {}),
                address=n.get("Status", {}).get("Addr", ""),
            )
        )
    return out


def read_placements(services: Iterable[dict], tasks: Iterable[dict], nodes: Iterable[Node]) -> list[Placement]:
    """Our kernels' services (those with a kernel label), each with its newest task."""
    hostnames = {n.id: n.hostname for n in nodes}
    newest: dict[str, dict] = {}
    for t in tasks:
        current = newest.get(t["ServiceID"])
        if current is None or t.get("CreatedAt", "") > current.get("CreatedAt", ""):
            newest[t["ServiceID"]] = t
    out = []
    for svc in services:
        labels = svc.get("Spec", {}).get("Labels") or {}
        if s.KERNEL not in labels:
            continue
        task = newest.get(svc["ID"], {})
        status = task.get("Status", {})
        state = status.get("State", "")
        out.append(
            Placement(
                kernel_id=labels[s.KERNEL],
                user=labels.get(s.USER, ""),
                service_id=svc["ID"],
                state=state,
                host=hostnames.get(task.get("NodeID", ""), ""),
                gpus=tuple(
                    r["NamedResourceSpec"]["Value"]
                    for r in task.get("GenericResources") or []
                    if "NamedResourceSpec" in r
                ),
                reason="" if state == "running" else status.get("Err") or status.get("Message", ""),
            )
        )
    return out


def dead_hosts(placements: Iterable[Placement], nodes: Iterable[Node]) -> dict[str, str]:
    """Kernels last placed on a host Swarm no longer hears from: kernel id → the sentence for its notebook.

    When a node misses its heartbeats (3 periods: 15 s by default, ``docker swarm update
    --dispatcher-heartbeat``), Swarm marks it down and rejects its tasks ("assigned node no longer meets
    constraints"), which frees their GPUs; with restart policy none it starts nothing elsewhere. Until then the
    task reads "running". Either way the kernel is lost, and its notebook is told which host went."""
    down = {n.hostname for n in nodes if not n.up}
    return {
        p.kernel_id: f"host {p.host} stopped answering: the kernel there is lost; restart it to run elsewhere"
        for p in placements
        if p.host in down and p.state != "complete"
    }


def no_room(kind: str, count: int, nodes: Iterable[Node], placements: Iterable[Placement]) -> str:
    """The sentence for a kernel Swarm cannot place ("insufficient resources"): what each host has, who holds it.

    Swarm says only "no suitable node (insufficient resources on 3 nodes)"; a person wants to know whom to ask."""
    holder = {uuid: p for p in placements if p.holds_gpus for uuid in p.gpus}
    hosts = []
    for n in sorted(nodes, key=lambda n: n.hostname):
        mine = [uuid for k, uuid in n.gpus if k == kind]
        if not mine:
            continue
        held = [holder[u] for u in mine if u in holder]
        state = "" if n.up and n.available else (" (not answering)" if not n.up else " (drained)")
        who = ", ".join(f"{p.user or '?'} (kernel {p.kernel_id[:8]})" for p in held)
        hosts.append(
            f"{n.hostname}{state}: {len(mine) - len(held)} of {len(mine)} free" + (f", held by {who}" if who else "")
        )
    if not hosts:
        return f"No host in the cluster has a {kind}: ask the administrator which GPU models there are."
    return f"No host has {count} free {kind} now. " + "; ".join(hosts) + "."


def free_gpus(kind: str, nodes: Iterable[Node], placements: Iterable[Placement]) -> dict[str, list[str]]:
    """Node id → the UUIDs of ``kind`` no kernel holds there, on hosts Swarm may place on (up, not drained).

    The broker's own count of what is free: a kernel is created only when a host has room (no task left
    pending, whose next try Swarm would make only ~14 s later), and its queue knows when a GPU came free."""
    held = {uuid for p in placements if p.holds_gpus or p.state in ("", "new", "pending") for uuid in p.gpus}
    return {
        n.id: [uuid for k, uuid in n.gpus if k == kind and uuid not in held]
        for n in nodes
        if n.up and n.available and any(k == kind for k, _ in n.gpus)
    }


def choose_node(kind: str, count: int, nodes: Iterable[Node], placements: Iterable[Placement]) -> Node | None:
    """The host a kernel goes to when its broker must prepare that host first (its socket folder), as Swarm's own
    spread would: for GPUs, the host with the most free of ``kind``; for a CPU kernel, the labelled host with the
    fewest kernels. None when no host has room."""
    nodes, placements = list(nodes), list(placements)
    if count:
        room = free_gpus(kind, nodes, placements)
        fits = [n for n in nodes if len(room.get(n.id, ())) >= count]
        return max(fits, key=lambda n: (len(room[n.id]), n.hostname), default=None)
    running: dict[str, int] = {}
    for p in placements:
        if p.state not in ENDED:
            running[p.host] = running.get(p.host, 0) + 1
    hosts = [n for n in nodes if n.up and n.available and n.labels.get(s.CPU_HOSTS) == "true"]
    return min(hosts, key=lambda n: (running.get(n.hostname, 0), n.hostname), default=None)
