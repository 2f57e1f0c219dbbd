"""The server extension: starts the sampler, serves the REST API, tidies what a dead server left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque

from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_server.extension.application import ExtensionApp

from jupyter_gpuenv import engines
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.errors import GpuEnvError
from jupyter_gpuenv.gpus import attribution, processes
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.gpus.visibility import from_environment
from jupyter_gpuenv.server.handlers import api_handlers
from jupyter_gpuenv.server.parking import ServerParking
from jupyter_gpuenv.server.provisioner import REFUSAL_FORMAT, refuse_reserved_keys
from jupyter_gpuenv.server.refusals import Refusal
from jupyter_gpuenv.server.terminals import Terminals
from jupyter_gpuenv.server.usage import UsageTracker
from jupyter_gpuenv.server.warm import WarmKernels
from jupyter_gpuenv.usage import metrics
from jupyter_gpuenv.usage.ledger import Ledger


def kernel_index(kernel_manager) -> attribution.KernelIndex:
    """Running kernels of this server by process id and by container id (from their provisioners)."""
    index = attribution.KernelIndex()
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            provisioner = kernel_manager.get_kernel(kernel_id).provisioner
        except KeyError:  # shut down meanwhile
            continue
        placement = getattr(provisioner, "placement", None)
        pid = getattr(provisioner, "pid", None)
        if placement is not None:
            index.by_container[placement.container_id] = kernel_id
        elif pid:
            index.by_pid[pid] = kernel_id
    return index


class QuietRefusals(logging.Filter):
    """One line per refused kernel start: ours, with the sentence the person got.

    jupyter_client logs a refused start twice with a traceback, tornado and jupyter_server once each with
    the sentence; a refusal is an answer, not a crash, so those go.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recent: deque[str] = deque(maxlen=64)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == REFUSAL_FORMAT:
            # args is a mapping when a record is logged with one dict argument: not a refusal's
            self.recent.append(str(record.args[-1]) if isinstance(record.args, tuple) and record.args else "")
            return True
        if isinstance(record.msg, Refusal) or (record.exc_info and isinstance(record.exc_info[1], Refusal)):
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and str(args[-1]) in self.recent)


class GpuEnvApp(ExtensionApp):
    name = "jupyter_gpuenv"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        self.gpuenv = GpuEnv(parent=self.serverapp)
        kernel_manager = self.serverapp.kernel_manager

        self.others: dict[str, str] = {}  # with a broker: container id -> whose kernel, refreshed in the background

        shared_host = engines.connect(self.gpuenv, self.serverapp.log).shared_host
        boot = processes.machine_boot_time()

        def attribute(snapshot: Snapshot) -> None:  # in the sampler's thread: /proc is read there, not on the loop
            index = kernel_index(kernel_manager)
            index.others = self.others
            attribution.attribute(snapshot, index)
            processes.describe(
                snapshot,
                me=os.getuid(),
                shared_host=shared_host,
                facts=lambda pid: processes.read_facts(pid, boot=boot),
            )

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
        # -- warm kernels (server.warm): started ahead on the server's loop, handed to the next start --
        self.warm = WarmKernels(
            self.gpuenv,
            engines.connect(self.gpuenv, self.serverapp.log),
            self.sampler,
            os.path.abspath(self.serverapp.root_dir),
            self.serverapp.log,
        )
        self.warm.start()
        self.settings["gpuenv_warm"] = self.warm
        self.terminals = Terminals(
            self.gpuenv,
            kernel_manager,
            self.serverapp.kernel_spec_manager,
            self.sampler,
            os.path.abspath(self.serverapp.root_dir),
            self.serverapp.log,
        )
        # -- GPU usage: metrics on /metrics and the usage ledger (docs/metrics.md) --
        self.usage = UsageTracker(
            sampler=self.sampler,
            kernel_manager=kernel_manager,
            session_manager=self.serverapp.session_manager,
            ledger=Ledger(self.gpuenv.usage_dir, retention_days=self.gpuenv.usage_retention_days),
            flush_interval=self.gpuenv.usage_flush_interval,
            log=self.serverapp.log,
        )
        self.usage.start()
        # -- park and resume (server.parking): its background round runs on the server's loop --
        self.parking = ServerParking(
            self.gpuenv,
            self.sampler,
            kernel_manager,
            engines.connect(self.gpuenv, self.serverapp.log),
            self.serverapp.log,
        )
        self.parking.start()
        self.usage.parking = self.parking
        if self.gpuenv.prometheus_metrics:
            metrics.export(self.usage)
        quiet = QuietRefusals()
        for log in (self.serverapp.log, logging.getLogger("tornado.general")):
            log.addFilter(quiet)
        refuse_reserved_keys(KernelProvisionerFactory.instance(parent=self.serverapp))
        # its own thread and loop (the server's loop may not run yet); with a broker, the broker finds orphans
        if engines.connect(self.gpuenv, self.serverapp.log).shared_host:
            threading.Thread(
                target=asyncio.run, args=(self._watch_holders(),), name="gpuenv-holders", daemon=True
            ).start()
        if self.gpuenv.remove_orphans:
            threading.Thread(
                target=asyncio.run, args=(self._remove_orphans(),), name="gpuenv-orphans", daemon=True
            ).start()

    async def _watch_holders(self, interval: float = 3.0) -> None:
        """On a shared host: whose kernel each container on the GPUs is, so the panel can name other people's; and
        the broker told that this server runs, so that it keeps this person's warm kernels (broker/warm.py)."""
        engine = engines.connect(self.gpuenv, self.serverapp.log)
        root_dir = os.path.abspath(self.serverapp.root_dir)
        while True:
            with contextlib.suppress(GpuEnvError):
                await engine.keep_warm(root_dir)
            try:
                self.others = await engine.holders()
            except GpuEnvError:
                self.others = {}
            await asyncio.sleep(interval)

    async def _remove_orphans(self) -> None:
        """Containers an earlier, dead server of this user on this host left behind."""
        try:
            removed = await engines.connect(self.gpuenv, self.serverapp.log).sweep_orphans()
        except GpuEnvError as exc:
            self.serverapp.log.info("gpuenv: container kernels unavailable: %s", exc)
            return
        for container_name in removed:
            self.serverapp.log.warning("gpuenv: removed %s, left by an earlier server that is gone", container_name)

    def initialize_handlers(self) -> None:
        self.handlers.extend(api_handlers(self.sampler, self.gpuenv, self.usage, self.terminals, self.parking))

    async def stop_extension(self) -> None:
        engines.cancel_pulls()  # kernel starts waiting for a pull fail now, or the server's shutdown waits for them
        metrics.unexport(self.usage)
        await self.usage.stop()  # writes what the ledger has not got yet
        self.sampler.stop()
        await self.terminals.close_all()  # their shells hung up, the terminals' own containers removed
        self.parking.stop()  # parked kernels stay parked: a kernel that outlives its server keeps its state
        await self.warm.stop()  # no warm container stays behind
