"""``GET usage``: GPU-hours per user or notebook from the usage ledger."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_gpuenv.server.handlers.base import GpuEnvHandler
from jupyter_gpuenv.server.usage import UsageTracker
from jupyter_gpuenv.usage import ledger


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
