"""The Docker engine, through the docker SDK. Every function here blocks: callers run them in a thread.

Each failure a user can meet becomes an ``EngineError`` whose message says what to do.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from .containers import L_EXCLUSIVE, L_GPUS, L_KERNEL

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine is unreachable or refused; the message is meant for the notebook user."""


@dataclass
class ImageInfo:
    present: bool
    id: str | None = None
    cuda_version: str | None = None


def client(url: str | None, timeout: float) -> docker.DockerClient:
    """A client that answers within ``timeout`` seconds or raises EngineError (never hangs)."""
    where = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        c = docker.DockerClient(base_url=where, timeout=timeout) if url else docker.from_env(timeout=timeout)
        c.ping()
        return c
    except (DockerException, OSError) as exc:
        raise EngineError(f"Docker engine not reachable at {where} — is dockerd running, and may this user "
                          f"use its socket (the docker group)? ({exc.__class__.__name__})") from exc


def engine_gpu_mode(c: docker.DockerClient) -> str:
    """'toolkit' when the engine can honour --gpus (NVIDIA runtime or CDI), else 'devices'."""
    info = c.info()
    runtimes = info.get("Runtimes") or {}
    if "nvidia" in runtimes or info.get("CDISpecDirs") and any(
            os.path.exists(os.path.join(d, "nvidia.yaml")) or os.path.exists(os.path.join(d, "nvidia.json"))
            for d in info.get("CDISpecDirs") or []):
        return "toolkit"
    return "devices"


def image_info(c: docker.DockerClient, image: str) -> ImageInfo:
    try:
        attrs = c.images.get(image).attrs
    except ImageNotFound:
        return ImageInfo(present=False)
    except APIError as exc:
        raise EngineError(f"Docker could not inspect image {image}: {exc.explanation or exc}") from exc
    config = attrs.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    labels = config.get("Labels") or {}
    cuda = env.get("CUDA_VERSION") or labels.get("com.nvidia.cuda.version")
    return ImageInfo(present=True, id=attrs.get("Id"), cuda_version=cuda)


_pulls: dict[str, str] = {}  # image -> last progress line, while a pull runs
_pulls_lock = threading.Lock()


def pull_progress(image: str) -> str | None:
    with _pulls_lock:
        return _pulls.get(image)


def pull(c: docker.DockerClient, image: str, on_progress: Callable[[str], None]) -> None:
    """Pull an image, reporting progress lines; EngineError when the registry cannot give it."""
    repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    with _pulls_lock:
        _pulls[image] = "starting"
    try:
        for event in c.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise EngineError(f"pulling {image} failed: {event['error']}")
            line = " ".join(str(event.get(k)) for k in ("id", "status", "progress") if event.get(k))
            with _pulls_lock:
                _pulls[image] = line
            on_progress(line)
    except (APIError, DockerException) as exc:
        raise EngineError(f"image {image} is not here and pulling it failed: {exc}. Pull or build it on the "
                          "host (docker pull / docker build), then start the kernel again") from exc
    finally:
        with _pulls_lock:
            _pulls.pop(image, None)


_probe_cache: dict[str, bool] = {}


def image_has_ipykernel(c: docker.DockerClient, image: ImageInfo, name: str, python: str,
                        environment: dict[str, str] | None = None) -> bool:
    """Whether the image's Python imports ipykernel (one short container per image, cached).

    ``environment``: the environment's own variables (``env``), which the kernel gets too: an image whose
    ipykernel is on a PYTHONPATH set there has it.
    """
    env = dict(environment or {})
    key = f"{image.id}:{python}:{sorted(env.items())}"
    if key not in _probe_cache:
        try:
            c.containers.run(name, [python, "-c", "import ipykernel"], remove=True, network_mode="none",
                             user=f"{os.getuid()}:{os.getgid()}", environment={**env, "HOME": "/tmp"})
            _probe_cache[key] = True
        except docker.errors.ContainerError:
            _probe_cache[key] = False
    return _probe_cache[key]


def image_python_version(c: docker.DockerClient, name: str, python: str) -> str:
    """``"3.11"`` for the image's interpreter."""
    try:
        out = c.containers.run(name, [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               remove=True, network_mode="none", user=f"{os.getuid()}:{os.getgid()}")
    except docker.errors.ContainerError as exc:
        raise EngineError(f"image {name} has no working {python!r}: set 'python' in the environment "
                          "to the interpreter's path in the image") from exc
    return out.decode().strip()


def kernel_containers(c: docker.DockerClient) -> list[Any]:
    """Every container any jupyter_gpuenv server on this engine started, running or not."""
    return c.containers.list(all=True, filters={"label": L_KERNEL})


def holdings_from(containers: list[Any]):
    from .allocation import Holdings

    holdings = Holdings()
    for container in containers:
        if container.status in ("exited", "dead"):
            continue
        lab = container.labels
        for uuid in filter(None, lab.get(L_GPUS, "").split(",")):
            holdings.add(uuid, lab.get(L_KERNEL, "?"), lab.get(L_EXCLUSIVE) == "true")
    return holdings


@contextmanager
def host_lock(path: str | None = None) -> Iterator[None]:
    """One GPU choice at a time on this host, across servers: list, choose and create happen inside."""
    path = path or os.path.join(tempfile.gettempdir(), "jupyter-gpuenv-allocation.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            os.fchmod(fd, 0o666)  # other users' servers on the host share this lock
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_quietly(c: docker.DockerClient, container_id: str) -> None:
    try:
        c.api.remove_container(container_id, force=True)
    except NotFound:
        pass
