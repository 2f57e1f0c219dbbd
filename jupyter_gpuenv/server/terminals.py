"""Terminals inside a notebook's environment: a shell in a kernel's container, or in a container of its own.

A terminal is a shell the engine exec'd into a container (``Engine.exec_shell``: Docker's exec API directly,
or the broker on a shared host), never SSH and never a port: the bytes go between the engine's connection and
this server's authenticated websocket (``handlers.TerminalSocket``), which speaks terminado's protocol, so
JupyterLab's own terminal widget draws it. Two kinds:

- **in a kernel's container**: same GPUs, files, user, working folder and limits as the kernel. It ends when
  the kernel shuts down or restarts (its container goes); what runs under tmux in it lives until then.
- **in an environment's container**: a container of the environment started for the terminal alone
  (``KernelRequest(terminal=True)``: the same start path, GPU choice and policy as a kernel). Closing the
  terminal removes it, tmux and all, and frees the GPUs it held.

A terminal outlives its browser tab for ``c.GpuEnv.terminal_grace_period`` seconds, so a page reload finds its
shell again (the last output is replayed); several tabs may show one terminal, as with terminado. Closing
the tab, the shell's ``exit``, its container's end or the grace period's end close it for good.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from jupyter_gpuenv import engines, host
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.engines import base as engine
from jupyter_gpuenv.engines.base import Shell  # inside Terminals, ``engine`` is its property, not this module
from jupyter_gpuenv.environments import preflight
from jupyter_gpuenv.errors import (
    CannotStartHere,
    GpuEnvError,
    ImageMissing,
    InvalidRequest,
    NotPermitted,
    UnknownKernel,
)

REPLAY_CHARS = 64 * 1024  # output kept for a tab that attaches later (a reload): a few screens
KERNEL_NOTICE = (
    "This shell runs in the container of the notebook's kernel: same GPUs, files and user. It ends when the kernel "
    "shuts down or restarts; a job under tmux keeps running until then."
)
ENVIRONMENT_NOTICE = (
    "This shell runs in a container of its own, started for this terminal. Closing the terminal removes the "
    "container, with everything running in it (tmux too), and frees its GPUs."
)


class Client(Protocol):
    """One browser tab showing a terminal: it is sent terminado's messages (``["stdout", text]``, …)."""

    def send(self, message: list[Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where a terminal's shell runs."""

    container_id: str
    environment: str | None
    kernel_id: str | None = None  # a kernel's container; None: the terminal's own container
    socket_dir: str | None = None  # the terminal's own container's folder, removed with it


class Terminal:
    """One shell and the tabs showing it. Reads the shell for as long as it lives, whether shown or not."""

    def __init__(self, name: str, shell: engine.Shell, target: Target, on_end, grace: float, log) -> None:
        self.name, self.shell, self.target = name, shell, target
        self.created = time.time()
        self.clients: dict[Client, tuple[int, int] | None] = {}
        self.ended = asyncio.Event()
        self._on_end, self._grace, self.log = on_end, grace, log
        self._size: tuple[int, int] | None = None
        self._replay: deque[str] = deque()
        self._replay_chars = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._expiry: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task | None = None
        self._expire_later()  # nobody attached yet: the tab that asked for it has this long to connect
        self._pump = asyncio.ensure_future(self._read_shell())

    def model(self) -> dict[str, Any]:
        t = self.target
        return {
            "name": self.name,
            "environment": t.environment,
            "kernel_id": t.kernel_id,
            "container_id": t.container_id,
            "ends_with": "kernel" if t.kernel_id else "terminal",
            "notice": KERNEL_NOTICE if t.kernel_id else ENVIRONMENT_NOTICE,
            "clients": len(self.clients),
            "created": self.created,
        }

    # -- tabs ------------------------------------------------------------------------------------------
    def attach(self, client: Client) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.clients[client] = None
        client.send(["setup", {}])
        if self._replay:
            client.send(["stdout", "".join(self._replay)])

    def detach(self, client: Client) -> None:
        self.clients.pop(client, None)
        if self._ending is not None:
            return
        if self.clients:
            asyncio.ensure_future(self._fit())  # the tabs left may have room for more
        else:
            self._expire_later()

    def _expire_later(self) -> None:
        self._expiry = asyncio.get_running_loop().call_later(self._grace, self._expire)

    def _expire(self) -> None:
        self.log.info("gpuenv: terminal %s had no tab for %.0f s; closing it", self.name, self._grace)
        self.end()

    async def type(self, text: str) -> None:
        await self.shell.write(text.encode("utf-8", "replace"))

    async def set_size(self, client: Client, rows: int, cols: int) -> None:
        if client in self.clients and rows > 0 and cols > 0:
            self.clients[client] = (rows, cols)
            await self._fit()

    async def _fit(self) -> None:
        """The smallest size any tab asked for, as terminado does: every tab can show all of it."""
        sizes = [s for s in self.clients.values() if s]
        if not sizes:
            return
        size = (min(r for r, _ in sizes), min(c for _, c in sizes))
        if size != self._size:
            self._size = size
            try:
                await self.shell.resize(*size)
            except GpuEnvError as exc:
                self.log.debug("gpuenv: terminal %s not resized: %s", self.name, exc)

    # -- the shell -------------------------------------------------------------------------------------
    async def _read_shell(self) -> None:
        try:
            while data := await self.shell.read():
                text = self._decoder.decode(data)
                if not text:
                    continue
                self._remember(text)
                for client in list(self.clients):
                    client.send(["stdout", text])
        finally:  # the shell ended (exit, or its container went), or the terminal is being closed
            self.end()

    def _remember(self, text: str) -> None:
        self._replay.append(text)
        self._replay_chars += len(text)
        while self._replay_chars > REPLAY_CHARS and len(self._replay) > 1:
            self._replay_chars -= len(self._replay.popleft())

    def end(self) -> asyncio.Task:
        """Close it for good (idempotent): hang the shell up, tell the tabs, let go of its container."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        return self._ending

    async def _end(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._pump is not asyncio.current_task():
            self._pump.cancel()
        try:
            await self.shell.close()
        finally:
            for client in list(self.clients):
                client.send(["disconnect", 1])
                client.close()
            self.clients.clear()
            self.ended.set()
            await self._on_end(self)


class Terminals:
    """This server's terminals, by name. One per server (``server.extension``), shared by its handlers."""

    def __init__(self, settings: GpuEnv, kernel_manager, spec_manager, sampler, root_dir: str, log=None) -> None:
        self.settings, self.kernel_manager, self.spec_manager = settings, kernel_manager, spec_manager
        self.sampler, self.root_dir = sampler, root_dir
        self.log = log or logging.getLogger(__name__)
        self._terminals: dict[str, Terminal] = {}

    @property
    def engine(self) -> engine.Engine:
        return engines.connect(self.settings, self.log)

    def get(self, name: str) -> Terminal | None:
        return self._terminals.get(name)

    def list(self) -> list[dict[str, Any]]:
        return [t.model() for t in self._terminals.values()]

    async def close(self, name: str) -> bool:
        """Close terminal ``name``; False if there is none (it ended already)."""
        terminal = self._terminals.get(name)
        if terminal is None:
            return False
        await terminal.end()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(t.end() for t in list(self._terminals.values())), return_exceptions=True)

    def refusal(self) -> str | None:
        """Why no terminal can open on this server whatever it is asked, or None; the panel disables its buttons
        with it. A server running as root starts its kernels as root (the broker refuses root), and a terminal
        never opens a root shell."""
        if host.current_user().uid == 0 and not self.engine.shared_host:
            return (
                "run the Jupyter server as a normal user to open terminals: this one runs as root, so its kernels "
                "do too, and a terminal never opens a root shell"
            )
        return None

    # -- opening -------------------------------------------------------------------------------------
    async def open_in_kernel(self, kernel_id: str) -> Terminal:
        """A shell in the container of this server's kernel ``kernel_id``."""
        if kernel_id not in self.kernel_manager.list_kernel_ids():
            raise UnknownKernel(f"no kernel {kernel_id!r} runs on this server")
        provisioner = self.kernel_manager.get_kernel(kernel_id).provisioner
        if not hasattr(provisioner, "placement"):
            raise InvalidRequest(
                "this kernel does not run in a container: its notebook runs on the server's host, where a Lab "
                "terminal (File → New → Terminal) is the shell beside it"
            )
        placement = provisioner.placement
        if placement is None:
            raise CannotStartHere("the kernel is starting or restarting: open the terminal once it runs")
        environment = getattr(provisioner, "environment_name", None)
        shell = await self.engine.exec_shell(placement.container_id, self._user())
        return self._add(shell, Target(placement.container_id, environment, kernel_id=kernel_id))

    async def open_in_environment(self, name: str) -> Terminal:
        """A shell in a container of environment ``name`` started for it alone, removed when it closes."""
        eng = self.engine
        env = await self._checked_environment(name)
        user = host.current_user()
        refusal = self.refusal()
        if refusal:
            raise NotPermitted(refusal)
        terminal_name = secrets.token_hex(6)
        kernel_id = f"terminal-{terminal_name}"  # its container's name and labels, as a kernel's
        socket_dir = await eng.socket_folder(kernel_id)
        snapshot = self.sampler.latest if self.sampler is not None else None
        request = engine.KernelRequest(
            environment=env,
            kernel_id=kernel_id,
            user=user,
            server=host.this_server(),
            root_dir=self.root_dir,
            cwd=self.root_dir,
            socket_dir=socket_dir,
            connection_file=os.path.join(socket_dir, "connection.json"),  # none is written: nothing connects
            inventory=list(snapshot.gpus) if snapshot is not None else [],
            terminal=True,
        )
        container_id = None
        try:
            container_id = (await eng.start_kernel(request)).container_id
            shell = await eng.exec_shell(container_id, self._user())
        except BaseException:
            await self._remove_container(container_id, socket_dir)
            raise
        target = Target(container_id, env.name, socket_dir=socket_dir)
        self.log.info("gpuenv: terminal %s runs in container %s of %s", terminal_name, container_id[:12], env.name)
        return self._add(shell, target, terminal_name)

    async def _checked_environment(self, name: str):
        """The environment, if a kernel of it could start here now (the same verdict the panel shows)."""
        specs = await asyncio.get_running_loop().run_in_executor(None, self.spec_manager.get_all_specs)
        env = await self.engine.environment(name, specs)
        verdict = await self.engine.verdict(env, self.sampler.latest, pull_allowed=False)
        if verdict.state in (preflight.IMAGE_MISSING, preflight.PULLING):
            raise ImageMissing(
                f"the image {env.image} is not on this machine yet: start a notebook with {env.display_name} once "
                "(that pulls it), then open the terminal"
            )
        verdict.raise_if_refused()
        return env

    async def _remove_container(self, container_id: str | None, socket_dir: str | None) -> None:
        try:
            if container_id is not None:
                await self.engine.remove(container_id)
        except GpuEnvError as exc:
            self.log.warning("gpuenv: terminal container %.12s is removed later: %s", container_id, exc)
        finally:
            if socket_dir:
                await self.engine.remove_socket_folder(os.path.basename(socket_dir), socket_dir)

    def _user(self) -> str:
        """Whom the shell runs as: this server's user, as its kernels do (the broker puts in its caller's)."""
        user = host.current_user()
        return f"{user.uid}:{user.gid}"

    def _add(self, shell: Shell, target: Target, name: str | None = None) -> Terminal:
        name = name or secrets.token_hex(6)
        terminal = Terminal(name, shell, target, self._ended, self.settings.terminal_grace_period, self.log)
        self._terminals[name] = terminal
        return terminal

    async def _ended(self, terminal: Terminal) -> None:
        self._terminals.pop(terminal.name, None)
        if terminal.target.kernel_id is None:  # its own container: it goes with the terminal
            await self._remove_container(terminal.target.container_id, terminal.target.socket_dir)
        self.log.info("gpuenv: terminal %s closed", terminal.name)
