"""A pynvml stand-in that replays recorded NVML answers, for machines without a GPU (CI).

It replaces only the calls that would reach the driver: the error classes and constants are the real
pynvml's, so ``jupyter_gpuenv.gpus.nvml`` runs exactly the code it runs on a GPU machine. Recordings are JSON
(``tests/recordings/*.json``, written by ``tests/gpu/record_nvml.py`` on a real GPU or by hand):

    {"init": null | "LibraryNotFound",
     "system": {"nvmlSystemGetDriverVersion": "580.159.04", "nvmlSystemGetCudaDriverVersion": 13000},
     "devices": [{"nvmlDeviceGetName": "...", "nvmlDeviceGetMemoryInfo": {"total": 1, "used": 0, "free": 1},
                  "nvmlDeviceGetMemoryInfo_v2": {"total": 1, "reserved": 0, "used": 0, "free": 1},  # version=v2
                  "nvmlDeviceGetClockInfo": {"0": 1980, "2": 2619},      # keyed by the call's argument
                  "nvmlDeviceGetFanSpeed": {"error": "NotSupported"},   # the call raises
                  "nvmlDeviceGetProcessUtilization": [{"pid": 1, "timeStamp": 2, "smUtil": 71, "memUtil": 30}],
                  "error": "GpuIsLost",                                  # every call on it raises
                  "mig_devices": [null, {...}]}]}                        # MIG slots, null when empty
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any

import pynvml

RECORDINGS = Path(__file__).parent / "recordings"

# calls whose extra argument selects what is read; the recording keys them by that argument
_KEYED = {"nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperature", "nvmlDeviceGetPcieThroughput"}
_STRUCTS = {"nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPciInfo"}
_PROCESS_LISTS = {"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"}
# per-process samples ({"pid", "timeStamp", "smUtil", ...}); the call's time stamp argument is not replayed
_SAMPLE_LISTS = {"nvmlDeviceGetProcessUtilization"}


def load(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def _raise(name: str):
    raise getattr(pynvml, f"NVMLError_{name}")()


class _Handle:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record


class FakePynvml(types.ModuleType):
    """Module-shaped: ``FakePynvml(recording).nvmlDeviceGetName(handle)`` answers like pynvml."""

    def __init__(self, recording: dict[str, Any]) -> None:
        super().__init__("pynvml")
        for name in dir(pynvml):  # real constants and error classes
            if name.startswith(("NVML_", "NVMLError", "nvmlMemory_v")):
                setattr(self, name, getattr(pynvml, name))
        self.recording = copy.deepcopy(recording)
        self.initialized = False
        self.calls = 0

    # -- the library ---------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls += 1
        if self.recording.get("init"):
            _raise(self.recording["init"])
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def _system(self, name: str) -> Any:
        self.calls += 1
        if not self.initialized:
            _raise("Uninitialized")
        if self.recording.get("init"):  # the driver went away while running
            _raise(self.recording["init"])
        return self._answer(self.recording["system"], name)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._system("nvmlSystemGetDriverVersion")

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._system("nvmlSystemGetCudaDriverVersion")

    def nvmlDeviceGetCount(self) -> int:
        self._system("nvmlSystemGetDriverVersion")
        return len(self.recording["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._system("nvmlSystemGetDriverVersion")
        devices = self.recording["devices"]
        if not 0 <= index < len(devices):
            _raise("InvalidArgument")
        return _Handle(devices[index])

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._device(handle, None)
        return len(handle.record.get("mig_devices", []))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        self._device(handle, None)
        slot = handle.record.get("mig_devices", [])[index]
        if slot is None:
            _raise("NotFound")
        return _Handle(slot)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None):
        """``version=nvmlMemory_v2`` answers from ``nvmlDeviceGetMemoryInfo_v2`` (with ``reserved``); a recording
        without it answers as a driver too old for v2 does."""
        if version is None:
            return self._device(handle, "nvmlDeviceGetMemoryInfo")
        if "nvmlDeviceGetMemoryInfo_v2" not in handle.record:
            self._device(handle, None)
            _raise("ArgumentVersionMismatch")
        return types.SimpleNamespace(**self._device(handle, "nvmlDeviceGetMemoryInfo_v2"))

    # -- per-device reads ------------------------------------------------------------------------------
    def _device(self, handle: _Handle, name: str | None, *args: Any) -> Any:
        self.calls += 1
        if not self.initialized:
            _raise("Uninitialized")
        if self.recording.get("init"):
            _raise(self.recording["init"])
        if handle.record.get("error"):
            _raise(handle.record["error"])
        if name is None:
            return None
        value = self._answer(handle.record, name)
        if name in _KEYED:
            value = self._answer(value, str(args[0]))
        if name in _STRUCTS:
            return types.SimpleNamespace(**value)
        if name in _PROCESS_LISTS or name in _SAMPLE_LISTS:
            return [types.SimpleNamespace(**p) for p in value]
        return value

    @staticmethod
    def _answer(record: dict[str, Any], name: str) -> Any:
        if name not in record:
            _raise("FunctionNotFound")
        value = record[name]
        if isinstance(value, dict) and set(value) == {"error"}:
            _raise(value["error"])
        return value

    def __getattr__(self, name: str):
        if name.startswith("nvmlDeviceGet"):
            return lambda handle, *args: self._device(handle, name, *args)
        raise AttributeError(name)
