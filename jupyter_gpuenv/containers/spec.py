"""From an environment and a kernel's launch facts to the container the engine creates.

Pure: no engine calls here, so every choice (what is mounted, which variables pass, which GPUs and how)
is visible in one function and tested without Docker. Mounts are objects, never ``src:dst:mode`` text, so a
folder whose name holds ``:`` or ``,`` is mounted as it is.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.environments.definition import Environment
from jupyter_gpuenv.errors import OutsideRoot
from jupyter_gpuenv.host import DRIVER_TARGET, Mount, User

# variables that always pass (a local kernel would have them too); everything else needs env_allow. Not
# JPY_PARENT_PID: it names a process of the client's PID namespace, and ipykernel's parent poller, which finds
# its parent (docker-init, pid 1) is not that one, would end the kernel at once; CLIENT_LOCK does that job.
ALWAYS_PASSED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "JPY_SESSION_NAME")
RUNTIME_TARGET = "/opt/gpuenv-kernel"

# The file in the kernel's socket folder that its client (the process holding the KernelManager: a server, an
# nbclient run, a script) keeps locked (flock, exclusive) while it lives. The kernel's watcher waits for a shared
# lock on it, which the host's kernel grants the moment the client's lock goes, however the client ended: the
# container's way of noticing that the parent of a local kernel is gone, with no network and no polling.
CLIENT_LOCK = "client.lock"
CLIENT_LOCK_VARIABLE = "GPUENV_CLIENT_LOCK"

# Runs the kernel with the image's own packages first; ipykernel from the mounted runtime only fills in
# what the image lacks (stock PyTorch images have no ipykernel). A daemon thread first waits on the client's
# lock and ends the kernel's process group (the kernel and its children) once it gets it; the container ends
# with them. No lock file (a client that made none): no watcher.
CLIENT_WATCHER = (
    "import fcntl, os, signal, sys, threading\n"
    "def watch(path):\n"
    "    try:\n"
    "        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)\n"
    "    except OSError:\n"
    "        return\n"
    "    fcntl.flock(fd, fcntl.LOCK_SH)\n"
    "    os.killpg(0, signal.SIGKILL)\n"
    f"if os.environ.get({CLIENT_LOCK_VARIABLE!r}):\n"
    f"    threading.Thread(target=watch, args=(os.environ[{CLIENT_LOCK_VARIABLE!r}],), daemon=True).start()\n"
)
LAUNCHER = (
    CLIENT_WATCHER + f"sys.path.append({RUNTIME_TARGET!r}); sys.argv[0] = 'ipykernel_launcher'\n"
    "from ipykernel import kernelapp; kernelapp.launch_new_instance()"
)

# What a container started for a terminal alone runs: nothing but waiting (POSIX sh, so any image with a shell
# does); the terminal's shell is exec'd into it, and removing the container ends everything in it.
TERMINAL_COMMAND = ["sh", "-c", "while :; do sleep 3600; done"]

# A terminal's shell: the image's bash, else its sh; not a login shell, whose /etc/profile would reset the
# image's PATH (conda, CUDA). It carries a marker in its environment, so that closing the terminal can find it.
SHELL_COMMAND = ["sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash; exec sh"]
SHELL_MARKER = "GPUENV_TERMINAL"
# Docker leaves an exec'd shell running when its connection closes. Closing a terminal hangs it up instead:
# SIGHUP to the process that carries the marker ($0) and was started by the engine (parent pid 0 in the
# container), so its jobs end as in any terminal, while tmux (which left it for pid 1) keeps running.
HANG_UP_SCRIPT = (
    'for p in /proc/[0-9]*; do tr "\\0" "\\n" < "$p/environ" 2>/dev/null | grep -qx "'
    + SHELL_MARKER
    + '=$0" || continue; s=$(cat "$p/stat") || continue; set -- ${s##*") "}; '
    '[ "$2" = 0 ] && kill -HUP "${p#/proc/}"; done'
)

# What a network namespace holder runs: nothing, until it is removed.
HOLDER_COMMAND = "import signal; signal.pause()"


@dataclass(frozen=True)
class AssignedGpu:
    index: int
    uuid: str
    minor: int | None = None

    @property
    def device_node(self) -> str:
        return f"/dev/nvidia{self.minor if self.minor is not None else self.index}"


@dataclass
class LaunchFacts:
    """Everything about one kernel start that is not in its environment."""

    kernel_id: str
    user: User
    server_host: str
    server_pid: int
    root_dir: str
    cwd: str
    socket_dir: str
    connection_file: str
    gpu_mode: str  # resolved: "toolkit", "devices" or "none"
    gpus: list[AssignedGpu] = field(default_factory=list)
    exclusive: bool = False
    driver_mounts: list[Mount] = field(default_factory=list)
    device_nodes: list[str] = field(default_factory=list)  # NVIDIA control nodes present on the host
    runtime_dir: str | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    extra_labels: dict[str, str] = field(default_factory=dict)
    user_volume: str | None = None  # servers in containers (DockerSpawner): the user's files are this volume
    terminal: bool = False  # a container for a terminal alone (TERMINAL_COMMAND instead of the kernel)
    network_holder: str | None = None  # join this container's no-network namespace (see network_holder())
    # a folder the kernel sees -> the host path Docker mounts it from: the broker's pinned copies of a user's
    # folders (broker_folders.staged), so that Docker never resolves a path the user can change
    sources: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None  # instead of LAUNCHER: a warm kernel waits for its connection file (server.warm)


@dataclass
class ContainerSpec:
    """One kernel container, in the engine's terms but not in any SDK's types."""

    name: str
    image: str
    command: list[str]
    user: str
    working_dir: str
    environment: dict[str, str]
    mounts: list[Mount]
    labels: dict[str, str]
    network_mode: str
    shm_size: str
    memory: str | None = None
    nano_cpus: int | None = None
    gpu_device_ids: list[str] | None = None  # toolkit mode: what `--gpus device=...` sends
    devices: list[str] = field(default_factory=list)  # devices mode: device nodes passed through as they are
    init: bool = True  # docker-init forwards signals to the kernel's process group: interrupt works
    security_opt: list[str] = field(default_factory=lambda: ["no-new-privileges"])
    cap_drop: list[str] = field(default_factory=lambda: ["ALL"])
    read_only: bool = False  # the image's files read-only (a namespace holder writes nothing)
    pids_limit: int | None = None


def joins_holder(env: Environment, shared_network_namespace: bool) -> bool:
    """Whether a kernel of ``env`` joins its user's namespace holder instead of getting a namespace of its own."""
    return shared_network_namespace and env.network == "none"


