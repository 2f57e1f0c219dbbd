"""A jupyter_client kernel provisioner that runs the kernel in a container of an environment.

The contract is ``KernelProvisionerBase``'s; this fills it in and nothing more. Which environment a
kernelspec starts is ``kernelspecs``'s business, whether it can start here ``preflight``'s, which GPUs and
which container the engine's (``engine.Engine``). The kernel talks ZMQ over ``ipc`` sockets in a private
per-kernel folder mounted into the container; the connection key stays in a 0600 file there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase

from jupyter_gpuenv import engines, host
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers.spec import CLIENT_LOCK, AssignedGpu, check_cwd
from jupyter_gpuenv.containers.warm import warm_variables
from jupyter_gpuenv.engines import base as engine
from jupyter_gpuenv.environments import kernelspecs, preflight, runtime
from jupyter_gpuenv.errors import GpuEnvError, InvalidEnvironment, InvalidKernelId
from jupyter_gpuenv.gpus import nvml
from jupyter_gpuenv.gpus.nvml import NvmlReader, Snapshot
from jupyter_gpuenv.gpus.visibility import from_environment
from jupyter_gpuenv.pulls import progress as pulls
from jupyter_gpuenv.server.refusals import Refusal, to_http
from jupyter_gpuenv.server.warm import WarmKernel, WarmKernels

_BASE_KWARGS = {"kernel_id", "kernel_spec", "parent", "config", "log"}
# a kernel id names a folder and a container: what jupyter_server makes (a uuid), nothing that walks paths
# the one log line of a refused start (the quiet-refusals log filter knows it by this format)
REFUSAL_FORMAT = "gpuenv: kernel %s not started (%d %s): %s"
LISTEN_WAIT = 30.0  # seconds a launch waits at most for the kernel's sockets (a large image's first start: ~4 s)


@dataclass(frozen=True)
class LastExit:
    """How the kernel's previous container ended, when it ended by itself (shown in GET kernels)."""

    code: int | None
    oom_killed: bool
    message: str


@dataclass(frozen=True)
class ServerContext:
    settings: GpuEnv
    sampler: Any  # the server's Sampler; None outside a Jupyter server
    root_dir: str
    warm: Any = None  # the server's warm kernels (warm.WarmKernels); None outside a Jupyter server


def server_context(provisioner: KernelProvisionerBase) -> ServerContext:
    """One walk up the parents (kernel manager, multi-kernel manager, server app) for what the server has."""
    node, sampler, root_dir, warm = provisioner.parent, None, None, None
    while node is not None:
        web_app = getattr(node, "web_app", None)
        if web_app is not None and sampler is None:
            sampler, warm = web_app.settings.get("gpuenv_sampler"), web_app.settings.get("gpuenv_warm")
        root = getattr(node, "root_dir", None)
        if root_dir is None and isinstance(root, str) and root:
            root_dir = os.path.abspath(root)
        node = getattr(node, "parent", None)
    return ServerContext(GpuEnv(config=provisioner.config), sampler, root_dir or os.getcwd(), warm)


def refuse(kernel_manager: Any, kernel_id: str, exc: GpuEnvError) -> Refusal:
    """Log the refusal once, with the sentence the person gets, and leave nothing of the start behind.

    jupyter_client keeps a failed start in its multi-kernel manager's ``_pending_kernels`` (jupyter_client
    8.x, ``MultiKernelManager._add_kernel_when_ready`` only pops on success), and the server's shutdown then
    waits on it and ignores SIGTERM: the entry goes here, since the task that owns it is this start.
    """
    pending = getattr(getattr(kernel_manager, "parent", None), "_pending_kernels", None)
    if isinstance(pending, dict):
        pending.pop(kernel_id, None)
    log = getattr(kernel_manager, "log", None) or logging.getLogger(__name__)
    log.warning(REFUSAL_FORMAT, kernel_id, exc.status, exc.code, str(exc))
    return to_http(exc)


