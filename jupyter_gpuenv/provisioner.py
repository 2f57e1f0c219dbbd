"""A jupyter_client kernel provisioner that runs the kernel in a Docker container of an environment.

The kernel talks ZMQ over ``ipc`` sockets in a per-kernel folder bind-mounted into the container, so it
listens on no TCP port and the container can run with no network at all. Every docker SDK call runs in
a worker thread. What goes into ``docker run`` comes from the environment an administrator defined
(``containers.create_kwargs``); the connection key stays in a 0600 file in the socket folder.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import pwd
import shutil
import signal
import socket
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase
from tornado.web import HTTPError

from . import allocation, containers, engine
from .config import GpuEnv
from .environments import Environment, EnvironmentError_, cuda_compatibility, parse_environment
from .nvml import NvmlReader, Snapshot
from .runtime import runtime_path
from .visibility import from_environment

_BASE_KWARGS = {"kernel_id", "kernel_spec", "parent", "config", "log"}
# what a failed start answers: the Jupyter server shows an HTTPError's message to the user as it is
_STATUS = ((EnvironmentError_, 400), (allocation.AllocationError, 409), (engine.EngineError, 503))


def as_user_error(exc: BaseException) -> BaseException:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return HTTPError(status, str(exc), reason=kind.__name__.strip("_"))
    return exc


def resolve_environment(settings: GpuEnv, spec_config: dict[str, Any], source: str) -> Environment:
    """The environment a kernelspec's provisioner config names or defines; EnvironmentError_ if bad."""
    spec_config = dict(spec_config)
    name = spec_config.pop("environment", None)
    if not isinstance(name, str) or not name:
        raise EnvironmentError_(f"{source}: metadata.kernel_provisioner.config needs 'environment': NAME")
    if name in settings.environments:
        return parse_environment(name, settings.environments[name], "c.GpuEnv.environments")
    if not spec_config:
        raise EnvironmentError_(f"{source}: no environment {name!r} in c.GpuEnv.environments "
                                f"(defined: {', '.join(sorted(settings.environments)) or 'none'})")
    if not settings.allow_kernelspec_environments:
        raise EnvironmentError_(f"{source}: environment {name!r} is defined in the kernelspec, and this "
                                "server only accepts environments from c.GpuEnv.environments")
    return parse_environment(name, spec_config, source)


def server_settings(provisioner: KernelProvisionerBase) -> tuple[GpuEnv, Any]:
    """The GpuEnv settings and, inside a Jupyter server, its GPU sampler."""
    node, sampler = provisioner.parent, None
    while node is not None and sampler is None:
        web_app = getattr(node, "web_app", None)
        if web_app is not None:
            sampler = web_app.settings.get("gpuenv_sampler")
        node = getattr(node, "parent", None)
    return GpuEnv(config=provisioner.config), sampler


