"""From an environment and a kernel's launch facts to the docker SDK's ``containers.create`` arguments.

Pure: no engine calls here, so every choice (what is mounted, which variables pass, which GPUs and how)
is visible in one function and tested without Docker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .environments import Environment, Mount

LABEL = "io.jupyter.gpuenv"  # every label we set starts with this
L_KERNEL, L_SERVER_HOST, L_SERVER_PID, L_UID = (f"{LABEL}.kernel-id", f"{LABEL}.server-host",
                                                f"{LABEL}.server-pid", f"{LABEL}.uid")
L_ENV, L_GPUS, L_EXCLUSIVE, L_SOCKETS = (f"{LABEL}.environment", f"{LABEL}.gpus", f"{LABEL}.exclusive",
                                         f"{LABEL}.socket-dir")

# variables that always pass (a local kernel would have them too); everything else needs env_allow
ALWAYS_PASSED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "JPY_SESSION_NAME", "JPY_PARENT_PID")
DRIVER_TARGET = "/usr/local/nvidia"
RUNTIME_TARGET = "/opt/gpuenv-kernel"
NVIDIA_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")

# Runs the kernel with the image's own packages first; ipykernel from the mounted runtime only fills in
# what the image lacks (stock PyTorch images have no ipykernel).
LAUNCHER = ("import sys; sys.path.append(%r); sys.argv[0] = 'ipykernel_launcher'; "
            "from ipykernel import kernelapp; kernelapp.launch_new_instance()") % RUNTIME_TARGET


@dataclass
class AssignedGpu:
    index: int
    uuid: str
    minor: int | None = None

    @property
    def device_node(self) -> str:
        return f"/dev/nvidia{self.minor if self.minor is not None else self.index}"


@dataclass
class LaunchFacts:
    kernel_id: str
    server_host: str
    server_pid: int
    uid: int
    gid: int
    user_name: str
    home: str
    root_dir: str
    cwd: str
    socket_dir: str
    connection_file: str
    gpu_mode: str  # resolved: "toolkit", "devices" or "none"
    gpus: list[AssignedGpu] = field(default_factory=list)
    exclusive: bool = False
    driver_mounts: list[Mount] = field(default_factory=list)
    runtime_dir: str | None = None
    server_env: dict[str, str] = field(default_factory=dict)


def container_name(kernel_id: str) -> str:
    return f"gpuenv-{kernel_id}"


def labels(env: Environment, facts: LaunchFacts) -> dict[str, str]:
    """What the engine records about the kernel: never the connection key."""
    return {
        L_KERNEL: facts.kernel_id,
        L_SERVER_HOST: facts.server_host,
        L_SERVER_PID: str(facts.server_pid),
        L_UID: str(facts.uid),
        L_ENV: env.name,
        L_GPUS: ",".join(g.uuid for g in facts.gpus),
        L_EXCLUSIVE: "true" if facts.exclusive else "false",
        L_SOCKETS: facts.socket_dir,
    }


def environment_variables(env: Environment, facts: LaunchFacts) -> dict[str, str]:
    passed = {k: v for k, v in facts.server_env.items() if k in ALWAYS_PASSED or k in env.env_allow}
    passed.update(dict(env.env))
    passed.update({
        "HOME": facts.home,
        "USER": facts.user_name,  # getpass.getuser() works although the image has no passwd entry
        "LOGNAME": facts.user_name,
        "PYTHONUNBUFFERED": "1",
        "JUPYTER_RUNTIME_DIR": facts.socket_dir,
    })
    if facts.gpu_mode == "devices":
        # the driver's libraries come from the host, bind-mounted read-only
        passed["LD_LIBRARY_PATH"] = f"{DRIVER_TARGET}/lib64:{DRIVER_TARGET}/lib"
        # without the toolkit the driver still lists every GPU: CUDA must touch only the ones passed in
        passed["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in facts.gpus)
    if facts.gpu_mode != "none":
        # CUDA numbers the container's GPUs from 0; these keep the host's order and the toolkit's choice
        passed["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in facts.gpus)
        passed["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    else:
        passed["CUDA_VISIBLE_DEVICES"] = ""
    return passed


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def volumes(env: Environment, facts: LaunchFacts) -> dict[str, dict[str, str]]:
    binds: dict[str, dict[str, str]] = {}
    # the user's files at the same path, so notebook paths and the kernel's cwd mean the same inside
    binds[facts.root_dir] = {"bind": facts.root_dir, "mode": "rw"}
    if facts.home and Path(facts.home).is_dir() and not _within(facts.home, facts.root_dir):
        binds[facts.home] = {"bind": facts.home, "mode": "rw"}
    binds[facts.socket_dir] = {"bind": facts.socket_dir, "mode": "rw"}
    for mount in list(env.mounts) + list(facts.driver_mounts):
        binds[mount.source] = {"bind": mount.target, "mode": "ro" if mount.read_only else "rw"}
    if facts.runtime_dir:
        binds[facts.runtime_dir] = {"bind": RUNTIME_TARGET, "mode": "ro"}
    return binds


def command(env: Environment, facts: LaunchFacts) -> list[str]:
    return [env.python, "-c", LAUNCHER, "-f", facts.connection_file]


def create_kwargs(env: Environment, facts: LaunchFacts) -> dict[str, Any]:
    """Arguments for ``docker.from_env().containers.create`` (the docker SDK's names)."""
    if not _within(facts.cwd, facts.root_dir) and not (facts.home and _within(facts.cwd, facts.home)):
        raise ValueError(f"the kernel's working directory {facts.cwd} is outside the server's root "
                         f"{facts.root_dir}, which is all a container kernel can see")
    kwargs: dict[str, Any] = {
        "image": env.image,
        "command": command(env, facts),
        "name": container_name(facts.kernel_id),
        "user": f"{facts.uid}:{facts.gid}",
        "working_dir": facts.cwd,
        "environment": environment_variables(env, facts),
        "volumes": volumes(env, facts),
        "labels": labels(env, facts),
        "network_mode": env.network,
        "init": True,  # docker-init forwards SIGINT to the kernel: interrupt works
        "shm_size": env.shm_size,
        "detach": True,
        "stdin_open": False,
        "tty": False,
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
    }
    if env.memory:
        kwargs["mem_limit"] = env.memory
    if env.cpus:
        kwargs["nano_cpus"] = int(env.cpus * 1e9)
    if facts.gpu_mode == "toolkit":
        from docker.types import DeviceRequest

        kwargs["device_requests"] = [DeviceRequest(device_ids=[g.uuid for g in facts.gpus],
                                                   capabilities=[["gpu"]])]
    elif facts.gpu_mode == "devices":
        nodes = [n for n in NVIDIA_CONTROL_DEVICES if os.path.exists(n)] + [g.device_node for g in facts.gpus]
        kwargs["devices"] = [f"{n}:{n}:rwm" for n in nodes]
    return kwargs


def driver_mounts(candidates: tuple[str, ...] = ("/usr/local/nvidia",)) -> list[Mount]:
    """The host's NVIDIA driver files for the devices mode, read-only at /usr/local/nvidia."""
    for folder in candidates:
        if Path(folder, "lib64").is_dir() or Path(folder, "lib").is_dir():
            return [Mount(folder, DRIVER_TARGET, True)]
    # distribution packages put the libraries beside every other library: mount just those files
    mounts = []
    for libdir in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu"):
        for lib in sorted(Path(libdir).glob("lib*nvidia*.so*")) + sorted(Path(libdir).glob("libcuda*.so*")):
            mounts.append(Mount(str(lib), f"{DRIVER_TARGET}/lib64/{lib.name}", True))
        if mounts:
            break
    for tool in ("/usr/bin/nvidia-smi",):
        if Path(tool).exists():
            mounts.append(Mount(tool, f"{DRIVER_TARGET}/bin/nvidia-smi", True))
    return mounts