def refuse_reserved_keys(factory: Any) -> None:
    """Answer 400 for a kernelspec whose provisioner config holds a key jupyter_client passes itself.

    jupyter_client calls ``provisioner_class(kernel_id=…, kernel_spec=…, parent=…, **config)``: a ``kernel_id``
    key in the config fails that call with a TypeError (a 500) before our provisioner exists, so the
    server's provisioner factory checks our kernelspecs first.
    """
    if getattr(factory, "_gpuenv_checks_keys", False):
        return
    create = factory.create_provisioner_instance

    def checked(kernel_id: str, kernel_spec: Any, parent: Any) -> KernelProvisionerBase:
        config = kernelspecs.provisioner_config({"metadata": getattr(kernel_spec, "metadata", None) or {}})
        reserved = sorted(set(config or {}) & _BASE_KWARGS)
        if reserved:
            name = getattr(kernel_spec, "display_name", "?")
            raise refuse(
                parent,
                kernel_id,
                InvalidEnvironment(
                    f"kernelspec {name!r}: {', '.join(map(repr, reserved))} may not be set in "
                    "metadata.kernel_provisioner.config (the server sets it)"
                ),
            )
        return create(kernel_id, kernel_spec, parent)

    factory.create_provisioner_instance = checked
    factory._gpuenv_checks_keys = True


def serialise_restarts(kernel_manager: Any) -> None:
    """One restart of a kernel at a time: a second waits for the first to finish, then restarts it again.

    jupyter_client's ``KernelManager`` does not order its own restarts: two at once share one ``ready``
    future (``manager.in_pending_state``), set it twice, and both fail (a 500, the kernel left half-gone).
    Every restart, the server's and the auto-restarter's, goes through ``kernel_manager.restart_kernel``.
    The wrapper keeps the manager's own kind: a coroutine for an ``AsyncKernelManager`` (restarts are tasks on
    one loop), a plain call for the synchronous ``KernelManager`` of qtconsole, nbclient's scripts and the
    synchronous ``MultiKernelManager`` (restarts are threads, each running its own loop).
    """
    if getattr(kernel_manager, "_gpuenv_serialised", False) or not hasattr(kernel_manager, "restart_kernel"):
        return
    restart = kernel_manager.restart_kernel
    restart_kernel: Callable[..., Any]  # a coroutine function or a plain one, as restart is
    if inspect.iscoroutinefunction(restart):
        lock = asyncio.Lock()

        async def restart_kernel(*args: Any, **kwargs: Any) -> Any:
            async with lock:
                return await restart(*args, **kwargs)

    else:
        thread_lock = threading.Lock()

        def restart_kernel(*args: Any, **kwargs: Any) -> Any:
            with thread_lock:
                return restart(*args, **kwargs)

    kernel_manager.restart_kernel = restart_kernel
    kernel_manager._gpuenv_serialised = True


