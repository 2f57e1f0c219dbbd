"""The NVIDIA driver's checkpoint API: move a process's GPU memory to host memory, and back.

``cuCheckpointProcessLock / Checkpoint / Restore / Unlock`` (CUDA driver API, display driver 570 and newer) act
on another process by its pid: lock blocks its further CUDA calls, checkpoint copies its GPU memory to host
memory and releases the GPU, restore puts it back, unlock lets its CUDA calls run again. A cell that calls CUDA
while its process is locked or checkpointed waits inside the driver until unlock; it does not fail.

``load_driver`` is the one seam where tests put a stand-in (``tests/fake_cuda.py``), as ``gpus.nvml.load_pynvml`` is
for NVML. Every call blocks (a checkpoint of 40 GiB takes seconds): callers run these in a thread of their own.

Custom storage (not built): newer drivers are to let the caller copy the checkpoint itself
(``CUcheckpointCheckpointArgs`` with a storage callback, ``cuCheckpointOperationComplete``), which could move the
bytes at the link's speed instead of the driver's staging. The driver on the GPU machine (580.159.04, CUDA 13000)
has neither: its ``CUcheckpointCheckpointArgs`` holds only ``reserved`` (docs/parking.md). The seam is
``LibCuda.checkpoint_args`` (today: none, the driver stages the copy) with ``LibCuda.offers`` saying what a driver
has; a storage backend would fill the args there and nothing above this module would change. Build it only
against a driver that has it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Protocol

RUNNING, LOCKED, CHECKPOINTED, FAILED = "running", "locked", "checkpointed", "failed"
_STATES = {0: RUNNING, 1: LOCKED, 2: CHECKPOINTED, 3: FAILED}  # CUprocessState
LOCK_TIMEOUT_MS = 10_000  # how long a lock waits for the process's GPU work under way to finish


class CheckpointError(Exception):
    """The driver refused or failed; ``code`` is its CUresult name (CUDA_ERROR_NOT_SUPPORTED, …)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class CheckpointDriver(Protocol):
    def unavailable(self) -> str | None:
        """Why this machine cannot checkpoint processes (a sentence), or None when it can."""

    def state(self, pid: int) -> str:
        """RUNNING, LOCKED, CHECKPOINTED or FAILED."""

    def lock(self, pid: int, timeout_ms: int) -> None: ...

    def checkpoint(self, pid: int) -> None: ...

    def restore(self, pid: int) -> None: ...

    def unlock(self, pid: int) -> None: ...


class _LockArgs(ctypes.Structure):  # CUcheckpointLockArgs: 64 bytes
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class LibCuda:
    """The checkpoint calls of ``libcuda.so.1`` through ctypes (no CUDA toolkit needed, only the driver)."""

    _CALLS = (
        "cuCheckpointProcessGetState",
        "cuCheckpointProcessLock",
        "cuCheckpointProcessCheckpoint",
        "cuCheckpointProcessRestore",
        "cuCheckpointProcessUnlock",
    )

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._reason: str | None = None
        self._loaded = False
        self._load_lock = threading.Lock()

    def _load(self) -> None:
        with self._load_lock:
            if self._loaded:
                return
            self._loaded = True
            try:
                lib = ctypes.CDLL("libcuda.so.1")
            except OSError:
                self._reason = "no NVIDIA driver on this machine (libcuda.so.1 was not found)"
                return
            missing = [name for name in self._CALLS if not hasattr(lib, name)]
            if missing:
                version = ctypes.c_int(0)
                lib.cuDriverGetVersion(ctypes.byref(version))
                self._reason = (
                    f"the NVIDIA driver (CUDA {version.value // 1000}.{version.value % 1000 // 10}) has no checkpoint "
                    "API: parking needs display driver 570 or newer"
                )
                return
            self._lib = lib
            result = lib.cuInit(0)
            if result != 0:
                self._reason = f"the CUDA driver did not start ({self._name(result)})"
                self._lib = None

    def _name(self, result: int) -> str:
        text = ctypes.c_char_p()
        if self._lib is not None and self._lib.cuGetErrorName(result, ctypes.byref(text)) == 0 and text.value:
            return text.value.decode()
        return f"CUresult {result}"

    def _call(self, name: str, pid: int, *args) -> None:
        self._load()
        if self._lib is None:
            raise CheckpointError(self._reason or "the checkpoint API is not available", "UNAVAILABLE")
        result = getattr(self._lib, name)(ctypes.c_int(pid), *args)
        if result != 0:
            code = self._name(result)
            raise CheckpointError(f"{name} of process {pid} failed: {code}", code)

    def unavailable(self) -> str | None:
        self._load()
        return self._reason

    def state(self, pid: int) -> str:
        value = ctypes.c_int(-1)
        self._call("cuCheckpointProcessGetState", pid, ctypes.byref(value))
        return _STATES.get(value.value, FAILED)

    def lock(self, pid: int, timeout_ms: int) -> None:
        args = _LockArgs(timeoutMs=timeout_ms)
        self._call("cuCheckpointProcessLock", pid, ctypes.byref(args))

    def offers(self) -> dict:
        """What this driver has: its CUDA version (``cuDriverGetVersion``), the checkpoint calls, and whether it has
        ``cuCheckpointOperationComplete`` (the custom-storage API's completion call)."""
        self._load()
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            return {"driver_version": None, "checkpoint_api": False, "operation_complete": False}
        version = ctypes.c_int(0)
        lib.cuDriverGetVersion(ctypes.byref(version))
        return {
            "driver_version": version.value,
            "checkpoint_api": self._lib is not None,
            "operation_complete": hasattr(lib, "cuCheckpointOperationComplete"),
        }

    def checkpoint_args(self) -> ctypes.c_void_p | None:
        """The seam for custom storage: the ``CUcheckpointCheckpointArgs`` to pass. None: the driver stages the copy
        itself (the only choice up to CUDA 13000, where the struct holds only ``reserved``)."""
        return None

    def checkpoint(self, pid: int) -> None:
        self._call("cuCheckpointProcessCheckpoint", pid, self.checkpoint_args())

    def restore(self, pid: int) -> None:
        self._call("cuCheckpointProcessRestore", pid, None)

    def unlock(self, pid: int) -> None:
        self._call("cuCheckpointProcessUnlock", pid, None)


