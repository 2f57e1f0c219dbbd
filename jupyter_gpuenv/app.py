"""The server extension: starts the sampler and serves the REST API."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

import threading

from . import attribution, engine, orphans
from .config import GpuEnv
from .handlers import api_handlers
from .nvml import Snapshot
from .sampler import Sampler
from .visibility import from_environment


def kernel_index(kernel_manager) -> attribution.KernelIndex:
    """Running kernels of this server by process id and by container id (from their provisioners)."""
    index = attribution.KernelIndex()
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            provisioner = kernel_manager.get_kernel(kernel_id).provisioner
        except KeyError:  # shut down meanwhile
            continue
        container_id = getattr(provisioner, "container_id", None)
        pid = getattr(provisioner, "pid", None)
        if container_id:
            index.by_container[container_id] = kernel_id
        elif pid:
            index.by_pid[pid] = kernel_id
    return index


class GpuEnvApp(ExtensionApp):
    name = "jupyter_gpuenv"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        self.gpuenv = GpuEnv(parent=self.serverapp)
        kernel_manager = self.serverapp.kernel_manager

        def attribute(snapshot: Snapshot) -> None:
            attribution.attribute(snapshot, kernel_index(kernel_manager))

        self.sampler = Sampler(
            interval=self.gpuenv.sample_interval,
            history_length=self.gpuenv.history_length,
            visibility=from_environment(self.gpuenv.visible_devices),
            retry_interval=self.gpuenv.driver_retry_interval,
            pcie=self.gpuenv.pcie_throughput,
            attribute=attribute,
            log=self.serverapp.log,
        )
        self.sampler.start()
        self.settings["gpuenv_sampler"] = self.sampler
        if self.gpuenv.remove_orphans:
            threading.Thread(target=self._remove_orphans, name="gpuenv-orphans", daemon=True).start()

    def _remove_orphans(self) -> None:
        """Containers an earlier, dead server of this user on this host left behind."""
        try:
            removed = orphans.remove_orphans(engine.client(self.gpuenv.docker_url, self.gpuenv.docker_timeout))
        except engine.EngineError as exc:
            self.serverapp.log.info("gpuenv: container kernels unavailable: %s", exc)
            return
        for container_name in removed:
            self.serverapp.log.warning("gpuenv: removed %s, left by an earlier server that is gone", container_name)

    def initialize_handlers(self) -> None:
        self.handlers.extend(api_handlers(self.sampler, self.gpuenv))

    async def stop_extension(self) -> None:
        self.sampler.stop()
