"""A terminal's shell exec'd into a kernel's container, over the Docker engine's exec API (``Engine.exec_shell``).

The engine's hijacked exec connection becomes a plain stream socket that the event loop reads; resizing and hanging
up are engine calls in the engine's control pool. The shell runs as the container's own user, never root.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import docker
from docker.errors import APIError, NotFound

from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.engines.base import StreamShell
from jupyter_gpuenv.errors import CannotStartHere, EngineRefused, GpuEnvError, NotPermitted, UnknownKernel


def open_shell(c: docker.DockerClient, container_id: str, user: str, marker: str) -> tuple[str, socket.socket, bytes]:
    """Start the shell (as ``user``, who must be the container's own and not root): its exec id, its socket, and
    what the SDK already read of it."""
    try:
        attrs = c.api.inspect_container(container_id)
    except NotFound:
        raise UnknownKernel("that container is gone: its kernel or terminal has ended") from None
    runs_as = (attrs.get("Config") or {}).get("User") or "root"
    if runs_as.split(":")[0] in ("0", "root"):
        raise NotPermitted(
            "this container runs as root (its Jupyter server does), and a terminal never opens a root shell: "
            "run the server as a normal user"
        )
    if user != runs_as:
        raise NotPermitted(f"a terminal's shell runs as its container's user ({runs_as}), not as {user}")
    if not (attrs.get("State") or {}).get("Running"):
        raise CannotStartHere("the container is not running (its kernel is restarting or ended): try again")
    exec_id = c.api.exec_create(
        container_id,
        containers.SHELL_COMMAND,
        stdin=True,
        tty=True,
        user=user,
        environment={"TERM": "xterm-256color", containers.SHELL_MARKER: marker},
    )["Id"]
    stream = c.api.exec_start(exec_id, tty=True, socket=True)
    raw = getattr(stream, "_sock", stream)
    try:
        if not isinstance(raw, socket.socket) or isinstance(raw, ssl.SSLSocket):
            raise EngineRefused(
                "terminals need the Docker engine on a unix socket or plain tcp (not TLS or ssh): "
                "set c.GpuEnv.docker_url to its local socket"
            )
        raw.setblocking(False)
        early = _early_bytes(stream)
        return exec_id, raw.dup(), early
    except BaseException:
        with suppress(Exception):
            c.api.exec_start(
                c.api.exec_create(container_id, ["sh", "-c", containers.HANG_UP_SCRIPT, marker], user=user)["Id"]
            )
        raise
    finally:
        with suppress(Exception):
            stream.close()
            raw.close()


def resize_shell(c: docker.DockerClient, exec_id: str, rows: int, cols: int) -> None:
    with suppress(APIError):  # the shell ended meanwhile: nothing to resize
        c.api.exec_resize(exec_id, height=rows, width=cols)


def end_shell(c: docker.DockerClient, container_id: str, user: str, marker: str) -> None:
    try:
        exec_id = c.api.exec_create(container_id, ["sh", "-c", containers.HANG_UP_SCRIPT, marker], user=user)["Id"]
        c.api.exec_start(exec_id)
    except NotFound:
        return
    except APIError as exc:
        if "is not running" not in str(exc):
            raise


def _early_bytes(stream: Any) -> bytes:
    """What the SDK's HTTP reader took in past the upgrade answer (at times the shell's first prompt)."""
    try:
        buffered = stream._response.raw._fp.fp
        return (buffered.peek(1 << 16) or b"") if buffered is not None else b""
    except (AttributeError, OSError, ValueError):
        return b""


class DockerShell(StreamShell):
    """A shell exec'd into a container (``Engine.exec_shell``): its terminal's bytes, both ways, on the loop."""

    def __init__(
        self,
        control: Callable[..., Awaitable[Any]],
        timeout: float,
        log: logging.Logger,
        container_id: str,
        user: str,
        marker: str,
        exec_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        early: bytes = b"",
    ) -> None:
        super().__init__(reader, writer)
        # control(timeout, what, fn, *args): fn(client, *args) in the engine's pool for quick calls, bounded
        self._control, self.timeout, self.log = control, timeout, log
        self.container_id, self.exec_id = container_id, exec_id
        self.user, self.marker = user, marker
        self._early = early  # what the SDK read past the HTTP upgrade: the shell's first bytes
        self._closed = False

    async def read(self) -> bytes:
        if self._early:
            data, self._early = self._early, b""
            return data
        return await super().read()

    async def resize(self, rows: int, cols: int) -> None:
        await self._control(self.timeout + 1, "resize a terminal", resize_shell, self.exec_id, rows, cols)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await self._control(
                self.timeout * 2 + 1, "end a shell", end_shell, self.container_id, self.user, self.marker
            )
        except GpuEnvError as exc:
            self.log.warning(
                "gpuenv: a terminal's shell in container %s may still run: %s", self.container_id[:12], exc
            )
