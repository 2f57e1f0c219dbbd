"""An asyncio loop on a thread that lives in a test node's network namespace: what it listens on and connects to is
that host's network (its swarm address), while unix sockets, being files, are the machine's. One broker's
relay per node, in one test process."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000


class NetnsLoop:
    def __init__(self, netns: Path) -> None:
        self.loop = asyncio.new_event_loop()
        ready, failed = threading.Event(), []

        def run() -> None:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:  # this thread only
                    failed.append(OSError(ctypes.get_errno(), "setns"))
            finally:
                os.close(fd)
            ready.set()
            if not failed:
                asyncio.set_event_loop(self.loop)
                self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()
        if failed:
            raise failed[0]

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