def holder_name(server_host: str, user: User) -> str:
    """One holder per user (uid and name: behind a broker's hub-token mode every user has the same uid)."""
    digest = hashlib.sha256(f"{server_host}\0{user.uid}\0{user.name}".encode()).hexdigest()[:12]
    return f"gpuenv-netns-{user.uid}-{digest}"


def network_holder(env: Environment, user: User, server_host: str, server_pid: int) -> ContainerSpec:
    """The container that holds a user's no-network namespace (loopback only) for their kernels to join.

    Docker makes a network namespace per container, and that costs more than the rest of a container start;
    joined (``network_mode: container:<holder>``), a kernel skips it. It is the image's own Python waiting for
    a signal it never gets: no capabilities, no network, nothing writable, a few processes, a little memory;
    as the user (nobody when the server is root's).
    """
    uid, gid = (user.uid, user.gid) if user.uid != 0 else (65534, 65534)
    return ContainerSpec(
        name=holder_name(server_host, user),
        image=env.image,
        command=[env.python, "-I", "-S", "-c", HOLDER_COMMAND],
        user=f"{uid}:{gid}",
        working_dir="/",
        environment={},
        mounts=[],
        labels=labels.holder_labels(user.uid, user.name, server_host, server_pid),
        network_mode="none",
        shm_size="1m",
        memory="64m",
        init=False,
        read_only=True,
        pids_limit=8,
    )


