"""What removes a client's kernel containers once the client process is gone, on a machine without a broker.

A container kernel ends by itself when its client dies (``containers.CLIENT_LOCK``), but its stopped container
would stay until the next server's orphan sweep. So the first container kernel a process starts also starts one
small process for it, in a session of its own (a Ctrl-C or a kill of the client's process group does not reach
it): it waits for end-of-file on a pipe whose only writer is the client, which the host's kernel closes however
the client ends, then removes the containers the client left, their socket folders and its unused namespace
holder (``orphans.remove_orphans``), and exits. While it waits it is a Python that has imported nothing.
Behind a broker the broker does this job: it knows each kernel's client.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from jupyter_gpuenv.config import GpuEnv

# what the reaper runs: wait for the client's end first, import the engine only then
COMMAND = "import sys; sys.stdin.buffer.read(); from jupyter_gpuenv.engines.reaper import main; main(*sys.argv[1:])"

_watched: dict[tuple, tuple[int, int]] = {}  # engine settings -> (client pid, the pipe's write end, never closed)


def watch_client(settings: GpuEnv) -> None:
    """Start this process's reaper for the engine ``settings`` name, unless it runs already (blocking: a fork)."""
    key = (settings.docker_url, settings.docker_timeout, settings.socket_root)
    known = _watched.get(key)
    if known is not None and known[0] == os.getpid():
        return
    read, write = os.pipe()  # neither end is inherited across exec: the reaper's stdin is its only copy
    try:
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                COMMAND,
                str(os.getpid()),
                settings.docker_url or "",
                str(settings.docker_timeout),
                settings.socket_root,
            ],  # fmt: skip
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    _watched[key] = (os.getpid(), write)


def main(client_pid: str, docker_url: str, timeout: str, socket_root: str) -> None:
    """The client ``client_pid`` is gone (possibly a zombie its parent has not reaped yet): remove what it left."""
    from jupyter_gpuenv.engines import orphans
    from jupyter_gpuenv.engines.docker.engine import DockerEngine

    private = os.path.join(socket_root, f"gpuenv-{os.getuid()}")
    engine = DockerEngine(docker_url or None, float(timeout), private, pull_journal=False)
    asyncio.run(orphans.remove_orphans(engine, gone=int(client_pid)))
