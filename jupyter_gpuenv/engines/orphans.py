"""Kernel containers whose server is gone: found by their labels, removed with their socket folders."""

from __future__ import annotations

import os
import shutil

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.engines.docker.engine import DockerEngine


async def remove_orphans(engine: DockerEngine, gone: int | None = None) -> list[str]:
    """Remove what an earlier, dead server (or other client) of this user on this host left; the names of what
    went. ``gone``: a client known to have ended, which may still be a zombie its parent has not reaped."""
    server, uid = host.this_server(), os.getuid()

    def alive(pid: int) -> bool:
        return pid != gone and host.process_alive(pid)

    def orphan(c: labels.KernelContainer) -> bool:
        return labels.is_orphan(c, server.host, uid, server.pid, alive)

    removed = await engine.remove_orphans(orphan)
    for c in removed:
        if c.socket_dir and os.path.basename(c.socket_dir) == c.kernel_id:  # the kernel's own folder only
            shutil.rmtree(c.socket_dir, ignore_errors=True)
    return [c.name for c in removed]
