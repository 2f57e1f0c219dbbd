"""The broker's record of every kernel it runs and the GPUs each holds: one book for the whole host.

A lease says which kernel holds which GPU. Container labels record what a container was started with and
cannot change; a lease can (a parked kernel gives its GPU back), so the broker keeps its own book, written
atomically to a root-owned file after every change, so that a broker restart loses nothing. A kernel whose
start was under way when the broker died is ``starting`` in the book; the restarted broker removes what
that start left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_gpuenv.containers.allocation import Holdings

STARTING, RUNNING = "starting", "running"


@dataclass
class KernelLease:
    kernel_id: str
    uid: int
    user: str
    environment: str
    socket_dir: str
    state: str = STARTING
    container_id: str = ""
    gpus: list[str] = field(default_factory=list)  # uuids
    exclusive: bool = False
    server_pid: int = 0  # the caller's server (SO_PEERCRED), to find kernels whose server is gone
    server_started: int = 0  # its start time in clock ticks since boot: a reused pid is another process
    notebook: str = ""  # the session's path (JPY_SESSION_NAME), as the caller said: a metrics label, nothing more
    # a parked kernel's record (parking.ParkRecord): it holds no GPU meanwhile, ``gpus`` is []
    park: dict[str, Any] | None = None
    # in a cluster: the kernel's connection file, whose channels this broker relays to the host it runs on
    connection_file: str = ""

    @property
    def parked(self) -> bool:
        return self.park is not None and self.park.get("state") == "parked"


class LeaseBook:
    """Kernels by (user name, kernel id), saved to ``path`` (0600) after every change.

    By name, not uid: servers in containers (DockerSpawner) all run as one uid, and each is still its own user.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._kernels: dict[tuple[str, str], KernelLease] = {}
        # called with a dropped lease that held GPUs: they are free now (parking wakes a cell that waits for one)
        self.release_listeners: list[Callable[[KernelLease], None]] = []

    def load(self) -> None:
        try:
            with open(self.path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raw = []
        self._kernels = {(k["user"], k["kernel_id"]): KernelLease(**k) for k in raw}

    def save(self) -> None:
        staging = f"{self.path}.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(k) for k in self._kernels.values()], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.path)

    def __iter__(self) -> Iterator[KernelLease]:
        return iter(list(self._kernels.values()))

    def get(self, user: str, kernel_id: str) -> KernelLease | None:
        return self._kernels.get((user, kernel_id))

    def by_container(self, user: str, container_id: str) -> KernelLease | None:
        """The caller's kernel in that container; None for another user's (the caller must not learn of it)."""
        found = (
            k for k in self._kernels.values() if k.user == user and container_id and k.container_id == container_id
        )
        return next(found, None)

    def put(self, lease: KernelLease) -> None:
        self._kernels[(lease.user, lease.kernel_id)] = lease
        self.save()

    def drop(self, lease: KernelLease) -> None:
        if self._kernels.pop((lease.user, lease.kernel_id), None) is not None:
            self.save()
            if lease.gpus:
                for listener in list(self.release_listeners):
                    listener(lease)

    def of_user(self, user: str) -> list[KernelLease]:
        return [k for k in self._kernels.values() if k.user == user]

    def holdings(self, excluding: tuple[str, str] | None = None) -> Holdings:
        held = Holdings()
        for key, k in self._kernels.items():
            if key != excluding:
                for uuid in k.gpus:
                    held.add(uuid, k.kernel_id, k.exclusive)
        return held

    def holder_of(self, kernel_id: str) -> KernelLease | None:
        return next((k for k in self._kernels.values() if k.kernel_id == kernel_id), None)
