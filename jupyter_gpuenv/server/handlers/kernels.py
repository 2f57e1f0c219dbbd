"""``GET kernels`` (this server's kernels with their GPUs, park rows and container memory) and
``POST kernels/ID/park|resume``."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.errors import GpuEnvError
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.server import reports
from jupyter_gpuenv.server.handlers.base import GpuEnvHandler
from jupyter_gpuenv.server.parking import ServerParking
from jupyter_gpuenv.server.refusals import to_http


class KernelsHandler(GpuEnvHandler):
    def initialize(self, sampler: Sampler, parking: ServerParking, settings: GpuEnv) -> None:
        self.sampler, self.parking, self.gpuenv = sampler, parking, settings

    @web.authenticated
    @authorized
    async def get(self) -> None:
        report = reports.kernel_report(self.kernel_manager, self.sampler.latest, self.parking)
        # each container's memory from its cgroup files, in a thread
        warn_at = self.gpuenv.memory_warning_at
        await asyncio.get_running_loop().run_in_executor(None, reports.add_host_memory, report["kernels"], warn_at)
        report["parking"] = await self.parking.summary()
        self.write_json(report)


class ParkHandler(GpuEnvHandler):
    """``POST kernels/ID/park`` and ``…/resume``: move a kernel's GPU memory to host memory and back (server.parking).

    200 with the kernel's row; 404 for a kernel this server does not run; 409 with the reason when it cannot be
    parked now (busy, nothing on a GPU, no checkpoint API) or its GPU is taken; 503 when the driver failed.
    """

    def initialize(self, sampler: Sampler, parking: ServerParking, settings: GpuEnv) -> None:
        self.sampler, self.parking, self.gpuenv = sampler, parking, settings

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        try:
            await (self.parking.park(kernel_id) if action == "park" else self.parking.resume(kernel_id))
        except GpuEnvError as exc:
            raise to_http(exc) from None
        rows = [r for r in reports.kernel_rows(self.kernel_manager, self.sampler.latest, self.parking)
                if r["kernel_id"] == kernel_id]  # fmt: skip
        # the same row as GET kernels gives, so the panel's row keeps its memory line
        warn_at = self.gpuenv.memory_warning_at
        await asyncio.get_running_loop().run_in_executor(None, reports.add_host_memory, rows, warn_at)
        self.write_json(rows[0] if rows else {"kernel_id": kernel_id})
