"""REST handlers under ``{base_url}gpuenv/api/``: thin, authenticated, reading only what is in memory."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketHandler

from jupyter_gpuenv import engines
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.environments import kernelspecs
from jupyter_gpuenv.errors import GpuEnvError, InvalidEnvironment
from jupyter_gpuenv.gpus.sampler import Sampler
from jupyter_gpuenv.server import reports
from jupyter_gpuenv.server.parking import ServerParking
from jupyter_gpuenv.server.refusals import to_http
from jupyter_gpuenv.server.terminals import Terminal, Terminals
from jupyter_gpuenv.server.usage import UsageTracker
from jupyter_gpuenv.usage import ledger

AUTH_RESOURCE = "gpuenv"
PULL_ANSWER_WITHIN = 1.0  # seconds: a pull that fails this fast answers its error, a longer one 202


class GpuEnvHandler(APIHandler):
    """Each handler takes what it serves in its own ``initialize`` (the route table's third item)."""

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
        sampler = self.sampler
        self.write_json({"interval": sampler.interval, "window": sampler.window, "samples": sampler.history(since)})


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


class KernelsHandler(GpuEnvHandler):
    def initialize(self, sampler: Sampler, parking: ServerParking) -> None:
        self.sampler, self.parking = sampler, parking

    @web.authenticated
    @authorized
    async def get(self) -> None:
        report = reports.kernel_report(self.kernel_manager, self.sampler.latest, self.parking)
        report["parking"] = await self.parking.summary()
        self.write_json(report)


class ParkHandler(GpuEnvHandler):
    """``POST kernels/ID/park`` and ``…/resume``: move a kernel's GPU memory to host memory and back (parker.py).

    200 with the kernel's row; 404 for a kernel this server does not run; 409 with the reason when it cannot be
    parked now (busy, nothing on a GPU, no checkpoint API) or its GPU is taken; 503 when the driver failed.
    """

    def initialize(self, sampler: Sampler, parking: ServerParking) -> None:
        self.sampler, self.parking = sampler, parking

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        try:
            await (self.parking.park(kernel_id) if action == "park" else self.parking.resume(kernel_id))
        except GpuEnvError as exc:
            raise to_http(exc) from None
        rows = [r for r in reports.kernel_rows(self.kernel_manager, self.sampler.latest, self.parking)
                if r["kernel_id"] == kernel_id]  # fmt: skip
        self.write_json(rows[0] if rows else {"kernel_id": kernel_id})


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


class TerminalsHandler(GpuEnvHandler):
    """``GET terminals``: this server's terminals. ``POST terminals`` opens one: ``{"kernel_id": ID}`` in that
    kernel's container, ``{"environment": NAME}`` in a container of its own (``terminals.py``).

    It takes what opening a Lab terminal takes (permission to execute terminals); none opens while the
    server's terminals are off (``c.ServerApp.terminals_enabled = False``).
    """

    def initialize(self, terminals: Terminals) -> None:
        self.terminals = terminals

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json({"terminals": self.terminals.list()})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await may_open_terminals(self)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or sum(isinstance(body.get(k), str) for k in ("kernel_id", "environment")) != 1:
            raise web.HTTPError(400, 'open a terminal with {"kernel_id": ID} or {"environment": NAME}')
        try:
            if "kernel_id" in body:
                terminal = await self.terminals.open_in_kernel(body["kernel_id"])
            else:
                terminal = await self.terminals.open_in_environment(body["environment"])
        except GpuEnvError as exc:
            raise to_http(exc) from None
        self.set_status(201)
        self.write_json(terminal.model())


class TerminalHandler(GpuEnvHandler):
    """``GET terminals/NAME``: the terminal, 404 once it ended; ``DELETE``: close it (its own container goes)."""

    def initialize(self, terminals: Terminals) -> None:
        self.terminals = terminals

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        terminal = self.terminals.get(name)
        if terminal is None:
            raise web.HTTPError(404, f"no terminal {name!r} on this server: it has ended")
        self.write_json(terminal.model())

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        if not await self.terminals.close(name):
            raise web.HTTPError(404, f"no terminal {name!r} on this server: it has ended")
        self.set_status(204)
        self.finish()


async def terminals_availability(handler: JupyterHandler, terminals: Terminals | None) -> dict:
    """Whether this person can open terminals in environments here at all, and why not: the panel disables its
    Terminal buttons up front instead of offering what a click would refuse."""
    try:
        await may_open_terminals(handler)
    except web.HTTPError as exc:
        return {"available": False, "reason": exc.log_message}
    refusal = terminals.refusal() if terminals is not None else "this server opens no terminals in environments"
    return {"available": refusal is None, "reason": refusal}


async def may_open_terminals(handler: JupyterHandler) -> None:
    """403 unless this person may use terminals on this server, as for Lab's own."""
    if getattr(handler.serverapp, "terminals_enabled", True) is False:
        raise web.HTTPError(403, "terminals are turned off on this server (c.ServerApp.terminals_enabled = False)")
    if not await ensure_async(handler.authorizer.is_authorized(handler, handler.current_user, "execute", "terminals")):
        raise web.HTTPError(403, "you may not open terminals on this server")


class TerminalSocket(WebSocketMixin, JupyterHandler, WebSocketHandler):
    """``terminals/NAME/websocket``: terminado's protocol, so Lab's terminal widget draws the shell.

    In: ``["stdin", text]``, ``["set_size", rows, cols, ...]``. Out: ``["setup", {}]``, ``["stdout", text]``,
    ``["disconnect", 1]`` when the shell ended. Authenticated and authorized before the upgrade, as
    jupyter_server_terminals' own ``TermSocket``.
    """

    auth_resource = "terminals"

    def initialize(self, terminals: Terminals) -> None:
        self.terminals = terminals
        self.terminal: Terminal | None = None

    async def get(self, name: str) -> None:
        if not self.current_user:
            raise web.HTTPError(403)
        await may_open_terminals(self)
        self.terminal = self.terminals.get(name)
        if self.terminal is None:
            raise web.HTTPError(404, f"no terminal {name!r} on this server: it has ended")
        await super().get(name)

    def open(self, name: str) -> None:
        super().open(name)
        assert self.terminal is not None  # get() found it, or answered 404 instead of upgrading
        self.terminal.attach(self)

    async def on_message(self, message: str | bytes) -> None:
        try:
            kind, *content = json.loads(message)
        except (ValueError, TypeError):
            return
        assert self.terminal is not None  # messages come after open()
        if kind == "stdin" and content and isinstance(content[0], str):
            await self.terminal.type(content[0])
        elif kind == "set_size" and len(content) >= 2 and all(isinstance(v, int) for v in content[:2]):
            await self.terminal.set_size(self, content[0], content[1])

    def on_close(self) -> None:
        if self.terminal is not None:
            self.terminal.detach(self)

    def send(self, message: list) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            self.write_message(json.dumps(message))


class NotFoundHandler(GpuEnvHandler):
    """Anything else under the API answers a JSON 404, after authentication so it reveals nothing."""

    @web.authenticated
    @authorized
    def get(self, *args) -> None:
        raise web.HTTPError(404, f"no such gpuenv API endpoint: {self.request.path}")

    post = put = patch = delete = get


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
        (rf"{prefix}/kernels", KernelsHandler, {"sampler": sampler, "parking": parking}),
        (rf"{prefix}/kernels/([^/]+)/(park|resume)", ParkHandler, {"sampler": sampler, "parking": parking}),
        (rf"{prefix}/usage", UsageHandler, {"usage": usage}),
        (rf"{prefix}/terminals", TerminalsHandler, {"terminals": terminals}),
        (rf"{prefix}/terminals/([0-9a-f]+)", TerminalHandler, {"terminals": terminals}),
        (rf"{prefix}/terminals/([0-9a-f]+)/websocket", TerminalSocket, {"terminals": terminals}),
        (rf"{prefix}(/.*)?", NotFoundHandler),
    ]
