"""REST handlers under ``{base_url}gpuenv/api/``: thin, authenticated, reading only what is in memory; one module
per resource, joined here into the route table."""

from __future__ import annotations

from typing import Any

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.server.handlers.base import NotFoundHandler
from jupyter_gpuenv.server.handlers.environments import EnvironmentsHandler, PullHandler
from jupyter_gpuenv.server.handlers.gpus import GpusHandler, HistoryHandler
from jupyter_gpuenv.server.handlers.kernels import KernelsHandler, ParkHandler
from jupyter_gpuenv.server.handlers.terminals import TerminalHandler, TerminalsHandler, TerminalSocket
from jupyter_gpuenv.server.handlers.usage import UsageHandler
from jupyter_gpuenv.server.parking import ServerParking
from jupyter_gpuenv.server.terminals import Terminals
from jupyter_gpuenv.server.usage import UsageTracker


def api_handlers(
    sampler: Sampler,
    settings: GpuEnv,
    usage: UsageTracker,
    terminals: Terminals,
    parking: ServerParking,
) -> list[tuple[Any, ...]]:
    """The route table, relative to the server's base URL."""
    prefix = "gpuenv/api"
    return [
        (rf"{prefix}/gpus", GpusHandler, {"sampler": sampler}),
        (rf"{prefix}/gpus/history", HistoryHandler, {"sampler": sampler}),
        (
            rf"{prefix}/environments",
            EnvironmentsHandler,
            {"sampler": sampler, "settings": settings, "terminals": terminals},
        ),
        (rf"{prefix}/environments/([^/]+)/pull", PullHandler, {"settings": settings}),
        (rf"{prefix}/kernels", KernelsHandler, {"sampler": sampler, "parking": parking, "settings": settings}),
        (
            rf"{prefix}/kernels/([^/]+)/(park|resume)",
            ParkHandler,
            {"sampler": sampler, "parking": parking, "settings": settings},
        ),
        (rf"{prefix}/usage", UsageHandler, {"usage": usage}),
        (rf"{prefix}/terminals", TerminalsHandler, {"terminals": terminals}),
        (rf"{prefix}/terminals/([0-9a-f]+)", TerminalHandler, {"terminals": terminals}),
        (rf"{prefix}/terminals/([0-9a-f]+)/websocket", TerminalSocket, {"terminals": terminals}),
        (rf"{prefix}(/.*)?", NotFoundHandler),
    ]
