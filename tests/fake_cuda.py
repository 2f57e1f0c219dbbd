"""A stand-in for the driver's checkpoint API (``jupyter_gpuenv.parking.checkpoint``), for machines without a GPU (CI).

It keeps the real API's state machine per process (running → locked → checkpointed → locked → running; any other
step fails with CUDA_ERROR_ILLEGAL_STATE, an unknown pid with CUDA_ERROR_INVALID_VALUE) and acts on the NVML that
``FakePynvml`` replays: a checkpoint takes the process off its GPU in the recording, a restore puts it back, as
the real driver does to what NVML reports. ``fail`` makes the next call of one step fail; ``hang`` makes one
step block (a restore that wedges). The same code path runs against the real driver in tests/gpu/.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from jupyter_gpuenv.parking.checkpoint import CHECKPOINTED, LOCKED, RUNNING, CheckpointError

PROCESS_LISTS = ("nvmlDeviceGetComputeRunningProcesses",)


class FakeCheckpoint:
    def __init__(self, nvml: Any, unavailable: str | None = None) -> None:
        self.nvml = nvml
        self.reason = unavailable
        self.states: dict[int, str] = {}
        self.saved: dict[int, list[tuple[int, dict]]] = {}
        self.fail: dict[str, str] = {}  # step -> the CUresult name its next call fails with
        self.hang: dict[str, threading.Event] = {}  # step -> blocks until the event is set
        self.calls: list[tuple[str, int]] = []

    def unavailable(self) -> str | None:
        return self.reason

    def _step(self, name: str, pid: int, before: str, after: str) -> None:
        self.calls.append((name, pid))
        if name in self.hang:
            self.hang[name].wait(60)
        if name in self.fail:
            code = self.fail.pop(name)
            raise CheckpointError(f"cuCheckpointProcess{name.title()} of process {pid} failed: {code}", code)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise CheckpointError(f"process {pid}: CUDA_ERROR_INVALID_VALUE", "CUDA_ERROR_INVALID_VALUE") from None
        if self.states.get(pid, RUNNING) != before:
            raise CheckpointError(f"process {pid}: CUDA_ERROR_ILLEGAL_STATE", "CUDA_ERROR_ILLEGAL_STATE")
        self.states[pid] = after

    def state(self, pid: int) -> str:
        return self.states.get(pid, RUNNING)

    def lock(self, pid: int, timeout_ms: int) -> None:
        self._step("lock", pid, RUNNING, LOCKED)

    def checkpoint(self, pid: int) -> None:
        self._step("checkpoint", pid, LOCKED, CHECKPOINTED)
        moved = []
        for index, device in enumerate(self.nvml.recording["devices"]):
            for key in PROCESS_LISTS:
                kept = []
                for entry in device.get(key, []):
                    (moved.append((index, entry)) if entry.get("pid") == pid else kept.append(entry))
                device[key] = kept
        self.saved[pid] = moved

    def restore(self, pid: int) -> None:
        self._step("restore", pid, CHECKPOINTED, LOCKED)
        devices = self.nvml.recording["devices"]
        for index, entry in self.saved.pop(pid, []):
            devices[index][PROCESS_LISTS[0]] = [*devices[index].get(PROCESS_LISTS[0], []), entry]

    def unlock(self, pid: int) -> None:
        self._step("unlock", pid, LOCKED, RUNNING)