_driver: CheckpointDriver | None = None


def load_driver() -> CheckpointDriver:
    """The checkpoint driver of this process (one, loaded at its first use)."""
    global _driver
    if _driver is None:
        _driver = LibCuda()
    return _driver


@dataclass(frozen=True)
class Outcome:
    """What a park or resume did: ``error`` is None when every process made it. ``steps``: each driver call as
    ``(call, pid, time.monotonic() at its start, seconds)``, for the operation's timeline."""

    error: CheckpointError | None = None
    rolled_back: bool = True  # on error: every process is back as it was (running, GPU memory on the GPU)
    steps: tuple[tuple[str, int, float, float], ...] = ()


class _Steps(list):
    def time(self, name: str, pid: int, call, *args):
        start = time.monotonic()
        try:
            return call(*args)
        finally:
            self.append((name, pid, start, time.monotonic() - start))


def park(driver: CheckpointDriver, pids: list[int], lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> Outcome:
    """Lock every process, then checkpoint each. On a failure, undo what was done: the kernel runs as before."""
    locked: list[int] = []
    saved: list[int] = []
    steps = _Steps()
    try:
        for pid in pids:
            steps.time("lock", pid, driver.lock, pid, lock_timeout_ms)
            locked.append(pid)
        for pid in pids:
            steps.time("checkpoint", pid, driver.checkpoint, pid)
            saved.append(pid)
        return Outcome(steps=tuple(steps))
    except CheckpointError as exc:
        clean = True
        for pid in locked:
            try:
                if pid in saved:
                    steps.time("restore", pid, driver.restore, pid)
                steps.time("unlock", pid, driver.unlock, pid)
            except CheckpointError:
                clean = False
        return Outcome(exc, rolled_back=clean, steps=tuple(steps))


def resume(driver: CheckpointDriver, pids: list[int]) -> Outcome:
    """Restore and unlock every process; a process already running (a retry) is left alone."""
    steps = _Steps()
    try:
        for pid in pids:
            state = steps.time("state", pid, driver.state, pid)
            if state == CHECKPOINTED:
                steps.time("restore", pid, driver.restore, pid)
                state = LOCKED
            if state == LOCKED:
                steps.time("unlock", pid, driver.unlock, pid)
            elif state != RUNNING:
                raise CheckpointError(f"process {pid} is in the driver's {state} state", "ILLEGAL_STATE")
        return Outcome(steps=tuple(steps))
    except CheckpointError as exc:
        return Outcome(exc, rolled_back=False, steps=tuple(steps))
