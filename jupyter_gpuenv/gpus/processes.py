"""What ``/proc`` says about a GPU process, as nvitop shows it: host memory, start, command and user.

The parsers take the files' text and are pure; :func:`read_facts` is the one reader. :func:`describe` fills a
snapshot's processes in place, in the sampler's thread, keeping what another person may not see: on a shared
host another user's process is named only as the broker names it (``c.Broker.show_other_users``), without its
command.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.host import start_ticks

COMMAND_LENGTH = 80  # characters: a command line is shortened to this, like nvitop's column


@dataclass(frozen=True)
class ProcessFacts:
    host_memory: int | None  # bytes resident (VmRSS)
    started_at: float | None  # seconds since the epoch
    command: str | None  # shortened
    uid: int | None


def status_field(status: str, name: str) -> str | None:
    """One field of ``/proc/<pid>/status`` ("VmRSS", "Uid"), its text after the colon."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def resident_bytes(status: str) -> int | None:
    """``VmRSS:  123456 kB`` -> bytes; None for a kernel thread or a zombie, which have none."""
    value = status_field(status, "VmRSS")
    try:
        return int(value.split()[0]) * 1024 if value else None
    except (ValueError, IndexError):
        return None


def real_uid(status: str) -> int | None:
    value = status_field(status, "Uid")
    try:
        return int(value.split()[0]) if value else None
    except (ValueError, IndexError):
        return None


def boot_time(proc_stat: str) -> float | None:
    """The ``btime`` line of ``/proc/stat``: when this machine booted, in seconds since the epoch."""
    for line in proc_stat.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def short_command(cmdline: bytes, limit: int = COMMAND_LENGTH) -> str | None:
    """``/proc/<pid>/cmdline`` (NUL-separated) as one line: the program's base name and its arguments, cut to
    ``limit`` characters with "…". None when empty (a kernel thread, or a process that is ending)."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if not args:
        return None
    args[0] = os.path.basename(args[0]) or args[0]
    text = " ".join(args)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_facts(pid: int, proc: str = "/proc", boot: float | None = None, ticks: int | None = None) -> ProcessFacts:
    """The facts of one process; fields it does not show (gone, or another user's under ``hidepid``) are None."""

    def read(name: str) -> bytes:
        try:
            with open(f"{proc}/{pid}/{name}", "rb") as f:
                return f.read()
        except OSError:
            return b""

    status = read("status").decode(errors="replace")
    start = start_ticks(read("stat").decode(errors="replace"))
    ticks = ticks or os.sysconf("SC_CLK_TCK")
    return ProcessFacts(
        host_memory=resident_bytes(status),
        started_at=boot + start / ticks if boot is not None and start is not None else None,
        command=short_command(read("cmdline")),
        uid=real_uid(status),
    )


@lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """A uid's account name; the number where there is no account (a container's uid)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def machine_boot_time(proc: str = "/proc") -> float | None:
    try:
        with open(f"{proc}/stat") as f:
            return boot_time(f.read())
    except OSError:
        return None


def describe(
    snapshot: Snapshot,
    *,
    me: int,
    shared_host: bool,
    facts: Callable[[int], ProcessFacts],
    name_of: Callable[[int], str] = user_name,
) -> None:
    """Fill host memory, start, command and owner of every process in ``snapshot``, in place.

    ``me``: this server's uid. On one person's machine every process is shown as ``ps`` shows it to anyone; on a
    shared host (``shared_host``) another user's process keeps its numbers but not its command or account name:
    it is named by the broker's answer (``GpuProcess.user``), which follows ``c.Broker.show_other_users``.
    """
    for gpu in snapshot.gpus:
        for p in gpu.processes:
            f = facts(p.pid)
            p.host_memory, p.started_at = f.host_memory, f.started_at
            if shared_host and f.uid != me:
                p.command, p.owner = None, None
            else:
                p.command, p.owner = f.command, name_of(f.uid) if f.uid is not None else None
