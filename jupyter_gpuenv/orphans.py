"""Kernel containers whose server is gone: found by their labels, removed with their socket folders."""

from __future__ import annotations

import os
import shutil
import socket

from . import engine
from .containers import L_KERNEL, L_SERVER_HOST, L_SERVER_PID, L_SOCKETS, L_UID


def server_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_orphan(labels: dict[str, str], host: str, uid: int, alive=server_alive) -> bool:
    """Ours (this host, this user) and its server process no longer runs."""
    if labels.get(L_SERVER_HOST) != host or labels.get(L_UID) != str(uid):
        return False
    pid = labels.get(L_SERVER_PID, "")
    return pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid))


def remove_orphans(client) -> list[str]:
    host, uid, removed = socket.gethostname(), os.getuid(), []
    for container in engine.kernel_containers(client):
        labels = container.labels
        if not is_orphan(labels, host, uid):
            continue
        engine.remove_quietly(client, container.id)
        folder = labels.get(L_SOCKETS, "")
        if folder and os.path.basename(folder) == labels.get(L_KERNEL):
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(container.name)
    return removed
