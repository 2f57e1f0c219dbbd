"""REST handlers under ``{base_url}gpuenv/api/``: thin, authenticated, reading only what is in memory."""

from __future__ import annotations

import asyncio
import json
import math

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from . import engine, ledger, reports
from .config import GpuEnv
from .sampler import Sampler
from .usage import UsageTracker

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
        # kernelspec files are read in a thread; the engine's calls run in its own pools
        specs = await asyncio.get_running_loop().run_in_executor(None, self.kernel_spec_manager.get_all_specs)
        settings = GpuEnv(parent=self.gpuenv.parent)  # as the provisioner reads them: changed settings apply
        report = await reports.environment_report(
            settings, specs, self.sampler.latest, engine.connect(settings, self.log)
        )
        self.write_json(report)


class KernelsHandler(GpuEnvHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(reports.kernel_report(self.kernel_manager, self.sampler.latest))


class UsageHandler(GpuEnvHandler):
    """GPU-hours per user or notebook over a period: ``?since=&until=`` (dates or epoch seconds), ``&by=notebook``."""

    def initialize(self, usage: UsageTracker) -> None:
        self.usage = usage

    @web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            since, until, by = ledger.usage_query(
                self.get_query_argument("since", None),
                self.get_query_argument("until", None),
                self.get_query_argument("by", None),
            )
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from None
        try:
            report = await self.usage.report(since, until, by)
        except OSError as exc:
            raise web.HTTPError(503, f"the usage ledger cannot be read: {exc}") from None
        self.write_json(report)


class NotFoundHandler(GpuEnvHandler):
    """Anything else under the API answers a JSON 404, after authentication so it reveals nothing."""

    @web.authenticated
    @authorized
    def get(self, *args) -> None:
        raise web.HTTPError(404, f"no such gpuenv API endpoint: {self.request.path}")

    post = put = patch = delete = get


def api_handlers(sampler: Sampler, settings: GpuEnv, usage: UsageTracker) -> list:
    """The route table, relative to the server's base URL."""
    prefix = "gpuenv/api"
    return [
        (rf"{prefix}/gpus", GpusHandler, {"sampler": sampler}),
        (rf"{prefix}/gpus/history", HistoryHandler, {"sampler": sampler}),
        (rf"{prefix}/environments", EnvironmentsHandler, {"sampler": sampler, "settings": settings}),
        (rf"{prefix}/kernels", KernelsHandler, {"sampler": sampler}),
        (rf"{prefix}/usage", UsageHandler, {"usage": usage}),
        (rf"{prefix}(/.*)?", NotFoundHandler),
    ]
