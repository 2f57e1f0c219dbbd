"""``terminals``: open a shell in a kernel's container or in an environment's own, list, close, and its websocket."""

from __future__ import annotations

import json

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketHandler

from jupyter_gpuenv.errors import GpuEnvError
from jupyter_gpuenv.server.handlers.base import GpuEnvHandler
from jupyter_gpuenv.server.refusals import to_http
from jupyter_gpuenv.server.terminals import Terminal, Terminals


class TerminalsHandler(GpuEnvHandler):
    """``GET terminals``: this server's terminals. ``POST terminals`` opens one: ``{"kernel_id": ID}`` in that
    kernel's container, ``{"environment": NAME}`` in a container of its own (``server.terminals``).

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
