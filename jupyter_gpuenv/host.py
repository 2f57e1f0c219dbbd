"""Facts of this machine that a container kernel needs: who runs the server, its home, the NVIDIA driver.

Read here and only here, so the pure modules (``containers``, ``preflight``) get them as plain values.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import pwd
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jupyter_gpuenv.errors import UnsafeFolder

DRIVER_TARGET = "/usr/local/nvidia"
NVIDIA_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


@dataclass(frozen=True)
class Mount:
    source: str  # a host path; for kind "volume", the name of a Docker volume
    target: str
    read_only: bool = True
    kind: str = "bind"


@dataclass(frozen=True)
class User:
    """Whom a kernel container runs as: never root's identity unless the server itself is root."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Server:
    """The Jupyter server that starts kernels: recorded on its containers to find orphans later."""

    host: str
    pid: int


def current_user() -> User:
    try:
        entry = pwd.getpwuid(os.getuid())
        name, home = entry.pw_name, entry.pw_dir
    except KeyError:  # a uid without a passwd entry (containers): the environment still names one
        name, home = getpass.getuser(), os.path.expanduser("~")
    return User(name=name, uid=os.getuid(), gid=os.getgid(), home=os.environ.get("HOME") or home)


def this_server() -> Server:
    return Server(host=socket.gethostname(), pid=os.getpid())


def device_nodes() -> list[str]:
    """The NVIDIA control device nodes present on this host (the per-GPU ones come with each GPU)."""
    return [n for n in NVIDIA_CONTROL_DEVICES if os.path.exists(n)]


def driver_mounts(candidates: tuple[str, ...] = (DRIVER_TARGET,)) -> list[Mount]:
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
    if Path("/usr/bin/nvidia-smi").exists():
        mounts.append(Mount("/usr/bin/nvidia-smi", f"{DRIVER_TARGET}/bin/nvidia-smi", True))
    return mounts


def private_folder(path: str, parents: bool = False) -> str:
    """``path`` as a folder only this user can enter, made if missing; UnsafeFolder if someone else made it.

    A folder in a shared place such as /tmp may have been created first by another local user: accepting it
    would let them swap or watch what we put inside (a kernel's sockets and connection key). ``parents``: make
    missing parent folders too (with the usual permissions: only the last is private).
    """
    if parents:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeFolder(f"cannot create the private folder {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(f"{path} exists and is not a folder (a link or a file): remove it, or set another place")
    if info.st_uid != os.getuid():
        raise UnsafeFolder(
            f"{path} belongs to uid {info.st_uid}, not to this user ({os.getuid()}): another user may have made it "
            "to watch these kernels; remove it, or set c.GpuEnv.socket_root to a folder of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours, but opened up: close it again before anything goes inside
    return path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot, None if it is gone: with its pid, it names one process
    (a pid reused later has another start)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return start_ticks(f.read())
    except OSError:
        return None


def start_ticks(stat: str) -> int | None:
    """The start time (clock ticks since boot) in the text of ``/proc/<pid>/stat``; None if it is not there."""
    # the command name may hold spaces and parentheses: the fields follow the last ')'
    try:
        return int(stat[stat.rfind(")") + 2 :].split()[19])
    except (IndexError, ValueError):
        return None


@contextlib.contextmanager
def locked_file(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (made 0600 if missing, never through a link) while inside;
    blocking: call it in a thread where the wait may be long."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def memory_room(pid: int, proc: str = "/proc", cgroups: str = "/sys/fs/cgroup") -> tuple[int | None, str]:
    """How many bytes of memory ``pid`` may still take, and what limits it: the host's available memory, or its
    memory cgroup's limit (a container's ``memory``) when that leaves less. ``(None, "")`` when unknown.

    Parking moves a kernel's GPU memory into its own process's memory, which counts against both.
    """
    room, by = None, ""
    try:
        with open(f"{proc}/meminfo") as f:
            available = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
        if available is not None:
            room, by = available, "the host"
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return room, by
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            limit, usage = f"{cgroups}{path}/memory.max", f"{cgroups}{path}/memory.current"
        elif "memory" in controllers.split(","):  # cgroup v1
            limit, usage = (
                f"{cgroups}/memory{path}/memory.limit_in_bytes",
                f"{cgroups}/memory{path}/memory.usage_in_bytes",
            )
        else:
            continue
        try:
            with open(limit) as f:
                raw = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:  # no limit
            continue
        left = max(int(raw) - used, 0)
        if room is None or left < room:
            room, by = left, "its container's memory limit"
    return room, by


@dataclass(frozen=True)
class ContainerMemory:
    """A container's memory as its cgroup counts it: what its processes hold (``used``, the page cache they could
    give back left out, as ``docker stats`` counts) against its ``memory`` limit (None: no limit)."""

    used: int
    limit: int | None


def container_cgroups(container_id: str) -> list[tuple[str, str, str]]:
    """Where a Docker container's memory cgroup may be, relative to /sys/fs/cgroup: ``(usage, limit, stat)`` file
    paths for cgroup v2 (systemd, then cgroupfs driver), then v1. Pure."""
    v2 = [f"system.slice/docker-{container_id}.scope", f"docker/{container_id}"]
    v1 = [f"memory/docker/{container_id}", f"memory/system.slice/docker-{container_id}.scope"]
    return [(f"{d}/memory.current", f"{d}/memory.max", f"{d}/memory.stat") for d in v2] + [
        (f"{d}/memory.usage_in_bytes", f"{d}/memory.limit_in_bytes", f"{d}/memory.stat") for d in v1
    ]


def memory_in_use(usage: int, stat: str) -> int:
    """A cgroup's usage less its inactive file cache (``memory.stat``: v2 ``inactive_file``, v1
    ``total_inactive_file``), which the kernel reclaims before it kills anything. Pure."""
    values = dict(line.split(maxsplit=1) for line in stat.splitlines() if " " in line)
    inactive = values.get("inactive_file", values.get("total_inactive_file", "0"))
    try:
        return max(usage - int(inactive), 0)
    except ValueError:
        return usage


def memory_limit(text: str) -> int | None:
    """``memory.max`` / ``memory.limit_in_bytes`` as bytes; None for no limit ("max", or v1's huge number)."""
    text = text.strip()
    return int(text) if text.isdigit() and int(text) < 1 << 60 else None


def container_memory(container_id: str, cgroups: str = "/sys/fs/cgroup") -> ContainerMemory | None:
    """A container's memory from its cgroup; None when no cgroup of it is found here (it ended, or the engine is
    on another host). Blocking file reads: call it in a thread."""
    for usage, limit, statistics in container_cgroups(container_id):
        try:
            with open(os.path.join(cgroups, usage)) as f:
                used = int(f.read().strip())
            with open(os.path.join(cgroups, limit)) as f:
                cap = memory_limit(f.read())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(cgroups, statistics)) as f:
                used = memory_in_use(used, f.read())
        except OSError:
            pass
        return ContainerMemory(used=used, limit=cap)
    return None
