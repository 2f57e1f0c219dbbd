"""A kernel's activity, read from its IOPub channel: busy or idle, since when, and each cell it starts.

The broker has no kernel manager: it subscribes to each GPU kernel's IOPub socket (in the socket folder it made)
to know when a kernel went idle, and both the broker and a server use the same subscription to notice a cell run
in a parked kernel, which then resumes. Reading needs no key: nothing read here is trusted beyond the kernel's
own owner (a kernel that lies about being busy only keeps its own GPU).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

DELIMITER = b"<IDS|MSG>"


def iopub_address(info: dict) -> str:
    """The IOPub address of a connection file's contents (ipc or tcp)."""
    if info.get("transport") == "ipc":
        return f"ipc://{info['ip']}-{info['iopub_port']}"
    return f"tcp://{info['ip']}:{info['iopub_port']}"


def status_of(parts: list[bytes]) -> tuple[str, str] | None:
    """``(execution_state, parent message type)`` of an IOPub status message; None for any other message."""
    try:
        at = parts.index(DELIMITER)
        header = json.loads(parts[at + 2])
        if header.get("msg_type") != "status":
            return None
        parent = json.loads(parts[at + 3]) or {}
        content = json.loads(parts[at + 5])
        return str(content.get("execution_state", "")), str(parent.get("msg_type", ""))
    except (ValueError, IndexError, AttributeError, TypeError):
        return None


class KernelActivity:
    """Subscribed to one kernel's IOPub: ``execution_state``, ``last_activity`` and a callback per cell run."""

    def __init__(
        self, address: str, on_execute: Callable[[], None] | None = None, log: logging.Logger | None = None
    ) -> None:
        self.address = address
        self.on_execute = on_execute
        self.execution_state = "idle"
        self.last_activity = time.time()
        self.log = log or logging.getLogger(__name__)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.address)
            while True:
                self.seen(await sock.recv_multipart())
        except asyncio.CancelledError:
            pass
        except zmq.ZMQError as exc:
            self.log.warning("gpuenv: cannot follow the kernel's activity at %s: %s", self.address, exc)
        finally:
            sock.close()

    def seen(self, parts: list[bytes]) -> None:
        self.last_activity = time.time()
        status = status_of(parts)
        if status is None:
            return
        state, parent = status
        if state in ("busy", "idle", "starting"):
            self.execution_state = state
        if state == "busy" and parent == "execute_request" and self.on_execute is not None:
            self.on_execute()
