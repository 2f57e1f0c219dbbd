"""What the Docker engine records about a kernel container, and what is read back from it.

Pure. Labels are written once when a container is created and never change, so they record what a
container was started with: its kernel, its server, its user, its GPUs. The GPUs every running kernel holds
(``holdings``) and whether a container's server is gone (``is_orphan``) are read from them. The connection
key is never among them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from jupyter_gpuenv.containers.allocation import Holdings

PREFIX = "io.jupyter.gpuenv"  # every label we set starts with this
KERNEL = f"{PREFIX}.kernel-id"
SERVER_HOST = f"{PREFIX}.server-host"
SERVER_PID = f"{PREFIX}.server-pid"
UID = f"{PREFIX}.uid"
ENVIRONMENT = f"{PREFIX}.environment"
GPUS = f"{PREFIX}.gpus"
EXCLUSIVE = f"{PREFIX}.exclusive"
SOCKETS = f"{PREFIX}.socket-dir"
PROBE = f"{PREFIX}.probe"  # a short-lived container that asks an image about its Python
BROKER = f"{PREFIX}.broker"  # started by the shared-host broker, which keeps its lease
# what a kernel id may be, for the broker and the provisioner alike (a container name, a folder name): use
# fullmatch, since "$" would let a final newline in
KERNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TERMINAL = f"{PREFIX}.terminal"  # started for a terminal alone (server.terminals), removed when it closes
NETNS = f"{PREFIX}.netns"  # holds one user's no-network namespace, which their kernels join
USER = f"{PREFIX}.user"  # whose namespace holder (one uid may serve several people behind a broker)


@dataclass(frozen=True)
class KernelContainer:
    """A kernel container as the engine describes it."""

    id: str
    name: str
    kernel_id: str
    active: bool  # created or running: it holds its GPUs (exited and dead ones do not)
    uid: str = ""
    server_host: str = ""
    server_pid: str = ""
    environment: str = ""
    gpus: tuple[str, ...] = ()
    exclusive: bool = False
    socket_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def kernel_labels(
    *,
    kernel_id: str,
    server_host: str,
    server_pid: int,
    uid: int,
    environment: str,
    gpus: Iterable[str],
    exclusive: bool,
    socket_dir: str,
) -> dict[str, str]:
    return {
        KERNEL: kernel_id,
        SERVER_HOST: server_host,
        SERVER_PID: str(server_pid),
        UID: str(uid),
        ENVIRONMENT: environment,
        GPUS: ",".join(gpus),
        EXCLUSIVE: "true" if exclusive else "false",
        SOCKETS: socket_dir,
    }


def probe_labels(uid: int, server_host: str, server_pid: int) -> dict[str, str]:
    """A probe is its process's (a server's, or the broker's): only a dead one's are swept by others."""
    return {PROBE: "true", UID: str(uid), SERVER_HOST: server_host, SERVER_PID: str(server_pid)}


def holder_labels(uid: int, user: str, server_host: str, server_pid: int) -> dict[str, str]:
    """A network namespace holder's: whose it is, and which server made it (to remove it once unused)."""
    return {NETNS: "true", UID: str(uid), USER: user, SERVER_HOST: server_host, SERVER_PID: str(server_pid)}


def read(container_id: str, name: str, labels: dict[str, str], active: bool) -> KernelContainer:
    return KernelContainer(
        id=container_id,
        name=name.lstrip("/"),
        kernel_id=labels.get(KERNEL, ""),
        active=active,
        uid=labels.get(UID, ""),
        server_host=labels.get(SERVER_HOST, ""),
        server_pid=labels.get(SERVER_PID, ""),
        environment=labels.get(ENVIRONMENT, ""),
        gpus=tuple(filter(None, labels.get(GPUS, "").split(","))),
        exclusive=labels.get(EXCLUSIVE) == "true",
        socket_dir=labels.get(SOCKETS, ""),
        labels=dict(labels),
    )


def holdings(
    containers: Iterable[KernelContainer], excluding: str | None = None, released: Iterable[str] = ()
) -> Holdings:
    """Which running kernel holds which GPU; ``excluding``: a kernel being restarted, whose GPUs it keeps;
    ``released``: ids of containers whose kernels are parked, whose labels name GPUs they no longer hold."""
    held, released = Holdings(), set(released)
    for c in containers:
        if c.active and c.kernel_id != excluding and c.id not in released:
            for uuid in c.gpus:
                held.add(uuid, c.kernel_id or "?", c.exclusive)
    return held


def is_orphan(c: KernelContainer, host: str, uid: int, my_pid: int, alive: Callable[[int], bool]) -> bool:
    """Ours (this host, this user), not this server's, and its server process no longer runs."""
    if c.server_host != host or c.uid != str(uid):
        return False
    return c.server_pid.isdigit() and int(c.server_pid) != my_pid and not alive(int(c.server_pid))