class DockerKernelProvisioner(KernelProvisionerBase):
    """Runs a kernel in a container; selected by ``provisioner_name: gpuenv-docker-provisioner``."""

    def __init__(self, **kwargs: Any) -> None:
        spec_config = {k: kwargs.pop(k) for k in list(kwargs) if k not in _BASE_KWARGS}
        super().__init__(**kwargs)
        self.settings, self._sampler = server_settings(self)
        source = f"kernelspec {getattr(self.kernel_spec, 'display_name', '?')!r}"
        try:
            self.environment = resolve_environment(self.settings, spec_config, source)
        except EnvironmentError_ as exc:
            raise as_user_error(exc) from exc
        self.container_id: str | None = None
        self.socket_dir: str | None = None
        self.gpus: list[containers.AssignedGpu] = []
        self.gpu_mode: str | None = None
        self._runtime_dir: str | None = None
        self._exit_code: int | None = None
        self._docker = None

    # -- helpers ---------------------------------------------------------------------------------------
    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _client(self):
        """One engine client per kernel (a new one pings the engine: ~10 ms that a start need not pay 7 times)."""
        if self._docker is None:
            self._docker = engine.client(self.settings.docker_url, self.settings.docker_timeout)
        return self._docker

    def _inventory(self) -> Snapshot:
        if self._sampler is not None and self._sampler.samples_taken:
            return self._sampler.latest
        from .sampler import load_pynvml

        reader = NvmlReader(load_pynvml())
        reason = reader.init()
        if reason is not None:
            return Snapshot(available=False, reason=reason)
        try:
            return reader.read(from_environment(self.settings.visible_devices).allows)
        finally:
            reader.shutdown()

    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    # -- launch ------------------------------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        restarting = self.socket_dir is not None
        try:
            await self._in_thread(self._prepare_image)
            if not restarting:
                self.socket_dir = self._make_socket_dir()
            if self.environment.transport == "ipc":
                km.transport = "ipc"
                km.ip = os.path.join(self.socket_dir, "k")
            else:
                km.transport, km.ip = "tcp", "127.0.0.1"
            km.connection_file = os.path.join(self.socket_dir, "connection.json")
            session = kwargs.get("env", {}).get("JPY_SESSION_NAME", "")
            km.write_connection_file(jupyter_session=session)
            os.chmod(km.connection_file, 0o600)
        except BaseException as exc:
            if not restarting:
                self._remove_socket_dir()
            raise as_user_error(exc) from exc
        self.connection_info = km.get_connection_info()
        kwargs.pop("extra_arguments", None)
        return await super().pre_launch(cmd=[], **kwargs)

    def _prepare_image(self) -> None:
        """Engine reachable, image present (pulled if allowed), CUDA compatible, ipykernel available."""
        env, c = self.environment, self._client()
        info = engine.image_info(c, env.image)
        if not info.present:
            if not self.settings.pull_missing_images:
                raise engine.EngineError(f"image {env.image} is not on the Docker engine and pulling is off "
                                         f"(c.GpuEnv.pull_missing_images): pull or build it on the host first")
            self.log.info("gpuenv: pulling %s for kernel %s", env.image, self.kernel_id)
            engine.pull(c, env.image, lambda line: self.log.info("gpuenv: pull %s: %s", env.image, line))
            info = engine.image_info(c, env.image)
        snapshot = self._inventory()
        if env.gpus.wants_gpus:
            if not snapshot.available:
                raise allocation.AllocationError(f"environment {env.name!r} asks for GPUs ({env.gpus}) but "
                                                 f"this server sees none: {snapshot.reason}")
            ok, reason = cuda_compatibility(env.cuda_version or info.cuda_version, snapshot.cuda_driver_version)
            if not ok:
                raise engine.EngineError(f"environment {env.name!r} cannot start: {reason}")
        self._runtime_dir = None
        if env.kernel_runtime == "mount" or (
                env.kernel_runtime == "auto"
                and not engine.image_has_ipykernel(c, info, env.image, env.python, dict(env.env))):
            version = engine.image_python_version(c, env.image, env.python)
            path = runtime_path(self.settings.kernel_runtime_dir, version)
            if not os.path.isdir(path):
                raise engine.EngineError(
                    f"image {env.image} has no ipykernel and no kernel runtime for Python {version} is "
                    f"prepared: run `jupyter gpuenv prepare-runtime {version}` (or install ipykernel in the image)")
            self._runtime_dir = path

    def _make_socket_dir(self) -> str:
        root = os.path.join(self.settings.socket_root, f"gpuenv-{os.getuid()}")
        os.makedirs(root, mode=0o700, exist_ok=True)
        path = os.path.join(root, self.kernel_id)
        if len(os.path.join(path, "k-9999")) > 100:
            raise EnvironmentError_(f"socket folder {path} is too long for unix sockets (at most ~100 bytes): "
                                    "set c.GpuEnv.socket_root to a shorter path")
        os.makedirs(path, mode=0o700)
        return path

    def _remove_socket_dir(self) -> None:
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        try:
            await self._in_thread(self._create_and_start, kwargs)
        except BaseException as exc:
            await self.cleanup(restart=False)
            raise as_user_error(exc) from exc
        return self.connection_info

    def _facts(self, kwargs: dict[str, Any], gpu_mode: str, gpus: list[containers.AssignedGpu]):
        user = pwd.getpwuid(os.getuid())
        root_dir = self._root_dir()
        return containers.LaunchFacts(
            kernel_id=self.kernel_id, server_host=socket.gethostname(), server_pid=os.getpid(),
            uid=os.getuid(), gid=os.getgid(), user_name=user.pw_name or getpass.getuser(),
            home=os.path.expanduser("~"), root_dir=root_dir, cwd=str(kwargs.get("cwd") or root_dir),
            socket_dir=self.socket_dir, connection_file=self.parent.connection_file, gpu_mode=gpu_mode,
            gpus=gpus, exclusive=self.environment.gpus.kind == "exclusive",
            driver_mounts=containers.driver_mounts() if gpu_mode == "devices" else [],
            runtime_dir=self._runtime_dir, server_env=dict(kwargs.get("env") or {}),
        )

    def _root_dir(self) -> str:
        node = self.parent
        while node is not None:
            root = getattr(node, "root_dir", None)
            if isinstance(root, str) and root:
                return os.path.abspath(root)
            node = getattr(node, "parent", None)
        return os.getcwd()

    def _create_and_start(self, kwargs: dict[str, Any]) -> None:
        env, c = self.environment, self._client()
        keep = [g.uuid for g in self.gpus] or None
        with engine.host_lock():
            gpus: list[containers.AssignedGpu] = []
            if env.gpus.wants_gpus:
                snapshot = self._inventory()
                held = engine.holdings_from([x for x in engine.kernel_containers(c)
                                             if x.labels.get(containers.L_KERNEL) != self.kernel_id])
                chosen = allocation.choose(env.gpus, snapshot.gpus, held, keep=keep)
                gpus = [containers.AssignedGpu(g.index, g.uuid, g.minor_number) for g in chosen]
            mode = "none" if not gpus else (engine.engine_gpu_mode(c) if env.gpu_mode == "auto" else env.gpu_mode)
            create = containers.create_kwargs(env, self._facts(kwargs, mode, gpus))
            container = c.containers.create(**create)
        self.container_id, self.gpus, self.gpu_mode, self._exit_code = container.id, gpus, mode, None
        try:
            container.start()
        except engine.APIError as exc:
            text = str(exc.explanation or exc)
            if "could not select device driver" in text:
                raise engine.EngineError(
                    "the Docker engine has no NVIDIA Container Toolkit, so it cannot attach GPUs with "
                    "gpu_mode 'toolkit': install the toolkit, or use gpu_mode 'auto' or 'devices'") from exc
            raise engine.EngineError(f"the kernel container did not start: {text}") from exc
        self.log.info("gpuenv: kernel %s runs in container %s (%s, GPUs %s, %s)", self.kernel_id,
                      container.short_id, env.image, [g.index for g in gpus] or "none", mode)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def _state(self) -> int | None:
        try:
            state = self._client().api.inspect_container(self.container_id)["State"]
        except engine.NotFound:
            return 1  # removed from outside: dead
        except (engine.DockerException, OSError) as exc:
            self._docker = None  # the engine went away: the next call reconnects, or says it cannot
            raise engine.EngineError(str(exc)) from exc
        return None if state.get("Running") else int(state.get("ExitCode") or 0)

    async def poll(self) -> int | None:
        if self.container_id is None:
            return self._exit_code if self._exit_code is not None else 0
        try:
            return await self._in_thread(self._state)
        except engine.EngineError:
            return None  # the engine did not answer in time: do not declare the kernel dead for that

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        self._exit_code = code
        return code

    async def send_signal(self, signum: int) -> None:
        if self.container_id is None:
            return
        # docker-init is PID 1 in the container and forwards the signal to the kernel
        await self._in_thread(self._kill_with, signum)

    def _kill_with(self, signum: int) -> None:
        try:
            self._client().api.kill(self.container_id, signal=int(signum))
        except (engine.NotFound, engine.APIError) as exc:
            if "is not running" not in str(exc) and not isinstance(exc, engine.NotFound):
                raise

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        container_id, self.container_id = self.container_id, None
        if container_id:
            try:
                await self._in_thread(lambda: engine.remove_quietly(self._client(), container_id))
            except engine.EngineError as exc:
                self.log.warning("gpuenv: could not remove container %s: %s", container_id[:12], exc)
        if not restart:
            self.gpus = []
            self._remove_socket_dir()

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    # -- persistence across restarts --------------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"container_id": self.container_id, "socket_dir": self.socket_dir,
                     "environment": self.environment.name, "gpu_mode": self.gpu_mode,
                     "gpus": [[g.index, g.uuid, g.minor] for g in self.gpus]})
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.socket_dir = provisioner_info.get("socket_dir")
        self.gpu_mode = provisioner_info.get("gpu_mode")
        self.gpus = [containers.AssignedGpu(*g) for g in provisioner_info.get("gpus") or []]