class DockerKernelProvisioner(KernelProvisionerBase):
    """Runs a kernel in a container; selected by ``provisioner_name: gpuenv-docker-provisioner``."""

    def __init__(self, **kwargs: Any) -> None:
        spec_config = {k: kwargs.pop(k) for k in list(kwargs) if k not in _BASE_KWARGS}
        super().__init__(**kwargs)
        context = server_context(self)
        self.settings, self._sampler, self._root_dir = context.settings, context.sampler, context.root_dir
        self._warm_kernels = context.warm
        self._warm: WarmKernel | engine.WarmTaken | None = None  # a warm kernel taken for this start (server.warm)
        source = f"kernelspec {getattr(self.parent, 'kernel_name', None) or '?'}"
        try:
            if not labels.KERNEL_ID.fullmatch(self.kernel_id or ""):
                raise InvalidKernelId(
                    f"kernel id {self.kernel_id!r} is not allowed: use letters, digits, '-' and '_' (at most 64), "
                    "or let the server choose one"
                )
            self.engine: engine.Engine = engines.connect(self.settings, self.log)
            # None: defined by the broker, asked at start
            self.environment_name, self.environment = self.engine.kernelspec_environment(spec_config, source)
        except GpuEnvError as exc:
            raise refuse(self.parent, self.kernel_id, exc) from None
        serialise_restarts(self.parent)
        self.placement: engine.Placement | None = None
        self.socket_dir: str | None = None
        self._client_lock: int | None = None  # fd of the socket folder's CLIENT_LOCK, held while the kernel is ours
        self.last_exit: LastExit | None = None
        self._exit_code: int | None = None
        self._launching = False
        self._restarting = False
        self._keep: tuple[AssignedGpu, ...] = ()  # the GPUs of a kernel being restarted
        self._lifecycle = asyncio.Lock()  # one launch or cleanup of this kernel at a time

    @property
    def has_process(self) -> bool:
        return self.placement is not None or self._launching

    # -- launch ----------------------------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """The socket folder and connection file (local and quick); the engine's work is in launch_kernel."""
        km = self.parent
        restarting = self._restarting = self.socket_dir is not None
        try:
            if self.environment is None:  # the engine's (the broker's) definition
                self.environment = await self.engine.environment(self.environment_name)
            if not restarting:
                self._warm = self._warm_kernels.take(self.environment) if self._warm_kernels else None
                if self._warm is None:  # a shared host's broker keeps this person's, bound to this kernel now
                    server_env = dict(kwargs.get("env") or {})
                    self._warm = await self.engine.take_warm(
                        self.kernel_id, self.environment, self._root_dir, server_env
                    )
                if self._warm:  # its folder, and the client lock this process holds on it, are this kernel's now
                    self.socket_dir, self._client_lock = self._warm.folder, self._warm.release_lock()
                else:
                    self.socket_dir = await self.engine.socket_folder(self.kernel_id)
                    self._hold_client_lock()
            if self.environment.transport == "ipc":
                km.transport, km.ip = "ipc", os.path.join(self.socket_dir, "k")
            else:
                km.transport, km.ip = "tcp", "127.0.0.1"
            km.connection_file = os.path.join(self.socket_dir, "connection.json")
            km.write_connection_file(jupyter_session=kwargs.get("env", {}).get("JPY_SESSION_NAME", ""))
            os.chmod(km.connection_file, 0o600)
        except GpuEnvError as exc:
            if not restarting:
                await self._remove_socket_dir()
            raise refuse(self.parent, self.kernel_id, exc) from None
        self.connection_info = km.get_connection_info()
        kwargs.pop("extra_arguments", None)
        return await super().pre_launch(cmd=[], **kwargs)

    def _hold_client_lock(self) -> None:
        """Lock the kernel's CLIENT_LOCK for as long as this process lives or until the kernel is shut down.

        The lock belongs to this process's open file (not inheritable across exec); when the process ends,
        however, the host's kernel drops it and the kernel's watcher in the container ends the kernel.
        """
        path = os.path.join(self.socket_dir, CLIENT_LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidKernelId(
                f"kernel id {self.kernel_id!r} is in use by another client on this host: let the server choose one"
            ) from None
        self._client_lock = fd

    async def _remove_socket_dir(self) -> None:
        if self.socket_dir:
            await self.engine.remove_socket_folder(self.kernel_id, self.socket_dir)
            self.socket_dir = None
        if self._client_lock is not None:  # after the container went: a watcher still there ends its kernel
            os.close(self._client_lock)
            self._client_lock = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        async with self._lifecycle:
            if self.placement is not None:  # a restart that ran at the same time started it already
                return self.connection_info
            self._launching = True
            await asyncio.get_running_loop().run_in_executor(None, self.engine.watch_client)
            for path in self._socket_paths():  # a restart: the previous kernel's, which no one listens on
                with contextlib.suppress(OSError):
                    os.unlink(path)
            try:
                self.placement = await self._hand_over(kwargs) or await self.engine.start_kernel(
                    await self._request(kwargs)
                )
            except GpuEnvError as exc:
                if not self._restarting:
                    await self._remove_socket_dir()
                raise refuse(self.parent, self.kernel_id, exc) from None
            finally:
                self._launching = False
        self._exit_code = None
        p = self.placement
        self.log.info(
            "gpuenv: kernel %s runs in container %s (%s, GPUs %s, %s)",
            self.kernel_id,
            p.container_id[:12],
            self.environment.image,
            [g.index for g in p.gpus] or "none",
            p.gpu_mode,
        )
        await self._until_listening()
        return self.connection_info

    async def _hand_over(self, kwargs: dict[str, Any]) -> engine.Placement | None:
        """The warm kernel taken for this start, now this kernel; None for a cold start (none taken, or it failed)."""
        warm, self._warm = self._warm, None
        if warm is None:
            return None
        try:
            cwd = os.path.abspath(str(kwargs.get("cwd") or self._root_dir))
            check_cwd(cwd, self._root_dir, host.current_user().home)
            variables = warm_variables(self.environment, dict(kwargs.get("env") or {}))
            if isinstance(warm, WarmKernel):  # the broker bound its own at the take
                await self._warm_kernels.bind(warm)
            await WarmKernels.hand_over(warm, self.parent.connection_file, cwd, variables)
            return warm.placement
        except BaseException as exc:  # it is not this kernel: it goes (a refusal is still raised)
            with contextlib.suppress(GpuEnvError):
                await self.engine.remove(warm.placement.container_id)
            if not isinstance(exc, OSError):
                raise
            self.log.warning("gpuenv: kernel %s starts cold: its warm kernel failed (%s)", self.kernel_id, exc)
            return None

    def _socket_paths(self) -> list[str]:
        km = self.parent
        if getattr(km, "transport", None) != "ipc":
            return []
        ports = (km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port)
        return [f"{km.ip}-{port}" for port in ports]

    async def _until_listening(self) -> None:
        """Return once the kernel's ipc sockets exist, so that the first connection of each client succeeds at
        once: one made earlier fails and is retried only ZMQ's reconnect interval (0.1 s) later. Also return when
        the container stops (looked at each second) or after LISTEN_WAIT seconds: the client's timeouts rule then.
        """
        paths = self._socket_paths()
        started = time.monotonic()
        looked = started
        while not all(os.path.exists(path) for path in paths):
            now = time.monotonic()
            if self.placement is None or now - started > LISTEN_WAIT:
                return
            if now - looked >= 1.0:
                looked = now
                try:
                    if not (await self.engine.state(self.placement.container_id)).running:
                        return
                except GpuEnvError:
                    return
            await asyncio.sleep(0.005 if now - started < 1.0 else 0.02)  # soon after a start, most bind

    async def _request(self, kwargs: dict[str, Any]) -> engine.KernelRequest:
        """Check that it can start (pulling the image first if allowed), then say what to start."""
        env, user = self.environment, host.current_user()
        cwd = os.path.abspath(str(kwargs.get("cwd") or self._root_dir))
        check_cwd(cwd, self._root_dir, user.home)
        if env.gpus.wants_gpus:
            snapshot = await asyncio.get_running_loop().run_in_executor(None, self._inventory)
        else:  # no GPU to choose or check: NVML is not asked (outside a server that is a driver load per start)
            snapshot = Snapshot(available=False, reason="no GPU asked for")
        verdict = await self.engine.verdict(env, snapshot, self.settings.pull_missing_images)
        if verdict.can_start and verdict.state in (preflight.IMAGE_MISSING, preflight.PULLING):
            await self._pull(env.image)
            verdict = await self.engine.verdict(env, snapshot, self.settings.pull_missing_images)
        verdict.raise_if_refused()
        runtime_dir = runtime.runtime_path(self.settings.kernel_runtime_dir, verdict.runtime_version)
        return engine.KernelRequest(
            environment=env,
            kernel_id=self.kernel_id,
            user=user,
            server=host.this_server(),
            root_dir=self._root_dir,
            cwd=cwd,
            socket_dir=self.socket_dir or "",
            connection_file=self.parent.connection_file,
            inventory=list(snapshot.gpus),
            keep_gpus=[g.uuid for g in self.placement_gpus],
            runtime_dir=runtime_dir if verdict.runtime_version else None,
            server_env=dict(kwargs.get("env") or {}),
            shared_network_namespace=self.settings.shared_network_namespace,
        )

    async def _pull(self, image: str) -> None:
        """Wait for the image: one pull for every kernel that needs it, however long, while bytes keep coming.

        The start waits as long as the pull moves (the engine abandons one that stalls); the panel and GET
        environments show its progress meanwhile, the log a line every half minute.
        """
        self.log.info("gpuenv: kernel %s waits for %s to be pulled", self.kernel_id, image)
        last = [time.monotonic()]

        def note(progress: pulls.PullProgress) -> None:
            if time.monotonic() - last[0] >= 30:
                last[0] = time.monotonic()
                self.log.info("gpuenv: pulling %s: %s", image, pulls.describe(progress))

        await self.engine.pull(image, note)

    def _inventory(self) -> Snapshot:
        """The GPUs this server may give: the sampler's latest, or one NVML read outside a server."""
        if self._sampler is not None and self._sampler.samples_taken:
            return self._sampler.latest
        reader = NvmlReader(nvml.load_pynvml())
        reason = reader.init()
        if reason is not None:
            return Snapshot(available=False, reason=reason)
        try:
            return reader.read(from_environment(self.settings.visible_devices).allows)
        finally:
            reader.shutdown()

    # -- lifecycle -------------------------------------------------------------------------------------
    async def poll(self) -> int | None:
        if self._launching:
            return None
        if self.placement is None:
            return self._exit_code if self._exit_code is not None else 0
        try:
            state = await self.engine.state(self.placement.container_id)
        except GpuEnvError:
            return None  # the engine did not answer in time: do not declare the kernel dead for that
        if state.running:
            return None
        self._note_exit(state)
        return state.exit_code if state.exit_code is not None else 1

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        self._exit_code = code
        return code

    async def send_signal(self, signum: int) -> None:
        if self.placement is not None:  # docker-init, PID 1 in the container, forwards it to the kernel's group
            await self.engine.signal(self.placement.container_id, signum)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        async with self._lifecycle:
            placement, self.placement = self.placement, None
            if restart and placement is not None:
                self._keep = placement.gpus
            if placement is not None:
                try:
                    self._note_exit(await self.engine.remove(placement.container_id))
                except GpuEnvError as exc:
                    self.log.warning("gpuenv: container %s is removed later: %s", placement.container_id[:12], exc)
            if not restart:
                self._keep = ()
                await self._remove_socket_dir()

    @property
    def placement_gpus(self) -> tuple[AssignedGpu, ...]:
        """The GPUs the kernel has, or had before the restart under way (it gets the same ones again)."""
        return self.placement.gpus if self.placement is not None else self._keep

    def _note_exit(self, state: engine.ContainerState | None) -> None:
        if state is None or not state.oom_killed:
            return
        limit = self.environment.memory
        message = f"the kernel ran out of its {limit} memory limit" if limit else "the kernel ran out of memory"
        if self.last_exit is None or self.last_exit.message != message + " and was restarted":
            self.log.warning("gpuenv: kernel %s: %s (the engine killed it)", self.kernel_id, message)
        self.last_exit = LastExit(state.exit_code, True, message + " and was restarted")

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    # -- persistence across server restarts ------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        p = self.placement
        info.update(
            {
                "socket_dir": self.socket_dir,
                "environment": self.environment_name,
                "placement": None
                if p is None
                else {"container_id": p.container_id, "gpu_mode": p.gpu_mode, "gpus": [asdict(g) for g in p.gpus]},
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.socket_dir = provisioner_info.get("socket_dir")
        p = provisioner_info.get("placement")
        self.placement = (
            None
            if not p
            else engine.Placement(p["container_id"], p["gpu_mode"], tuple(AssignedGpu(**g) for g in p["gpus"]))
        )
