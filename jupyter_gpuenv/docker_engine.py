"""The ``Engine`` over a Docker engine, through the docker SDK: the only module that imports ``docker``.

Every SDK call runs in one of this engine's own bounded thread pools, never the event loop's default
executor: signals and state (``_control``) never queue behind a create or a probe (``_work``), and none
of them behind a pull (``_pulls``). Each call answers within its budget or raises ``EngineUnreachable``.
Every docker, requests and urllib3 exception is translated in one place, :func:`translated`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest
from docker.types import Mount as DockerMount

from . import allocation, containers, host, labels
from .engine import ContainerState, ImageFacts, KernelRequest, Placement
from .errors import EngineRefused, EngineUnavailable, EngineUnreachable, PullFailed

# One line of Python run in an image (as the kernel's user, no network) to learn what a kernel needs of it.
PROBE = (
    "import sys; print('%d.%d' % sys.version_info[:2])\n"
    "try:\n import ipykernel; print('ipykernel')\nexcept Exception:\n print('no-ipykernel')"
)
PROBE_TIMEOUT = 60.0  # a first run of a large image reads it from disk
CREATE_CALLS = 3  # what one start costs at most in engine calls under the lease lock: list, create, start


@contextmanager
def translated(where: str, doing: str) -> Iterator[None]:
    """The one translation point: SDK and transport errors become ``errors.EngineUnavailable`` classes."""
    try:
        yield
    except EngineUnavailable:
        raise
    except APIError as exc:
        text = str(exc.explanation or exc)
        if "could not select device driver" in text:
            raise EngineRefused(
                "the Docker engine has no NVIDIA Container Toolkit, so it cannot attach GPUs with gpu_mode "
                "'toolkit': install the toolkit, or use gpu_mode 'auto' or 'devices'"
            ) from None
        raise EngineRefused(f"the Docker engine refused to {doing}: {text}") from None
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise EngineUnreachable(f"the Docker engine at {where} did not answer in time (to {doing})") from None
    except (DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise EngineUnreachable(
            f"Docker engine not reachable at {where} — is dockerd running, and may this user use its socket "
            f"(the docker group)? ({exc.__class__.__name__})"
        ) from None


class DockerEngine:
    """Kernel containers on one Docker engine. One instance per server, shared by all its kernels."""

    def __init__(
        self, url: str | None, timeout: float, private_dir: str | None = None, log: logging.Logger | None = None
    ) -> None:
        self.where = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.url, self.timeout, self.private_dir = url, timeout, private_dir
        self.log = log or logging.getLogger(__name__)
        self._client_obj: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._control = ThreadPoolExecutor(4, thread_name_prefix="gpuenv-engine-control")
        self._work = ThreadPoolExecutor(8, thread_name_prefix="gpuenv-engine-work")
        self._pulls = ThreadPoolExecutor(2, thread_name_prefix="gpuenv-engine-pull")
        self._janitor: threading.Thread | None = None
        self._leftovers: queue.Queue[str] = queue.Queue()
        self._thread_lock = threading.Lock()  # flock orders processes; this orders this server's threads
        self._probed: dict[str, tuple[str | None, bool]] = {}
        self._gpu_mode: str | None = None
        self._progress: dict[str, str] = {}

    # -- plumbing ----------------------------------------------------------------------------------------
    def _client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client_obj is None:
                with translated(self.where, "connect"):
                    kwargs = {"timeout": self.timeout, "max_pool_size": 16}
                    self._client_obj = (
                        docker.DockerClient(base_url=self.url, **kwargs) if self.url else docker.from_env(**kwargs)
                    )
            return self._client_obj

    async def _call(self, pool: ThreadPoolExecutor, budget: float, doing: str, fn: Callable, *args: Any) -> Any:
        def run():
            with translated(self.where, doing):
                return fn(self._client(), *args)

        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool, run), budget)
        except asyncio.TimeoutError:
            raise EngineUnreachable(
                f"the Docker engine at {self.where} did not answer within {budget:.0f} s (to {doing}): is it "
                "overloaded or stopped?"
            ) from None

    def _remove_later(self, name_or_id: str) -> None:
        """Remove a container we may have left behind, retrying while the engine does not answer."""
        self._leftovers.put(name_or_id)
        with self._client_lock:
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._sweep, name="gpuenv-engine-janitor", daemon=True)
                self._janitor.start()

    def _sweep(self) -> None:
        """The janitor: a daemon thread, so a server that exits never waits for it."""
        while True:
            name_or_id = self._leftovers.get()
            for delay in (0, 1, 2, 5, 10, 20, 30, 60, 120):
                time.sleep(delay)
                try:
                    with translated(self.where, "remove a container"):
                        self._client().api.remove_container(name_or_id, force=True)
                    break
                except NotFound:
                    break
                except EngineUnavailable as exc:
                    last = exc
            else:
                self.log.warning("gpuenv: could not remove container %s (%s); remove it by hand", name_or_id, last)

    def close(self) -> None:
        for pool in (self._control, self._work, self._pulls):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- images ----------------------------------------------------------------------------------------
    async def image_facts(self, image: str, python: str | None = None, env: dict[str, str] | None = None) -> ImageFacts:
        return await self._call(
            self._work,
            self.timeout * 2 + PROBE_TIMEOUT,
            f"inspect image {image}",
            self._image_facts,
            image,
            python,
            env,
        )

    def _image_facts(self, c: docker.DockerClient, image: str, python: str | None, env: dict[str, str] | None):
        try:
            attrs = c.api.inspect_image(image)
        except ImageNotFound:
            return ImageFacts(present=False)
        config = attrs.get("Config") or {}
        image_env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        cuda = image_env.get("CUDA_VERSION") or (config.get("Labels") or {}).get("com.nvidia.cuda.version")
        version, has_ipykernel = None, None
        if python is not None:
            version, has_ipykernel = self._probe(c, attrs["Id"], image, python, dict(env or {}))
        return ImageFacts(True, attrs.get("Id"), cuda, version, has_ipykernel)

    def _probe(self, c, image_id: str, image: str, python: str, env: dict[str, str]) -> tuple[str | None, bool]:
        """Run the image's Python once (cached by image id): its version, and whether it imports ipykernel.

        The environment's own variables go in too: an image whose ipykernel is on a PYTHONPATH set there has it.
        The probe container is labelled as ours and removed, later if the engine stalls meanwhile.
        """
        key = f"{image_id}:{python}:{sorted(env.items())}"
        if key not in self._probed:
            name = f"gpuenv-probe-{uuid.uuid4().hex[:12]}"
            user = host.current_user()
            uid, gid = (user.uid, user.gid) if user.uid != 0 else (65534, 65534)  # never as root: nobody
            try:
                c.api.create_container(
                    image,
                    [python, "-c", PROBE],
                    name=name,
                    user=f"{uid}:{gid}",
                    environment={**env, "HOME": "/tmp"},
                    labels=labels.probe_labels(user.uid, host.this_server().host),
                    host_config=c.api.create_host_config(network_mode="none", cap_drop=["ALL"]),
                )
                c.api.start(name)
                status = c.api.wait(name, timeout=PROBE_TIMEOUT).get("StatusCode")
                out = c.api.logs(name, stdout=True, stderr=False).decode(errors="replace").split()
                c.api.remove_container(name, force=True)
            except BaseException:
                self._remove_later(name)
                raise
            if status == 0 and len(out) == 2:
                self._probed[key] = (out[0], out[1] == "ipykernel")
            else:  # no such interpreter, or it does not run: no version, so no runtime can stand in
                self._probed[key] = (None, False)
        return self._probed[key]

    def pull_progress(self, image: str) -> str | None:
        return self._progress.get(image)

    async def pull(self, image: str, on_progress: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()

        def report(line: str) -> None:
            self._progress[image] = line
            loop.call_soon_threadsafe(on_progress, line)

        def run() -> None:
            repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            self._progress[image] = "starting"
            try:
                with translated(self.where, f"pull {image}"):
                    for event in self._client().api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                        if "error" in event:
                            raise PullFailed(f"pulling {image} failed: {event['error']}")
                        report(" ".join(str(event.get(k)) for k in ("id", "status", "progress") if event.get(k)))
            except EngineRefused as exc:
                raise PullFailed(
                    f"image {image} is not here and pulling it failed ({exc}): pull or build it on the host "
                    "(docker pull / docker build), then start the kernel again"
                ) from None
            finally:
                self._progress.pop(image, None)

        await loop.run_in_executor(self._pulls, run)

    # -- kernels ---------------------------------------------------------------------------------------
    async def kernels(self) -> list[labels.KernelContainer]:
        return await self._call(self._work, self.timeout + 1, "list kernel containers", self._kernels)

    @staticmethod
    def _kernels(c: docker.DockerClient) -> list[labels.KernelContainer]:
        found = c.api.containers(all=True, filters={"label": labels.KERNEL})
        return [
            labels.read(
                s["Id"], (s.get("Names") or [""])[0], s.get("Labels") or {}, s.get("State") not in ("exited", "dead")
            )
            for s in found
        ]

    async def start_kernel(self, request: KernelRequest) -> Placement:
        budget = self.timeout * (CREATE_CALLS + 2) + 1
        return await self._call(self._work, budget, "start the kernel container", self._start_kernel, request)

    def _start_kernel(self, c: docker.DockerClient, req: KernelRequest) -> Placement:
        env = req.environment
        with self._lease_lock():
            gpus: list[containers.AssignedGpu] = []
            if env.gpus.wants_gpus:
                held = req.held if req.held is not None else labels.holdings(self._kernels(c), excluding=req.kernel_id)
                chosen = allocation.choose(env.gpus, req.inventory, held, keep=req.keep_gpus or None)
                gpus = [containers.AssignedGpu(g.index, g.uuid, g.minor_number) for g in chosen]
            mode = "none" if not gpus else (self._engine_gpu_mode(c) if env.gpu_mode == "auto" else env.gpu_mode)
            facts = containers.LaunchFacts(
                kernel_id=req.kernel_id,
                user=req.user,
                server_host=req.server.host,
                server_pid=req.server.pid,
                root_dir=req.root_dir,
                cwd=req.cwd,
                socket_dir=req.socket_dir,
                connection_file=req.connection_file,
                gpu_mode=mode,
                gpus=gpus,
                exclusive=env.gpus.kind == "exclusive",
                driver_mounts=host.driver_mounts() if mode == "devices" else [],
                device_nodes=host.device_nodes() if mode == "devices" else [],
                runtime_dir=req.runtime_dir,
                server_env=req.server_env,
                extra_labels=req.labels,
                user_volume=req.user_volume,
            )
            spec = containers.spec(env, facts)
            container_id = self._create(c, spec, req.kernel_id)
        try:
            c.api.start(container_id)
        except BaseException:
            self._remove_later(container_id)
            raise
        return Placement(container_id, mode, tuple(gpus))

    def _create(self, c: docker.DockerClient, spec: containers.ContainerSpec, kernel_id: str) -> str:
        """Create the container; if that fails half-way, it is looked up by name and removed."""
        try:
            return self._create_once(c, spec)
        except APIError as exc:
            if exc.status_code != 409:
                raise
            # the name is taken: by this same kernel's container from a restart that ran at the same time
            # (the newest restart wins), else by something that is not ours, which we leave alone
            try:
                existing = c.api.inspect_container(spec.name)
            except NotFound:
                existing = {"Config": {"Labels": {labels.KERNEL: kernel_id}}}
            if (existing.get("Config") or {}).get("Labels", {}).get(labels.KERNEL) != kernel_id:
                raise
            c.api.remove_container(spec.name, force=True)
            return self._create_once(c, spec)
        except BaseException:
            self._remove_later(spec.name)
            raise

    @staticmethod
    def _create_once(c: docker.DockerClient, spec: containers.ContainerSpec) -> str:
        host_config = c.api.create_host_config(
            mounts=[DockerMount(m.target, m.source, type=m.kind, read_only=m.read_only) for m in spec.mounts],
            network_mode=spec.network_mode,
            init=spec.init,
            shm_size=spec.shm_size,
            security_opt=spec.security_opt,
            cap_drop=spec.cap_drop,
            mem_limit=spec.memory,
            nano_cpus=spec.nano_cpus,
            device_requests=(
                [DeviceRequest(device_ids=spec.gpu_device_ids, capabilities=[["gpu"]])]
                if spec.gpu_device_ids is not None
                else None
            ),
            devices=[f"{n}:{n}:rwm" for n in spec.devices] or None,
        )
        created = c.api.create_container(
            spec.image,
            spec.command,
            name=spec.name,
            user=spec.user,
            working_dir=spec.working_dir,
            environment=spec.environment,
            labels=spec.labels,
            host_config=host_config,
            detach=True,
            stdin_open=False,
            tty=False,
        )
        return created["Id"]

    def _engine_gpu_mode(self, c: docker.DockerClient) -> str:
        """'toolkit' when the engine can honour --gpus (NVIDIA runtime or CDI), else 'devices'."""
        if self._gpu_mode is None:
            info = c.info()
            cdi = [os.path.join(d, f"nvidia.{ext}") for d in info.get("CDISpecDirs") or [] for ext in ("yaml", "json")]
            toolkit = "nvidia" in (info.get("Runtimes") or {}) or any(os.path.exists(p) for p in cdi)
            self._gpu_mode = "toolkit" if toolkit else "devices"
        return self._gpu_mode

    @contextmanager
    def _lease_lock(self) -> Iterator[None]:
        """One GPU choice at a time among this user's servers: list, choose and create happen inside.

        The lock file lives in the user's private folder, never in a world-writable one; on a host shared by
        several people, the broker decides for everyone instead.
        """
        with self._thread_lock:
            if self.private_dir is None:
                yield
                return
            lock_path = os.path.join(host.private_folder(self.private_dir), "allocation.lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    async def state(self, container_id: str) -> ContainerState:
        return await self._call(
            self._control, self.timeout + 1, "inspect the kernel container", self._state, container_id
        )

    @staticmethod
    def _state(c: docker.DockerClient, container_id: str) -> ContainerState:
        try:
            state = c.api.inspect_container(container_id)["State"]
        except NotFound:
            return ContainerState(running=False, gone=True)
        return ContainerState(
            running=bool(state.get("Running")),
            exit_code=None if state.get("Running") else int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
        )

    async def signal(self, container_id: str, signum: int) -> None:
        await self._call(self._control, self.timeout + 1, "signal the kernel", self._signal, container_id, signum)

    @staticmethod
    def _signal(c: docker.DockerClient, container_id: str, signum: int) -> None:
        try:
            c.api.kill(container_id, signal=int(signum))
        except NotFound:
            return
        except APIError as exc:
            if "is not running" not in str(exc):
                raise

    async def remove(self, container_id: str) -> ContainerState | None:
        try:
            return await self._call(
                self._control, self.timeout * 2 + 1, "remove the kernel container", self._remove, container_id
            )
        except EngineUnavailable:
            self._remove_later(container_id)
            raise

    def _remove(self, c: docker.DockerClient, container_id: str) -> ContainerState | None:
        last = self._state(c, container_id)  # read before it is gone: why did it end (OOMKilled)?
        if last.gone:
            return None
        with suppress(NotFound):
            c.api.remove_container(container_id, force=True)
        return last

    async def remove_orphans(self, is_orphan: Callable[[labels.KernelContainer], bool]) -> list[labels.KernelContainer]:
        """Remove the kernel containers ``is_orphan`` names, and probes left behind by this user."""
        return await self._call(self._work, self.timeout * 10, "remove orphans", self._remove_orphans, is_orphan)

    def _remove_orphans(self, c: docker.DockerClient, is_orphan) -> list[labels.KernelContainer]:
        removed = [k for k in self._kernels(c) if is_orphan(k)]
        uid = str(os.getuid())
        probes = c.api.containers(
            all=True, filters={"label": [labels.PROBE, f"{labels.UID}={uid}"], "status": ["created", "exited", "dead"]}
        )
        for name_or_id in [k.id for k in removed] + [p["Id"] for p in probes]:
            with suppress(NotFound):
                c.api.remove_container(name_or_id, force=True)
        return removed
