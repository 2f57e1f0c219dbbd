"""The ``Engine`` over a Docker engine, through the docker SDK: with ``docker_exec`` (a terminal's shell exec'd into
a container), the only modules that import ``docker``.

Every SDK call runs in one of this engine's own bounded thread pools, never the event loop's default
executor: signals and state (``_control``) never queue behind a create or a probe (``_work``). A pull runs in
a thread of its own (``pulls.Pulls``: one per image, shared by every caller) for as long as bytes keep coming.
Each call answers within its budget or raises ``EngineUnreachable``.
Every docker, requests and urllib3 exception is translated in one place, :func:`translated`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest
from docker.types import Mount as DockerMount

from jupyter_gpuenv import host
from jupyter_gpuenv.containers import allocation, labels
from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.containers.claims import soft_claims
from jupyter_gpuenv.engines.base import ContainerState, KernelRequest, Placement
from jupyter_gpuenv.engines.docker import exec as docker_exec
from jupyter_gpuenv.environments.preflight import ImageFacts
from jupyter_gpuenv.errors import (
    DiskTooSmall,
    EngineRefused,
    EngineUnavailable,
    EngineUnreachable,
    ImageMissing,
    PullFailed,
)
from jupyter_gpuenv.parking.rules import released_in
from jupyter_gpuenv.pulls import progress as pulls
from jupyter_gpuenv.pulls import registry

# One line of Python run in an image (as the kernel's user, no network) to learn what a kernel needs of it.
PROBE = (
    "import sys; print('%d.%d' % sys.version_info[:2])\n"
    "try:\n import ipykernel; print('ipykernel')\nexcept Exception:\n print('no-ipykernel')"
)
PROBE_TIMEOUT = 60.0  # a first run of a large image reads it from disk
# what one start costs at most in engine calls: list (GPUs only), the user's namespace holder the first time
# (inspect, create, inspect, start), create and start, and once more if that holder went meanwhile
CREATE_CALLS = 12
HOLDER_RETRY = 60.0  # seconds before a namespace holder that could not be made is tried again
IMAGE_FACTS_TTL = 10.0  # seconds a present image's facts are reused (a burst of starts asks the engine once)
DISK_FACTOR = 2  # room a pull needs, in compressed sizes: the download, then the layers unpacked (at least as big)


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
        self,
        url: str | None,
        timeout: float,
        private_dir: str | None = None,
        log: logging.Logger | None = None,
        pull_stall_timeout: float = 120.0,
        pull_journal: bool = True,
    ) -> None:
        """``pull_journal``: read and keep the journal of pulls under way (a server's engine does; a reaper's must
        not, or it would take the notes of the pulls its dead server cut short before the next server reports them)."""
        self.where = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.url, self.timeout, self.private_dir = url, timeout, private_dir
        self.log = log or logging.getLogger(__name__)
        self._client_obj: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._control = ThreadPoolExecutor(4, thread_name_prefix="gpuenv-engine-control")
        self._work = ThreadPoolExecutor(8, thread_name_prefix="gpuenv-engine-work")
        self._janitor: threading.Thread | None = None
        self._leftovers: queue.Queue[str] = queue.Queue()
        self._thread_lock = threading.Lock()  # flock orders processes; this orders this server's threads
        self._probed: dict[str, tuple[str | None, bool]] = {}
        self._facts: dict[str, tuple[float, ImageFacts]] = {}  # image reference -> (when asked, its facts)
        self._holders: dict[str, str] = {}  # namespace holder name -> its container id, as last seen
        self._no_holder_until: dict[str, float] = {}  # holders that could not be made: not tried again until then
        self._holder_locks: dict[str, threading.Lock] = {}
        self._gpu_mode: str | None = None
        self._said: set[str] = set()  # conditions already logged once
        self.pull_stall_timeout = pull_stall_timeout
        # called on the loop with the container id once a kernel container is removed: its GPUs are free (parking
        # wakes a cell that waits for one)
        self.removal_listeners: list[Callable[[str], None]] = []
        self._pulls = pulls.Pulls(self._pull, self._pull_journal() if pull_journal else None)

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
        for pool in (self._control, self._work):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- images ----------------------------------------------------------------------------------------
    async def image_facts(self, image: str, python: str | None = None, env: dict[str, str] | None = None) -> ImageFacts:
        known = self._known_facts(image, python, env)
        if known is not None:  # no thread, no engine call: a burst of starts does not queue behind its creates
            return known
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
            self._facts.pop(image, None)
            return ImageFacts(present=False)
        config = attrs.get("Config") or {}
        image_env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        cuda = image_env.get("CUDA_VERSION") or (config.get("Labels") or {}).get("com.nvidia.cuda.version")
        facts = ImageFacts(True, attrs.get("Id"), cuda)
        self._facts[image] = (time.monotonic(), facts)
        if python is None:
            return facts
        version, has_ipykernel = self._probe(c, attrs["Id"], image, python, dict(env or {}))
        return dataclasses.replace(facts, python_version=version, has_ipykernel=has_ipykernel)

    def _known_facts(self, image: str, python: str | None, env: dict[str, str] | None) -> ImageFacts | None:
        """The facts of a present image asked less than IMAGE_FACTS_TTL ago, probe included; else None.

        A missing image is never remembered (a pull may bring it at any moment); one removed meanwhile is
        noticed when its container cannot be created (``ImageMissing``, and it is asked again).
        """
        seen = self._facts.get(image)
        if seen is None or time.monotonic() - seen[0] >= IMAGE_FACTS_TTL:
            return None
        facts = seen[1]
        if python is None:
            return facts
        probed = self._probed.get(self._probe_key(facts.id or "", python, dict(env or {})))
        if probed is None:
            return None
        return dataclasses.replace(facts, python_version=probed[0], has_ipykernel=probed[1])

    @staticmethod
    def _probe_key(image_id: str, python: str, env: dict[str, str]) -> str:
        return f"{image_id}:{python}:{sorted(env.items())}"

    def _probe(self, c, image_id: str, image: str, python: str, env: dict[str, str]) -> tuple[str | None, bool]:
        """Run the image's Python once (cached by image id): its version, and whether it imports ipykernel.

        The environment's own variables go in too: an image whose ipykernel is on a PYTHONPATH set there has it.
        The probe container is labelled as ours and removed, later if the engine stalls meanwhile.
        """
        key = self._probe_key(image_id, python, env)
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
                    labels=labels.probe_labels(user.uid, host.this_server().host, os.getpid()),
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

    # -- pulls ---------------------------------------------------------------------------------------------
    def _pull_journal(self) -> pulls.PullJournal | None:
        """Pulls under way, noted in this user's private folder: a restarted server reports one it cut short."""
        private = self.private_dir
        if private is None:
            return None

        def make(path: str) -> None:
            host.private_folder(private)  # ours, not another user's, before anything goes inside
            host.private_folder(path)

        return pulls.PullJournal(os.path.join(private, "pulls"), make)

    def pull_progress(self, image: str) -> pulls.PullProgress | None:
        return self._pulls.progress(image)

    def pull_failure(self, image: str) -> pulls.PullProgress | None:
        return self._pulls.failure(image)

    async def pull(self, image: str, on_progress: Callable[[pulls.PullProgress], None] | None = None) -> None:
        await pulls.wait(self._pulls.start(image), on_progress)

    def cancel_pulls(self) -> None:
        """The server stops: kernel starts waiting for a pull fail now, and the engine drops those pulls."""
        self._pulls.cancel_all()

    def _pull(self, pull: pulls.SharedPull) -> None:
        """One pull, in its own thread: room first, then the engine's event stream folded into ``pull.tally``."""
        image, stall = pull.image, self.pull_stall_timeout
        c = self._client()
        self._check_room(c, pull)
        repository, tag = image.rsplit("@", 1) if "@" in image else image.rsplit(":", 1)
        auth = self._credentials(lambda: docker.auth.get_config_header(c.api, pulls.registry_of(image)))
        with translated(self.where, f"pull {image}"):
            try:  # the SDK's pull() reads without a timeout and cannot be hung up: its parts, with both
                response = c.api._post(
                    c.api._url("/images/create"),
                    params={"fromImage": repository, "tag": tag},
                    headers={"X-Registry-Auth": auth} if auth else {},
                    stream=True,
                    timeout=stall,
                )
                c.api._raise_for_status(response)
                pull.tally.mark_active(time.monotonic())  # the registry gave the manifest: stalls count from here
            except APIError as exc:
                raise pulls.failure(image, str(exc.explanation or exc)) from None
            except requests.exceptions.ReadTimeout:  # the engine still waits for the registry's manifest
                raise pulls.stalled(image, stall, pull.tally.progress(time.monotonic())) from None
            pull.on_cancel = lambda: _hang_up(response)
            try:
                if pull.cancelled.is_set():  # cancelled before it could be hung up
                    return
                for event in c.api._stream_helper(response, decode=True):
                    if pull.cancelled.is_set():
                        return
                    if "error" in event:
                        raise pulls.failure(image, str(event["error"]))
                    now = time.monotonic()
                    pull.tally.feed(event, now)
                    if pull.tally.idle_for(now) >= stall:
                        raise pulls.stalled(image, stall, pull.tally.progress(now))
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError):
                if pull.cancelled.is_set():
                    return
                now = time.monotonic()
                if pull.tally.idle_for(now) >= stall - 1:  # the read timed out: nothing came for that long
                    raise pulls.stalled(image, stall, pull.tally.progress(now)) from None
                raise
            finally:
                _hang_up(response)  # the engine cancels a pull whose client is gone
            try:
                c.api.inspect_image(image)
            except ImageNotFound:
                raise PullFailed(f"the Docker engine ended the pull of {image} without the image: try again") from None
        self.log.info("gpuenv: pulled %s", image)

    def _check_room(self, c: docker.DockerClient, pull: pulls.SharedPull) -> None:
        """Layer sizes from the registry, when it tells them; DiskTooSmall when the engine's disk cannot hold them."""
        with translated(self.where, "ask the engine about itself"):
            info, version = c.info(), c.version()
        registry_host = registry.parse(pull.image).host
        credentials = self._credentials(
            lambda: docker.auth.load_config().resolve_authconfig(pulls.registry_of(pull.image))
        )
        sizes = registry.layer_sizes(
            pull.image,
            (str(version.get("Os") or "linux"), str(version.get("Arch") or "amd64")),
            credentials=credentials,
            allow_http=_insecure(info, registry_host),
            timeout=self.timeout,
        )
        if not sizes:
            return
        pull.tally.expect_layers(sizes)
        free = self._free_bytes(info.get("DockerRootDir"))
        download = sum(sizes.values())
        if free is not None and free < DISK_FACTOR * download:
            raise DiskTooSmall(
                f"{pull.image} needs about {pulls.size(DISK_FACTOR * download)} on the Docker engine's disk "
                f"({pulls.size(download)} to download, then unpacked) and {info.get('DockerRootDir')} has "
                f"{pulls.size(free)} free: free space there (docker system prune removes unused images), then try again"
            )

    def _credentials(self, lookup: Callable[[], Any]) -> Any:
        """The docker CLI's credentials for a registry (config.json, credential helpers); None if they fail."""
        try:
            return lookup()
        except Exception as exc:  # noqa: BLE001 - a broken credential helper: pull as anonymous, and say why
            self.log.warning("gpuenv: the docker credentials could not be read, pulling without: %s", exc)
            return None

    def _free_bytes(self, root: str | None) -> int | None:
        """Free bytes where the engine keeps images, when it is on this machine; None when that cannot be seen."""
        if not root or not self.where.startswith("unix://"):
            return None
        try:
            st = os.statvfs(root)
        except OSError:  # an engine in a VM (Docker Desktop), or a folder this user may not look at
            return None
        return st.f_bavail * st.f_frsize

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
        """Create and start; a kernel that joins its user's namespace holder tries again if the holder went
        meanwhile, and gets a namespace of its own when no holder stays up."""
        joins = containers.joins_holder(req.environment, req.shared_network_namespace)
        for attempt in range(3 if joins else 1):
            holder = self._network_holder(c, req) if joins and attempt < 2 else None
            try:
                container_id, placement = self._create_kernel(c, req, holder)
            except BaseException:  # refused (no free GPU) or failed: a holder made for it does not stay for nothing
                if holder is not None:
                    with suppress(DockerException, requests.exceptions.RequestException):
                        self._remove_holder_if_unused(c, holder)
                raise
            try:
                c.api.start(container_id)
            except APIError:
                # the holder went between our look and this start (removed as unused by another of this user's
                # servers, or killed): the engine says so in several ways, so ask whether it still runs
                try:
                    went = holder is not None and not self._state(c, holder).running
                except BaseException:
                    self._remove_later(container_id)
                    raise
                if holder is None or not went:
                    self._remove_later(container_id)
                    raise
                self._holder_went(holder, attempt, req)
                with suppress(NotFound):
                    c.api.remove_container(container_id, force=True)
                continue
            except BaseException:
                self._remove_later(container_id)
                raise
            return placement
        raise AssertionError("unreachable: the last attempt joins no holder")

    def _create_kernel(self, c: docker.DockerClient, req: KernelRequest, holder: str | None) -> tuple[str, Placement]:
        env = req.environment
        # only a GPU choice needs the lock: list, choose and create must not interleave with another start's
        with self._lease_lock() if env.gpus.wants_gpus else nullcontext():
            gpus: list[containers.AssignedGpu] = []
            if env.gpus.wants_gpus:
                held = req.held if req.held is not None else self._holdings(c, req.kernel_id)
                chosen = allocation.choose(env.gpus, req.inventory, held, keep=req.keep_gpus or None)
                # every chosen GPU has a uuid (choose() skips the others); the test says so to the type checker
                gpus = [containers.AssignedGpu(g.index, g.uuid, g.minor_number) for g in chosen if g.uuid]
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
                terminal=req.terminal,
                network_holder=holder,
                sources=req.sources,
                command=req.command,
            )
            spec = containers.spec(env, facts)
            try:
                container_id = self._create(c, spec, req.kernel_id)
            except ImageNotFound:
                self._facts.pop(env.image, None)
                raise ImageMissing(
                    f"image {env.image} was removed from the Docker engine a moment ago: start the kernel again"
                ) from None
        return container_id, Placement(container_id, mode, tuple(gpus))

    def _holdings(self, c: docker.DockerClient, kernel_id: str) -> allocation.Holdings:
        """What this user's running kernels hold, as their labels say, less what parked kernels released."""
        kernels = self._kernels(c)
        released = (released_in(self.private_dir) if self.private_dir else set()) | soft_claims(
            kernels, self.private_dir
        )
        return labels.holdings(kernels, excluding=kernel_id, released=released)

    # -- the user's network namespace holder ------------------------------------------------------------
    def _network_holder(self, c: docker.DockerClient, req: KernelRequest) -> str | None:
        """The id of the user's running namespace holder, made if missing; None: the kernel gets its own."""
        spec = containers.network_holder(req.environment, req.user, req.server.host, req.server.pid)
        with self._client_lock:
            lock = self._holder_locks.setdefault(spec.name, threading.Lock())
        with lock:  # one user's first starts wait for one holder; other users' starts do not wait
            if time.monotonic() < self._no_holder_until.get(spec.name, 0):
                return None
            if spec.name in self._holders:
                return self._holders[spec.name]
            try:
                holder_id = self._ensure_holder(c, spec)
            except (APIError, EngineRefused) as exc:
                self._no_holder_until[spec.name] = time.monotonic() + HOLDER_RETRY
                self._say_once(
                    spec.name,
                    "gpuenv: %s's kernels each get a network namespace of their own (a slower start): %s",
                    req.user.name,
                    getattr(exc, "explanation", None) or exc,
                )
                return None
            self._holders[spec.name] = holder_id
            return holder_id

    def _ensure_holder(self, c: docker.DockerClient, spec: containers.ContainerSpec) -> str:
        for _ in range(3):
            try:
                attrs = c.api.inspect_container(spec.name)
            except NotFound:
                try:
                    self._create_once(c, spec)
                except APIError as exc:
                    if exc.status_code != 409:  # 409: another server of this user made it just now
                        raise
                continue
            found = (attrs.get("Config") or {}).get("Labels") or {}
            mine = all(found.get(k) == spec.labels[k] for k in (labels.NETNS, labels.UID, labels.USER))
            if not mine or (attrs.get("HostConfig") or {}).get("NetworkMode") != "none":
                raise EngineRefused(
                    f"a container named {spec.name} is in the way and is not this user's network namespace "
                    "holder (no network): remove it"
                )
            state = attrs.get("State") or {}
            if state.get("Running"):
                return attrs["Id"]
            if state.get("Status") == "created":  # another start made it and is starting it: no harm in both
                c.api.start(attrs["Id"])
                return attrs["Id"]
            with suppress(NotFound):  # it ended (killed from outside): a new one
                c.api.remove_container(attrs["Id"], force=True)
        raise EngineRefused(f"the network namespace holder {spec.name} could not be made to run")

    def _holder_went(self, holder_id: str, attempt: int, req: KernelRequest) -> None:
        """A kernel could not join ``holder_id`` (removed or stopped since): forget it; after two, do without."""
        with self._client_lock:
            for name, known in list(self._holders.items()):
                if known == holder_id:
                    del self._holders[name]
                    if attempt >= 1:  # made again and still not joinable: its image's Python does not stay up
                        self._no_holder_until[name] = time.monotonic() + HOLDER_RETRY
                        self._say_once(
                            name,
                            "gpuenv: the network namespace holder of %s does not stay up (%s, %s): kernels get "
                            "a namespace of their own",
                            req.user.name,
                            req.environment.image,
                            req.environment.python,
                        )

    def _say_once(self, condition: str, message: str, *args: Any) -> None:
        if condition not in self._said:
            self._said.add(condition)
            self.log.warning(message, *args)

    def _create(self, c: docker.DockerClient, spec: containers.ContainerSpec, kernel_id: str) -> str:
        """Create the container; if that fails half-way, it is looked up by name and removed."""
        try:
            return self._create_once(c, spec)
        except APIError as exc:
            if exc.status_code != 409:
                raise
            # the name is taken: by this same kernel's container (same kernel id, same user) from a restart that
            # ran at the same time (the newest restart wins), else by something that is not ours, left alone
            try:
                existing = (c.api.inspect_container(spec.name).get("Config") or {}).get("Labels") or {}
            except NotFound:
                existing = {labels.KERNEL: kernel_id, labels.UID: spec.labels.get(labels.UID)}
            if existing.get(labels.KERNEL) != kernel_id or existing.get(labels.UID) != spec.labels.get(labels.UID):
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
            read_only=spec.read_only,
            pids_limit=spec.pids_limit,
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
            with host.locked_file(os.path.join(host.private_folder(self.private_dir), "allocation.lock")):
                yield

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
        return DockerEngine._state_of(state)

    @staticmethod
    def _state_of(state: dict) -> ContainerState:
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
            last = await self._call(
                self._control, self.timeout * 2 + 1, "remove the kernel container", self._remove, container_id
            )
        except EngineUnavailable:
            self._remove_later(container_id)
            raise
        for listener in list(self.removal_listeners):
            listener(container_id)
        return last

    def _remove(self, c: docker.DockerClient, container_id: str) -> ContainerState | None:
        try:  # read before it is gone: why did it end (OOMKilled)? which namespace did it join?
            attrs = c.api.inspect_container(container_id)
        except NotFound:
            return None
        last = self._state_of(attrs["State"])
        with suppress(NotFound):
            c.api.remove_container(container_id, force=True)
        joined = (attrs.get("HostConfig") or {}).get("NetworkMode") or ""
        if joined.startswith("container:"):
            try:
                self._remove_holder_if_unused(c, joined[len("container:") :])
            except (DockerException, requests.exceptions.RequestException) as exc:  # the sweep removes it later
                self.log.warning("gpuenv: the network namespace holder of %s stays for now: %s", container_id[:12], exc)
        return last

    def _remove_holder_if_unused(self, c: docker.DockerClient, holder_id: str) -> None:
        """A user's namespace holder goes with the last kernel that joined it: nothing outlives their kernels.

        A start that was about to join it meanwhile finds it gone and makes another (``_start_kernel``)."""
        try:
            found = (c.api.inspect_container(holder_id).get("Config") or {}).get("Labels") or {}
        except NotFound:
            return
        if labels.NETNS not in found:
            return  # joined something that is not a holder of ours: not ours to remove
        joined = {(s.get("HostConfig") or {}).get("NetworkMode") for s in c.api.containers(all=True)}
        if f"container:{holder_id}" in joined:
            return
        with suppress(NotFound):
            c.api.remove_container(holder_id, force=True)
        with self._client_lock:
            self._holders = {n: i for n, i in self._holders.items() if i != holder_id}

    async def remove_orphans(self, is_orphan: Callable[[labels.KernelContainer], bool]) -> list[labels.KernelContainer]:
        """Remove the kernel containers ``is_orphan`` names, probes left behind by this user, and the network
        namespace holders ``is_orphan`` names that no container joins any more."""
        return await self._call(self._work, self.timeout * 10, "remove orphans", self._remove_orphans, is_orphan)

    async def remove_unused_holders(self, is_orphan: Callable[[labels.KernelContainer], bool]) -> list[str]:
        """Remove the namespace holders ``is_orphan`` names (read as containers: whose, made by which server)
        that no container joins; the names of those removed."""
        return await self._call(
            self._work, self.timeout * 4, "remove unused namespace holders", self._remove_unused_holders, is_orphan
        )

    def _remove_unused_holders(self, c: docker.DockerClient, is_orphan) -> list[str]:
        holders = [
            labels.read(h["Id"], (h.get("Names") or [""])[0], h.get("Labels") or {}, h.get("State") == "running")
            for h in c.api.containers(all=True, filters={"label": labels.NETNS})
        ]
        candidates = [h for h in holders if is_orphan(h)]
        if not candidates:
            return []
        # every container on the engine, any user's, running or not: one that joins a holder keeps it
        joined = {(s.get("HostConfig") or {}).get("NetworkMode") for s in c.api.containers(all=True)}
        removed = []
        for h in candidates:
            if f"container:{h.id}" in joined:
                continue
            with suppress(NotFound):
                c.api.remove_container(h.id, force=True)
            removed.append(h.name)
            with self._client_lock:
                self._holders = {n: i for n, i in self._holders.items() if i != h.id}
        return removed

    def _remove_orphans(self, c: docker.DockerClient, is_orphan) -> list[labels.KernelContainer]:
        removed = [k for k in self._kernels(c) if is_orphan(k)]
        uid = str(os.getuid())
        probes = c.api.containers(all=True, filters={"label": [labels.PROBE, f"{labels.UID}={uid}"]})
        probes = [p for p in probes if is_orphan(labels.read(p["Id"], "", p.get("Labels") or {}, False))]
        for name_or_id in [k.id for k in removed] + [p["Id"] for p in probes]:
            with suppress(NotFound):
                c.api.remove_container(name_or_id, force=True)
        self._remove_unused_holders(c, is_orphan)
        return removed

    # -- terminals -------------------------------------------------------------------------------------
    async def exec_shell(self, container_id: str, user: str) -> docker_exec.DockerShell:
        marker = uuid.uuid4().hex
        exec_id, sock, early = await self._call(
            self._work, self.timeout * 3 + 1, "open a shell", docker_exec.open_shell, container_id, user, marker
        )
        try:  # the engine's hijacked connection, now a plain stream socket: the event loop reads it, no thread
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        except BaseException:
            sock.close()
            raise
        control = functools.partial(self._call, self._control)
        return docker_exec.DockerShell(
            control, self.timeout, self.log, container_id, user, marker, exec_id, reader, writer, early
        )


def _hang_up(response: requests.Response) -> None:
    """Close a streaming response even while another thread is blocked reading it (a shutdown wakes the read)."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with suppress(Exception):
        response.close()


def _insecure(info: dict, host_port: str) -> bool:
    """Whether the engine would pull from this registry over plain http (its insecure registries; 127.0.0.0/8)."""
    index = ((info.get("RegistryConfig") or {}).get("IndexConfigs") or {}).get(host_port) or {}
    if index.get("Secure") is False:
        return True
    hostname = host_port.rsplit(":", 1)[0] if host_port.count(":") == 1 else host_port
    if hostname == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    cidrs = (info.get("RegistryConfig") or {}).get("InsecureRegistryCIDRs") or ["127.0.0.0/8"]
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
