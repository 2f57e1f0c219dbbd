"""``GET environments`` (each with the verdict a start would reach) and ``POST environments/NAME/pull``."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_gpuenv import engines
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.environments import kernelspecs
from jupyter_gpuenv.errors import GpuEnvError, InvalidEnvironment
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.server.handlers.base import GpuEnvHandler
from jupyter_gpuenv.server.handlers.terminals import terminals_availability
from jupyter_gpuenv.server.refusals import to_http
from jupyter_gpuenv.server.terminals import Terminals

PULL_ANSWER_WITHIN = 1.0  # seconds: a pull that fails this fast answers its error, a longer one 202


class EnvironmentsHandler(GpuEnvHandler):
    def initialize(self, sampler: Sampler, settings: GpuEnv, terminals: Terminals) -> None:
        self.sampler, self.gpuenv, self.terminals = sampler, settings, terminals

    @web.authenticated
    @authorized
    async def get(self) -> None:
        # kernelspec files are read in a thread; the engine's calls run in its own pools
        specs = await asyncio.get_running_loop().run_in_executor(None, self.kernel_spec_manager.get_all_specs)
        settings = GpuEnv(parent=self.gpuenv.parent)  # as the provisioner reads them: changed settings apply
        report = await engines.connect(settings, self.log).environment_report(specs, self.sampler.latest)
        report["terminals"] = await terminals_availability(self, self.terminals)
        warm = self.settings.get("gpuenv_warm")  # one person's machine: this server's pool (a broker's rows say)
        for row in report.get("environments", []):
            row.setdefault("warm", warm.ready_count(row["name"]) if warm is not None else 0)
        self.write_json(report)


class PullHandler(GpuEnvHandler):
    """``POST environments/NAME/pull``: pull an environment's image ahead of its first start (the panel's Prepare).

    202 while it pulls (progress in GET environments), 200 when the image is there; a pull that fails at once
    (unknown tag, registry down, no room) answers its error. One pull per image, whoever else waits for it.
    """

    def initialize(self, settings: GpuEnv) -> None:
        self.gpuenv = settings

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        specs = await asyncio.get_running_loop().run_in_executor(None, self.kernel_spec_manager.get_all_specs)
        settings = GpuEnv(parent=self.gpuenv.parent)
        found = [d for d in kernelspecs.defined_environments(settings, specs) if d.name == name]
        if not found:
            raise web.HTTPError(404, f"no environment {name!r} on this server: GET environments lists them")
        try:
            env = found[0].definition()
        except InvalidEnvironment as exc:
            raise to_http(exc) from None
        if not settings.pull_missing_images:
            raise web.HTTPError(
                409,
                f"this server does not pull images (c.GpuEnv.pull_missing_images is off): an administrator pulls "
                f"{env.image} on the host (`jupyter gpuenv pull {name}`)",
            )
        docker = engines.connect(settings, self.log)
        try:
            if not (await docker.image_facts(env.image)).present:
                await asyncio.wait_for(docker.pull(env.image), PULL_ANSWER_WITHIN)
        except asyncio.TimeoutError:
            self.set_status(202)
            progress = docker.pull_progress(env.image)
            self.write_json({"image": env.image, "state": "pulling", "pull_progress": progress and progress.as_dict()})
            return
        except GpuEnvError as exc:
            raise to_http(exc) from None
        self.write_json({"image": env.image, "state": "present", "pull_progress": None})
