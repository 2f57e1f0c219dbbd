"""A warm pool, as a prototype measured by kernel_ready.py and not part of the product.

A pool container is what a kernel container would be (same image, user, mounts, limits, namespace), started
ahead with its Python running and ipykernel imported, waiting on a FIFO in its own socket folder. A start then
writes the connection file and one line into the FIFO; the kernel binds its sockets and answers.

The product's warm kernels (jupyter_gpuenv/warm.py, c.GpuEnv.warm_kernels; bench/warm_kernels.py measures them)
grew from it once placements, not labels, named a kernel's container; this prototype stays for kernel_ready.py's
"warm-pool" direction.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass

from jupyter_client import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.engines.base import KernelRequest
from jupyter_gpuenv.engines.docker.engine import DockerEngine
from jupyter_gpuenv.environments.definition import Environment

# Imports what a kernel needs (the slow part), then waits for its order: the connection file, folder, variables.
POOL_LAUNCHER = (
    f"import json, os, sys; sys.path.append({containers.RUNTIME_TARGET!r}); sys.argv[0] = 'ipykernel_launcher'\n"
    "from ipykernel import kernelapp, ipkernel\n"
    "open(sys.argv[1] + '.waiting', 'w').close()\n"
    "order = ''\n"
    "while not order:\n"
    "    with open(sys.argv[1]) as go:\n"
    "        order = go.read()\n"
    "order = json.loads(order)\n"
    "os.chdir(order['cwd']); os.environ.update(order['env'])\n"
    "kernelapp.launch_new_instance(argv=['-f', order['connection_file']])\n"
)


@dataclass
class PoolSlot:
    container_id: str
    folder: str

    @property
    def fifo(self) -> str:
        return os.path.join(self.folder, "go")


def _kernel_pid(attrs: dict) -> int | None:
    """The pool's Python: the child of docker-init (the container's first process), as the host sees it."""
    init = (attrs.get("State") or {}).get("Pid")
    try:
        with open(f"/proc/{init}/task/{init}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _memory_kib(pid: int) -> tuple[int | None, int | None]:
    """(RSS, PSS) of one process in KiB: PSS counts pages shared with other pool containers only in part."""
    out: dict[str, int] = {}
    for path, keys in ((f"/proc/{pid}/status", ("VmRSS",)), (f"/proc/{pid}/smaps_rollup", ("Pss",))):
        try:
            with open(path) as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in keys:
                        out[key] = int(line.split()[1])
        except OSError:
            pass
    return out.get("VmRSS"), out.get("Pss")


class WarmPool:
    """Pool containers for one environment and user, filled ahead and claimed one per kernel."""

    def __init__(self, engine: DockerEngine, env: Environment, root_dir: str, holder: str | None) -> None:
        self.engine, self.env, self.root_dir, self.holder = engine, env, root_dir, holder
        self.user, self.server = host.current_user(), host.this_server()
        self.folder = host.private_folder(os.path.join(engine.private_dir or "/tmp", "pool"))

    def _spec(self, slot_folder: str, kernel_id: str) -> containers.ContainerSpec:
        facts = containers.LaunchFacts(
            kernel_id=kernel_id,
            user=self.user,
            server_host=self.server.host,
            server_pid=self.server.pid,
            root_dir=self.root_dir,
            cwd=self.root_dir,
            socket_dir=slot_folder,
            connection_file=os.path.join(slot_folder, "connection.json"),
            gpu_mode="none",
            network_holder=self.holder,
        )
        spec = containers.spec(self.env, facts)
        spec.command = [self.env.python, "-c", POOL_LAUNCHER, os.path.join(slot_folder, "go")]
        return spec

    async def fill(self, count: int) -> list[PoolSlot]:
        """Start ``count`` pool containers and wait until each has imported ipykernel (its FIFO is opened)."""
        slots = []
        for _ in range(count):
            kernel_id = f"pool-{uuid.uuid4().hex[:12]}"
            folder = os.path.join(self.folder, kernel_id)
            os.mkdir(folder, 0o700)
            os.mkfifo(os.path.join(folder, "go"), 0o600)
            slots.append(PoolSlot("", folder))
        specs = [self._spec(s.folder, os.path.basename(s.folder)) for s in slots]

        def create_and_start(spec: containers.ContainerSpec) -> str:
            c = self.engine._client()
            container_id = self.engine._create_once(c, spec)
            c.api.start(container_id)
            return container_id

        loop = asyncio.get_running_loop()
        ids = await asyncio.gather(*(loop.run_in_executor(None, create_and_start, s) for s in specs))
        for slot, container_id in zip(slots, ids, strict=True):
            slot.container_id = container_id
        await asyncio.gather(*(self._until_waiting(s) for s in slots))
        return slots

    async def _until_waiting(self, slot: PoolSlot, timeout: float = 120.0) -> None:
        """The pool container marks that it imported ipykernel and waits on its FIFO."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(slot.fifo + ".waiting"):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"pool container {slot.container_id[:12]} did not import ipykernel in {timeout:.0f} s")

    def memory(self, slot: PoolSlot) -> dict[str, int | None]:
        attrs = self.engine._client().api.inspect_container(slot.container_id)
        pid = _kernel_pid(attrs)
        rss, pss = _memory_kib(pid) if pid else (None, None)
        return {"rss_kib": rss, "pss_kib": pss}

    async def claim(self, slot: PoolSlot) -> tuple[float, AsyncKernelClient]:
        """What a start would do with a pool container: connection file, the order, then wait for kernel_info."""
        started = time.perf_counter()
        path = os.path.join(slot.folder, "connection.json")
        key = uuid.uuid4().hex.encode()
        _, info = write_connection_file(path, transport="ipc", ip=os.path.join(slot.folder, "k"), key=key)
        os.chmod(path, 0o600)
        order = {"connection_file": path, "cwd": self.root_dir, "env": {"JPY_SESSION_NAME": ""}}
        for _ in range(100):  # ENXIO: the reader is between its mark and opening the FIFO
            try:
                fd = os.open(slot.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                await asyncio.sleep(0.005)
        try:
            os.write(fd, json.dumps(order).encode())
        finally:
            os.close(fd)
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        return time.perf_counter() - started, client

    async def release(self, slot: PoolSlot, client: AsyncKernelClient | None) -> None:
        if client is not None:
            client.stop_channels()
        await self.engine.remove(slot.container_id)
        shutil.rmtree(slot.folder, ignore_errors=True)

    def request(self) -> KernelRequest:
        """A request that names this pool's user and environment (to find the user's namespace holder)."""
        return KernelRequest(
            environment=self.env,
            kernel_id="pool",
            user=self.user,
            server=self.server,
            root_dir=self.root_dir,
            cwd=self.root_dir,
            socket_dir="",
            connection_file="",
            shared_network_namespace=True,
        )
