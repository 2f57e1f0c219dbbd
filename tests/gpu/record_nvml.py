"""Record the real NVML answers that ``jupyter_gpuenv.gpus.nvml`` reads, as a FakePynvml recording (JSON).

    python3 tests/gpu/record_nvml.py OUT.json [--description TEXT]

Run it on a machine with an NVIDIA driver. The real ``pynvml`` module is wrapped in a proxy that
forwards every call and writes down its answer; ``NvmlReader(proxy, pcie=True).read()`` then makes
exactly the calls the product makes, so the recording holds every one of them (and nothing the product
does not read). An NVML error is recorded as ``{"error": "NotSupported"}`` and raised on as before. The
snapshot the reader built from those answers is stored beside them (``"snapshot"``), so that
``tests/gpu/test_recording_replay.py`` can check that replaying the recording through ``FakePynvml``
gives the same snapshot as this live read.

Extra facts that are no NVML call of the product (nvidia-smi's view, memory info v2) go under
``"extra"``, which FakePynvml ignores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for jupyter_gpuenv

from jupyter_gpuenv.gpus.nvml import NvmlReader, error_name  # noqa: E402

# calls whose extra argument selects what is read: recorded under the argument, as FakePynvml expects
KEYED = {"nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperature", "nvmlDeviceGetPcieThroughput"}
SYSTEM = {"nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion"}
# calls FakePynvml answers from the recording's shape rather than from a recorded value
STRUCTURAL = {
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
}


def plain(name: str, value: Any) -> Any:
    """A pynvml answer as JSON, in the shape FakePynvml gives back."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        if name.endswith("RunningProcesses"):
            return [{"pid": int(p.pid), "usedGpuMemory": p.usedGpuMemory} for p in value]
        return [plain(name, v) for v in value]
    if name == "nvmlDeviceGetPciInfo":
        return {"busId": plain(name, value.busId)}
    if name == "nvmlDeviceGetMemoryInfo":
        return {"total": value.total, "used": value.used, "free": value.free}
    if name == "nvmlDeviceGetMemoryInfo_v2":
        return {"total": value.total, "reserved": value.reserved, "used": value.used, "free": value.free}
    if name == "nvmlDeviceGetUtilizationRates":
        return {"gpu": value.gpu, "memory": value.memory}
    fields = getattr(value, "_fields_", None)
    if fields:
        return {f[0]: plain(name, getattr(value, f[0])) for f in fields}
    if isinstance(value, types.SimpleNamespace):  # a replayed answer (FakePynvml), recorded again
        return {k: plain(name, v) for k, v in vars(value).items()}
    return repr(value)


class Handle:
    """A real NVML handle plus the place in the recording where its answers go."""

    def __init__(self, real: Any, record: dict[str, Any]) -> None:
        self.real, self.record = real, record


class RecordingNvml:
    """Module-shaped proxy over the real pynvml that writes down every answer."""

    def __init__(self, pynvml: Any) -> None:
        self._n = pynvml
        self.recording: dict[str, Any] = {"init": None, "system": {}, "devices": []}
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._n, name)
        if not name.startswith("nvml") or not callable(real):
            return real  # constants, error classes
        return lambda *args, **kwargs: self._call(name, real, *args, **kwargs)

    def _call(self, name: str, real: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        handle = args[0] if args and isinstance(args[0], Handle) else None
        real_args = [a.real if isinstance(a, Handle) else a for a in args]
        try:
            value = real(*real_args, **kwargs)
            if name == "nvmlDeviceGetMemoryInfo" and kwargs.get("version") is not None:
                name = "nvmlDeviceGetMemoryInfo_v2"  # FakePynvml answers version=v2 from this key
        except self._n.NVMLError as exc:
            self._store(name, handle, args, {"error": error_name(exc)})
            if name == "nvmlInit":
                self.recording["init"] = error_name(exc)
            raise
        if name == "nvmlDeviceGetHandleByIndex":
            index = args[0]
            while len(self.recording["devices"]) <= index:
                self.recording["devices"].append({})
            return Handle(value, self.recording["devices"][index])
        if name == "nvmlDeviceGetMaxMigDeviceCount":
            handle.record.setdefault("mig_devices", [None] * int(value))
            return value
        if name == "nvmlDeviceGetMigDeviceHandleByIndex":
            slots = handle.record.setdefault("mig_devices", [])
            while len(slots) <= args[1]:
                slots.append(None)
            slots[args[1]] = slots[args[1]] or {}
            return Handle(value, slots[args[1]])
        self._store(name, handle, args, plain(name, value))
        return value

    def _store(self, name: str, handle: Handle | None, args: tuple, value: Any) -> None:
        if name in STRUCTURAL:
            return
        if name in SYSTEM:
            self.recording["system"][name] = value
            return
        if handle is None:
            return
        if name in KEYED:
            handle.record.setdefault(name, {})[str(int(args[1]))] = value
        else:
            handle.record[name] = value


def nvidia_smi() -> list[dict[str, str]]:
    fields = (
        "index,uuid,name,pci.bus_id,memory.total,memory.used,memory.reserved,utilization.gpu,"
        "temperature.gpu,power.draw,power.limit,clocks.sm,clocks.mem"
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [{"error": str(exc)}]
    names = fields.split(",")
    return [
        dict(zip(names, (v.strip() for v in line.split(",")), strict=False)) for line in out.stdout.splitlines() if line
    ]


def memory_v2(pynvml: Any, count: int) -> list[Any]:
    """NVML's v2 memory info (used excludes what the driver reserves), as nvidia-smi shows it."""
    rows = []
    for i in range(count):
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i), version=pynvml.nvmlMemory_v2)
            rows.append({"total": info.total, "reserved": info.reserved, "used": info.used, "free": info.free})
        except Exception as exc:  # older drivers or bindings without v2
            rows.append({"error": f"{type(exc).__name__}: {exc}"})
    return rows


def record(description: str | None = None) -> dict[str, Any]:
    import pynvml

    proxy = RecordingNvml(pynvml)
    reader = NvmlReader(proxy, pcie=True)
    reason = reader.init()
    rec = proxy.recording
    if reason is not None:
        rec["description"] = description or f"no usable NVML: {reason}"
        return rec
    started = time.perf_counter()
    snapshot = reader.read()
    elapsed = time.perf_counter() - started
    extra = {
        "host": socket.gethostname(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "read_seconds": round(elapsed, 4),
        "calls": len(proxy.calls),
        "pynvml_version": getattr(pynvml, "__version__", None) or _dist_version("nvidia-ml-py"),
        "memory_v2": memory_v2(pynvml, len(rec["devices"])),
        "nvidia_smi": nvidia_smi(),
    }
    reader.shutdown()
    first = snapshot.gpus[0] if snapshot.gpus else None
    rec["description"] = description or (
        f"{len(snapshot.gpus)}x {first.name if first else '?'}, driver {snapshot.driver_version} "
        f"(CUDA {snapshot.cuda_driver_version}); recorded live on a real GPU by tests/gpu/record_nvml.py"
    )
    rec["recorded_with"] = {"pcie": True}
    rec["snapshot"] = snapshot.to_json()
    rec["extra"] = extra
    return rec


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--description")
    args = p.parse_args()
    rec = record(args.description)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    snap = rec.get("snapshot") or {}
    print(
        f"recorded {len(rec['devices'])} device(s), {rec.get('extra', {}).get('calls', 0)} NVML calls, "
        f"{sum(len(g['processes']) for g in snap.get('gpus', []))} process(es) -> {args.out}"
    )
    return 0 if rec.get("init") is None else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
