"""What every gpuenv API handler shares: its authorization resource, JSON answers, and a JSON 404 for the rest."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

AUTH_RESOURCE = "gpuenv"


class GpuEnvHandler(APIHandler):
    """Each handler takes what it serves in its own ``initialize`` (the route table's third item)."""

    auth_resource = AUTH_RESOURCE

    def write_json(self, payload) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(payload if isinstance(payload, str) else json.dumps(payload))


class NotFoundHandler(GpuEnvHandler):
    """Anything else under the API answers a JSON 404, after authentication so it reveals nothing."""

    @web.authenticated
    @authorized
    def get(self, *args) -> None:
        raise web.HTTPError(404, f"no such gpuenv API endpoint: {self.request.path}")

    post = put = patch = delete = get
