"""``GET gpus`` and ``GET gpus/history``: the sampler's latest reading and its window."""

from __future__ import annotations

import math

from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.server.handlers.base import GpuEnvHandler


class GpusHandler(GpuEnvHandler):
    def initialize(self, sampler: Sampler) -> None:
        self.sampler = sampler

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(self.sampler.latest_json)


class HistoryHandler(GpuEnvHandler):
    def initialize(self, sampler: Sampler) -> None:
        self.sampler = sampler

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
        sampler = self.sampler
        self.write_json({"interval": sampler.interval, "window": sampler.window, "samples": sampler.history(since)})
