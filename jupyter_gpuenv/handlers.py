"""REST handlers under ``{base_url}gpuenv/api/``: thin, authenticated, reading only what is in memory."""

from __future__ import annotations

import asyncio
import json
import math

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from . import catalog
from .config import GpuEnv
from .sampler import Sampler

AUTH_RESOURCE = "gpuenv"


class GpuEnvHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, sampler: Sampler | None = None, settings: GpuEnv | None = None) -> None:
        self.sampler, self.gpuenv = sampler, settings

    def write_json(self, payload) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, str) else json.dumps(payload))


class GpusHandler(GpuEnvHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(self.sampler.latest_json)


class HistoryHandler(GpuEnvHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        raw = self.get_query_argument("since", None)
        since = None
        if raw is not None:
            try:
                since = float(raw)
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                raise web.HTTPError(400, f"since must be a time in seconds since the epoch, got {raw!r}")
        self.write_json({"interval": self.sampler.interval, "samples": self.sampler.history(since)})


class EnvironmentsHandler(GpuEnvHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        specs = self.kernel_spec_manager.get_all_specs
        snapshot = self.sampler.latest
        report = await asyncio.get_running_loop().run_in_executor(
            None, lambda: catalog.environment_report(self.gpuenv, specs(), snapshot))
        self.write_json(report)


class KernelsHandler(GpuEnvHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(catalog.kernel_report(self.kernel_manager, self.sampler.latest))


class NotFoundHandler(GpuEnvHandler):
    """Anything else under the API answers a JSON 404, after authentication so it reveals nothing."""

    @web.authenticated
    @authorized
    def get(self, *args) -> None:
        raise web.HTTPError(404, f"no such gpuenv API endpoint: {self.request.path}")

    post = put = patch = delete = get


def api_handlers(sampler: Sampler, settings: GpuEnv) -> list:
    """The route table, relative to the server's base URL."""
    prefix = "gpuenv/api"
    return [
        (rf"{prefix}/gpus", GpusHandler, {"sampler": sampler}),
        (rf"{prefix}/gpus/history", HistoryHandler, {"sampler": sampler}),
        (rf"{prefix}/environments", EnvironmentsHandler, {"sampler": sampler, "settings": settings}),
        (rf"{prefix}/kernels", KernelsHandler, {"sampler": sampler}),
        (rf"{prefix}(/.*)?", NotFoundHandler),
    ]
