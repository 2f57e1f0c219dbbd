"""What the broker, as root, does with paths its users control: by file descriptor, once.

The rule (docs/shared-host.md, "Security model"): root never resolves a user-controlled path twice and never
acts through a link a user can place between its check and its use.

- ``sockets/``, ``sockets/<user>/``: root's (0711), so a user cannot rename, remove or replace anything in them;
  only ``sockets/<user>/<kernel id>/`` is the user's (0700). Every step is made and checked through the parent's
  descriptor (``mkdir``/``open`` with ``dir_fd`` and ``O_NOFOLLOW``, then ``fchown``/``fchmod`` on what was opened).
- A user's folder that a kernel mounts (the server's root, the home) is resolved once, component by component,
  to a descriptor; that descriptor's object is checked (a folder, the user's or inside their home) and then
  bind-mounted onto a root-only staging folder (``mount`` of ``/proc/self/fd/N``), which is what Docker mounts.
  Docker resolves only the staging path, which no user can change.
- A user's file that root reads (a kernel's ``connection.json``): a regular file, the user's, small, opened
  without following links and without blocking (a FIFO is refused, not waited on); read off the event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from jupyter_gpuenv.errors import EngineUnavailable, InvalidRequest, NotPermitted

MAX_LINKS = 40  # as the kernel's own path walk
_MS_BIND, _MS_REC, _MNT_DETACH = 0x1000, 0x4000, 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def check_text(value: str, what: str) -> str:
    """A path from a request: text the OS can take (a NUL byte ends a C string early, so it is refused)."""
    if "\0" in value:
        raise InvalidRequest(f"{what} must not contain a NUL character")
    return value


# -- folders root owns, with one folder per user and per kernel inside -------------------------------------------
def open_folder(
    parent_fd: int, name: str, *, mode: int, owner: tuple[int, int], make: bool = True, adopt: bool = False
) -> int:
    """The folder ``name`` in ``parent_fd``, made if missing, as ``owner`` (uid, gid) with ``mode``: its descriptor.

    A link or a file in its place is refused (NotPermitted), and so is a folder of another user's unless
    ``adopt`` (a folder an older broker gave its user, taken back). One of root's or the owner's with other
    owner or bits is put right through its descriptor. The caller closes the descriptor.
    """
    if make:
        with suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except OSError as exc:  # ELOOP: a link; ENOTDIR: a file; ENOENT: removed meanwhile
        raise NotPermitted(f"{name} is not a folder this broker made ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != owner:
            if info.st_uid not in (owner[0], 0) and not adopt:  # someone else's folder: never take it over
                raise NotPermitted(f"{name} belongs to uid {info.st_uid}, not to uid {owner[0]}")
            os.fchown(fd, *owner)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_warm_folder(parent_fd: int, name: str, owner: tuple[int, int], fifo: str, lock: str) -> int:
    """A warm kernel's folder ``name`` in ``parent_fd`` (a user's folder under sockets/, root's): made root's, its
    FIFO and its client lock made inside and the lock taken (exclusive), then all given to ``owner`` (0700/0600).
    Until the last step the user cannot enter it, so nothing in it is theirs to swap. The lock's descriptor, held.
    """
    os.mkdir(name, 0o700, dir_fd=parent_fd)  # a fresh random name: an existing one is an error
    folder = os.open(name, _DIR, dir_fd=parent_fd)
    held = -1
    try:
        os.mkfifo(fifo, 0o600, dir_fd=folder)
        os.chown(fifo, *owner, dir_fd=folder, follow_symlinks=False)
        held = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchown(held, *owner)
        os.fchown(folder, *owner)
    except BaseException:
        if held >= 0:
            os.close(held)
        raise
    finally:
        os.close(folder)
    return held


# -- a user's folder, pinned -------------------------------------------------------------------------------------
@dataclass
class Pinned:
    """A folder resolved once: its descriptor (O_PATH) and the path it was found at."""

    fd: int
    path: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def resolve(path: str, what: str) -> Pinned:
    """Walk ``path`` from ``/`` once, a component at a time, following links (at most MAX_LINKS) only while
    walking; the folder it ends at, by descriptor. InvalidRequest if it does not exist or is not a folder."""
    check_text(path, what)
    if not os.path.isabs(path):
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    found: list[str] = []
    todo = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = up
                if found:
                    found.pop()
                continue
            try:
                step = os.open(name, _PATH, dir_fd=fd)
            except OSError:
                raise InvalidRequest(f"{what} {path} does not exist") from None
            info = os.fstat(step)
            if stat.S_ISLNK(info.st_mode):
                links += 1
                target = os.readlink("", dir_fd=step)  # the link we opened, not whatever has its name now
                os.close(step)
                if links > MAX_LINKS:
                    raise InvalidRequest(f"{what} {path} has too many links")
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    found = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            if not stat.S_ISDIR(info.st_mode):
                os.close(step)
                raise InvalidRequest(f"{what} {path} is not a folder")
            os.close(fd)
            fd = step
            found.append(name)
    except BaseException:
        os.close(fd)
        raise
    return Pinned(fd, "/" + "/".join(found))


def inside(pinned: Pinned, folder: Pinned, max_depth: int = 256) -> bool:
    """Whether ``pinned`` is ``folder`` or below it, as the filesystem has them now (walking ``..`` from the
    pinned object itself, not from a path that may have changed)."""
    want = os.fstat(folder.fd)
    fd = os.dup(pinned.fd)
    try:
        for _ in range(max_depth):
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (want.st_dev, want.st_ino):
                return True
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            above = os.fstat(up)
            os.close(fd)
            fd = up
            if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino):  # the root
                return False
        return False
    finally:
        os.close(fd)


def owner_of(pinned: Pinned) -> int:
    return os.fstat(pinned.fd).st_uid


# -- staging: what Docker mounts instead of a user's path ---------------------------------------------------------
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def bind(pinned: Pinned, target: str) -> None:
    """Bind-mount the pinned folder itself onto ``target`` (the kernel follows ``/proc/self/fd/N`` to the object)."""
    if _libc().mount(f"/proc/self/fd/{pinned.fd}".encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot bind {pinned.path} for the kernel: {os.strerror(code)}")


def unbind(target: str) -> None:
    if _libc().umount2(target.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        code = ctypes.get_errno()
        raise OSError(code, f"cannot unmount {target}: {os.strerror(code)}")


@contextmanager
def staged(staging_root: str, folders: dict[str, Pinned]) -> Iterator[dict[str, str]]:
    """While the block runs, each pinned folder is also at a root-only path: ``{its path: that path}``.

    Docker resolves the staging path at create and start; the container keeps its own mount afterwards, so
    the staging is undone (lazily, MNT_DETACH) as soon as the block ends.
    """
    where = os.path.join(staging_root, secrets.token_hex(8))
    os.mkdir(where, 0o700)
    done: list[str] = []
    try:
        sources = {}
        for n, (path, pinned) in enumerate(folders.items()):
            target = os.path.join(where, str(n))
            os.mkdir(target, 0o700)
            try:
                bind(pinned, target)
            except OSError as exc:  # not root, or no CAP_SYS_ADMIN: the broker must run as root on the host
                raise EngineUnavailable(
                    f"the GPU broker cannot prepare the kernel's folders ({exc.strerror}): it must run as root on "
                    "the host; ask the administrator"
                ) from None
            done.append(target)
            sources[path] = target
        yield sources
    finally:
        for target in done:
            unbind(target)
        shutil.rmtree(where, ignore_errors=True)


def prepare_staging(folder: str) -> str:
    """The broker's staging folder: root's, 0700, emptied of what a killed broker left mounted there."""
    os.makedirs(folder, 0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SystemExit(f"{folder} must be a folder of the broker's own user")
    os.chmod(folder, 0o700)
    for entry in os.listdir(folder):
        for n in os.listdir(os.path.join(folder, entry)) if os.path.isdir(os.path.join(folder, entry)) else ():
            unbind(os.path.join(folder, entry, n))
        shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
    return folder


# -- a user's small file, read ------------------------------------------------------------------------------------
def read_user_file(folder: str, name: str, uid: int, limit: int) -> bytes:
    """``folder/name`` when it is a regular file of ``uid``'s no larger than ``limit`` bytes; OSError otherwise.

    ``folder`` is one whose parents the user cannot change (a socket folder). Blocking work: run it in a thread.
    """
    dfd = os.open(folder, _DIR)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        if info.st_uid != uid:
            raise OSError(errno.EPERM, f"{name} is not its user's")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{name} is larger than {limit} bytes")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)