def container_name(kernel_id: str) -> str:
    return f"gpuenv-{kernel_id}"


def environment_variables(env: Environment, facts: LaunchFacts) -> dict[str, str]:
    passed = {k: v for k, v in facts.server_env.items() if k in ALWAYS_PASSED or k in env.env_allow}
    passed.update(dict(env.env))
    passed.update(
        {
            "HOME": facts.user.home,
            "USER": facts.user.name,  # getpass.getuser() works although the image has no passwd entry
            "LOGNAME": facts.user.name,
            "PYTHONUNBUFFERED": "1",
            "JUPYTER_RUNTIME_DIR": facts.socket_dir,
            CLIENT_LOCK_VARIABLE: os.path.join(facts.socket_dir, CLIENT_LOCK),
            # docker-init (tini) forwards a signal to the kernel's whole process group, not to the kernel alone:
            # an interrupt, a restart's or a shutdown's SIGTERM reach its children as for a local kernel
            "TINI_KILL_PROCESS_GROUP": "1",
        }
    )
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


def within(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def mounts(env: Environment, facts: LaunchFacts) -> list[Mount]:
    home = facts.user.home
    if facts.user_volume:  # the server runs in a container whose home is a volume: the kernel gets the same
        out = [Mount(facts.user_volume, home, False, "volume")]
    else:  # the user's files at the same path, so notebook paths and the working folder mean the same inside
        src = facts.sources
        out = [Mount(src.get(facts.root_dir, facts.root_dir), facts.root_dir, False)]
        if home and not within(home, facts.root_dir) and (home in src if src else os.path.isdir(home)):
            out.append(Mount(src.get(home, home), home, False))
    out.append(Mount(facts.socket_dir, facts.socket_dir, False))
    out += list(env.mounts) + list(facts.driver_mounts)
    if facts.runtime_dir:
        out.append(Mount(facts.runtime_dir, RUNTIME_TARGET, True))
    return out


def check_cwd(cwd: str, root_dir: str, home: str) -> None:
    """OutsideRoot unless the working folder is one the container sees (the root, or the home)."""
    if not within(cwd, root_dir) and not (home and within(cwd, home)):
        raise OutsideRoot(
            f"the notebook's folder {cwd} is outside the server's root {root_dir}, which is all a container "
            "kernel can see: open the notebook from inside the root"
        )


def spec(env: Environment, facts: LaunchFacts) -> ContainerSpec:
    """The container for one kernel of ``env``."""
    check_cwd(facts.cwd, facts.root_dir, facts.user.home)
    gpu_uuids = [g.uuid for g in facts.gpus]
    out = ContainerSpec(
        name=container_name(facts.kernel_id),
        image=env.image,
        command=list(TERMINAL_COMMAND)
        if facts.terminal
        else list(facts.command or [env.python, "-c", LAUNCHER, "-f", facts.connection_file]),
        user=f"{facts.user.uid}:{facts.user.gid}",
        working_dir=facts.cwd,
        environment=environment_variables(env, facts),
        mounts=mounts(env, facts),
        labels=labels.kernel_labels(
            kernel_id=facts.kernel_id,
            server_host=facts.server_host,
            server_pid=facts.server_pid,
            uid=facts.user.uid,
            environment=env.name,
            gpus=gpu_uuids,
            exclusive=facts.exclusive,
            socket_dir=facts.socket_dir,
        )
        | ({labels.TERMINAL: "true"} if facts.terminal else {})
        | facts.extra_labels,
        network_mode=f"container:{facts.network_holder}" if facts.network_holder else env.network,
        shm_size=env.shm_size,
        memory=env.memory,
        nano_cpus=int(env.cpus * 1e9) if env.cpus else None,
    )
    if facts.gpu_mode == "toolkit":
        out.gpu_device_ids = gpu_uuids
    elif facts.gpu_mode == "devices":
        out.devices = list(facts.device_nodes) + [g.device_node for g in facts.gpus]
    return out
