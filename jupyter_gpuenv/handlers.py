"""REST handlers under ``{base_url}gpuenv/api/``: thin, authenticated, reading only what is in memory."""

from __future__ import annotations

import json
import math

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .sampler import Sampler

AUTH_RESOURCE = "gpuenv"


class GpuEnvHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def write_json(self, payload) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, str) else json.dumps(payload))


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
        self.write_json({"interval": self.sampler.interval, "samples": self.sampler.history(since)})


class NotFoundHandler(GpuEnvHandler):
    """Anything else under the API answers a JSON 404, after authentication so it reveals nothing."""

    @web.authenticated
    @authorized
    def get(self, *args) -> None:
        raise web.HTTPError(404, f"no such gpuenv API endpoint: {self.request.path}")

    post = put = patch = delete = get


def api_handlers(sampler: Sampler, extra: list | None = None) -> list:
    """The route table, relative to the server's base URL."""
    prefix = "gpuenv/api"
    routes = [
        (rf"{prefix}/gpus", GpusHandler, {"sampler": sampler}),
        (rf"{prefix}/gpus/history", HistoryHandler, {"sampler": sampler}),
    ]
    routes += extra or []
    routes.append((rf"{prefix}(/.*)?", NotFoundHandler))
    return routes
