"""A kernel start, as the Swarm service that runs it. Pure: no docker, no I/O.

A kernel is a service of one task that is never restarted: Swarm places it, and what it was given is Swarm's
record (Raft, on every manager), not a file on one host. What a kernel asks for:

- GPUs as *generic resources*: each GPU host advertises its GPUs by model (``GPU-H200=<uuid>`` in its
  daemon.json), an environment asks for a count of one model, Swarm reserves that many distinct UUIDs on one
  node and tells the task which (``DOCKER_RESOURCE_GPU-H200=<uuid>,…`` in its environment, which a GPU runtime
  reads: the NVIDIA toolkit's, or ``gpu_runtime``).
- CPU-only kernels by a placement constraint: only hosts the admin labelled ``io.jupyter.gpuenv.cpu-kernels``
  take them, so they do not fill the GPU hosts' memory and cores.
- No network: Swarm refuses a service on ``none`` ("could not find the corresponding predefined swarm
  network"), so the spec names no network at all. On a node whose dockerd runs with ``"bridge": "none"`` that
  is a namespace with only ``lo``; elsewhere (a docker0 bridge) the task joins it: giving it a fresh namespace
  from ``gpu_runtime`` when ``GPUENV_NETWORK=none`` is planned, not built.

The labels say whose kernel it is (user, uid, kernel, notebook, environment); never the connection key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from jupyter_gpuenv.errors import InvalidKernelId, InvalidRequest

PREFIX = "io.jupyter.gpuenv"
KERNEL = f"{PREFIX}.kernel-id"
USER = f"{PREFIX}.user"
UID = f"{PREFIX}.uid"
NOTEBOOK = f"{PREFIX}.notebook"
ENVIRONMENT = f"{PREFIX}.environment"
GPU_KIND = f"{PREFIX}.gpu-kind"
GPU_COUNT = f"{PREFIX}.gpu-count"
CPU_HOSTS = f"{PREFIX}.cpu-kernels"  # the node label of hosts that take CPU-only kernels
NETWORK_ENV = "GPUENV_NETWORK"  # "none": for gpu_runtime to give the task a namespace with only lo (planned)

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,55}")  # a service name holds 63: "gpuenv-" + 56
_KIND = re.compile(r"GPU(-[A-Za-z0-9]+)*")  # "GPU", "GPU-H200", "GPU-A100-80GB"


@dataclass(frozen=True)
class BindMount:
    source: str  # on the host the task lands on: shared storage (docs/multi-host.md)
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class KernelRequest:
    """One kernel start, as the broker has decided it: who, what, and how many GPUs of which model."""

    kernel_id: str
    user: str
    uid: int
    gid: int
    environment: str
    image: str
    command: tuple[str, ...]
    notebook: str = ""
    gpu_kind: str = ""  # "" with gpu_count 0: a CPU-only kernel
    gpu_count: int = 0
    mounts: tuple[BindMount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    groups: tuple[int, ...] = ()
    constraints: tuple[str, ...] = ()  # the admin's own, e.g. "node.labels.storage==nfs-a"
    memory_bytes: int = 0
    nano_cpus: int = 0


def service_name(kernel_id: str) -> str:
    return f"gpuenv-{kernel_id}"


def kernel_labels(request: KernelRequest) -> dict[str, str]:
    return {
        KERNEL: request.kernel_id,
        USER: request.user,
        UID: str(request.uid),
        NOTEBOOK: request.notebook,
        ENVIRONMENT: request.environment,
        GPU_KIND: request.gpu_kind,
        GPU_COUNT: str(request.gpu_count),
    }


def service_spec(request: KernelRequest) -> dict:
    """The Engine API's ServiceSpec (``POST /services/create``) that runs ``request``."""
    check(request)
    labels = kernel_labels(request)
    container = {
        "Image": request.image,
        "Command": list(request.command),
        "Env": [f"{k}={v}" for k, v in {**request.env, NETWORK_ENV: "none"}.items()],
        "User": f"{request.uid}:{request.gid}",
        "Groups": [str(g) for g in request.groups],
        "Init": True,  # SIGINT reaches the kernel (interrupt), zombies are reaped
        "CapabilityDrop": ["ALL"],
        "Labels": labels,
        "Mounts": [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only} for m in request.mounts
        ],
    }
    if request.workdir:
        container["Dir"] = request.workdir
    resources: dict = {"Limits": {}, "Reservations": {}}
    if request.gpu_count:
        resources["Reservations"]["GenericResources"] = [
            {"DiscreteResourceSpec": {"Kind": request.gpu_kind, "Value": request.gpu_count}}
        ]
    if request.memory_bytes:
        resources["Limits"]["MemoryBytes"] = request.memory_bytes
    if request.nano_cpus:
        resources["Limits"]["NanoCPUs"] = request.nano_cpus
    constraints = list(request.constraints)
    if not request.gpu_count:
        constraints.append(f"node.labels.{CPU_HOSTS}==true")
    return {
        "Name": service_name(request.kernel_id),
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": resources,
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},  # a dead kernel is the notebook's news
            "Placement": {"Constraints": constraints},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
    }


def create_service_kwargs(spec: dict) -> dict:
    """``service_spec``'s answer as the docker SDK's ``APIClient.create_service`` takes it."""
    return {
        "task_template": spec["TaskTemplate"],
        "name": spec["Name"],
        "labels": spec["Labels"],
        "mode": spec["Mode"],
    }


def check(request: KernelRequest) -> None:
    if not _SAFE_ID.fullmatch(request.kernel_id):
        raise InvalidKernelId(
            f"kernel id {request.kernel_id!r} is not allowed: use letters, digits, '-' and '_' (at most 56)"
        )
    if request.gpu_count < 0 or (request.gpu_count and not _KIND.fullmatch(request.gpu_kind)):
        raise InvalidRequest(
            f"GPUs asked as {request.gpu_count} × {request.gpu_kind!r}: the kind is a GPU model as the hosts "
            "advertise it (e.g. 'GPU-H200'), the count a whole number"
        )
    if request.uid == 0 or request.gid == 0:
        raise InvalidRequest("a kernel never runs as root: give the person's uid and gid")
