"""Reading GPUs through NVML, turned into plain dataclasses.

Pure: no tornado, no threads. The pynvml module is passed in (``NvmlReader(pynvml)``), which is the one
seam where tests feed recorded values instead of a driver. Every NVML failure becomes data: a field the
device does not support is ``None``; a missing driver is ``Snapshot(available=False, reason=...)``; a lost
GPU is a ``GpuSample`` with ``error`` set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def load_pynvml() -> Any:
    """The pynvml module (nvidia-ml-py): the one seam where tests feed recorded values instead of a driver."""
    import pynvml

    return pynvml


# NVML errors that mean "this device cannot tell you that": the field is null, not an error.
_FIELD_ABSENT = ("NotSupported", "NotFound", "NoData", "FunctionNotFound", "InvalidArgument", "NoPermission")
# NVML errors that mean the whole library is gone or unusable: the sampler must start over.
_LIBRARY_GONE = ("Uninitialized", "DriverNotLoaded", "LibraryNotFound", "LibRmVersionMismatch")

_INIT_REASONS = {
    "LibraryNotFound": "no NVIDIA driver on this machine (libnvidia-ml.so.1 was not found)",
    "DriverNotLoaded": "the NVIDIA driver is installed but not loaded",
    "NoPermission": "this user may not access the NVIDIA driver",
    "LibRmVersionMismatch": "the NVIDIA driver library and kernel module versions differ; a reboot usually fixes it",
    "Uninitialized": "NVML was shut down; it is initialised again on the next attempt",
}


@dataclass
class Memory:
    total: int | None = None
    used: int | None = None  # what processes hold, as nvidia-smi counts it (without the driver's reserve)
    free: int | None = None
    reserved: int | None = None  # the driver's own reserve; None where NVML has no v2 memory info


@dataclass
class Utilization:
    gpu: int | None = None
    memory: int | None = None


@dataclass
class Clocks:
    sm: int | None = None
    memory: int | None = None


@dataclass
class GpuProcess:
    pid: int
    used_memory: int | None
    type: str  # "compute" or "graphics"
    kernel_id: str | None = None
    container_id: str | None = None
    user: str | None = None  # on a shared host: whose kernel another person's process is, as the broker says
    gpu_instance: str | None = None  # MIG device uuid the process runs on, when MIG is on
    gpu_utilization: int | None = None  # % of the GPU's SMs it kept busy lately; None while it sleeps (or under MIG)
    # from /proc (gpus.processes), as far as this server may show them
    host_memory: int | None = None  # bytes resident
    started_at: float | None = None  # seconds since the epoch
    command: str | None = None  # shortened command line
    owner: str | None = None  # the account it runs as


@dataclass
class MigDevice:
    index: int
    uuid: str | None
    name: str | None
    memory: Memory


@dataclass
class GpuSample:
    index: int
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    minor_number: int | None = None  # the N of /dev/nvidiaN
    memory: Memory = field(default_factory=Memory)
    utilization: Utilization = field(default_factory=Utilization)
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    fan_speed_pct: int | None = None
    clocks_mhz: Clocks = field(default_factory=Clocks)
    pcie_mb_s: dict[str, float] | None = None
    mig_mode: bool | None = None
    mig_devices: list[MigDevice] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    error: str | None = None


@dataclass
class Snapshot:
    available: bool
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    sampled_at: float = 0.0
    gpus: list[GpuSample] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LibraryGone(Exception):
    """NVML stopped working as a whole (driver unloaded, library missing): re-initialise later."""


def error_name(exc: BaseException) -> str:
    """``NVMLError_NotSupported`` -> ``NotSupported``; other exceptions keep their class name."""
    return type(exc).__name__.removeprefix("NVMLError_")


def describe(exc: BaseException) -> str:
    """NVML's own message followed by what it means for the user."""
    return f"NVML: {exc} — {_INIT_REASONS.get(error_name(exc), 'NVML could not be initialised')}"


def cuda_version_string(value: int) -> str:
    """NVML's ``12040`` -> ``"12.4"``."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """Reads a snapshot of every GPU through a pynvml-shaped module.

    ``visible`` decides which GPUs are shown: a callable given ``(index, uuid)`` returning True for the
    GPUs this server may use.
    """

    def __init__(self, nvml: Any, *, pcie: bool = False) -> None:
        self.nvml = nvml
        self.pcie = pcie
        self.initialized = False
        self._utilization_seen: dict[str, int] = {}  # GPU uuid -> newest per-process sample read (NVML's µs)

    # -- lifecycle -------------------------------------------------------------------------------
    def init(self) -> str | None:
        """Initialise NVML. Returns ``None`` on success, else the reason in words a user understands."""
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            return describe(exc)
        except OSError as exc:  # a broken libnvidia-ml can fail to load at the ctypes level
            return f"NVML could not be loaded: {exc}"
        self.initialized = True
        return None

    def shutdown(self) -> None:
        if self.initialized:
            self.initialized = False
            with contextlib.suppress(self.nvml.NVMLError):
                self.nvml.nvmlShutdown()

    # -- reading -----------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML function; an unsupported field is None, a vanished library raises LibraryGone."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            name = error_name(exc)
            if name in _LIBRARY_GONE:
                raise LibraryGone(describe(exc)) from exc
            if name in _FIELD_ABSENT:
                return None
            raise

    def read(self, visible: Callable[[int, str | None], bool] = lambda i, u: True) -> Snapshot:
        """One snapshot of the visible GPUs. Raises LibraryGone when NVML must be re-initialised."""
        n = self.nvml
        driver = self._call(n.nvmlSystemGetDriverVersion)
        cuda = self._call(n.nvmlSystemGetCudaDriverVersion)
        count = self._call(n.nvmlDeviceGetCount) or 0
        gpus = []
        for index in range(count):
            try:
                handle = n.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(self._call(n.nvmlDeviceGetUUID, handle))
            except n.NVMLError as exc:
                if error_name(exc) in _LIBRARY_GONE:
                    raise LibraryGone(describe(exc)) from exc
                gpus.append(GpuSample(index=index, error=_gpu_error(exc)))
                continue
            if not visible(index, uuid):
                continue
            try:
                gpus.append(self._read_gpu(index, handle, uuid))
            except n.NVMLError as exc:
                gpus.append(GpuSample(index=index, uuid=uuid, error=_gpu_error(exc)))
        return Snapshot(
            available=True,
            driver_version=_text(driver) if driver is not None else None,
            cuda_driver_version=cuda_version_string(cuda) if cuda else None,
            sampled_at=time.time(),
            gpus=gpus,
        )

    def _read_gpu(self, index: int, handle: Any, uuid: str) -> GpuSample:
        n, call = self.nvml, self._call
        gpu = GpuSample(index=index, uuid=uuid)
        name = call(n.nvmlDeviceGetName, handle)
        gpu.name = _text(name) if name is not None else None
        pci = call(n.nvmlDeviceGetPciInfo, handle)
        gpu.pci_bus_id = _text(pci.busId) if pci is not None else None
        gpu.minor_number = call(n.nvmlDeviceGetMinorNumber, handle)
        gpu.memory = self._memory_info(handle)
        util = call(n.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            gpu.utilization = Utilization(gpu=util.gpu, memory=util.memory)
        gpu.temperature_c = call(n.nvmlDeviceGetTemperature, handle, n.NVML_TEMPERATURE_GPU)
        gpu.power_w = _watts(call(n.nvmlDeviceGetPowerUsage, handle))
        gpu.power_limit_w = _watts(call(n.nvmlDeviceGetEnforcedPowerLimit, handle))
        gpu.fan_speed_pct = call(n.nvmlDeviceGetFanSpeed, handle)
        gpu.clocks_mhz = Clocks(
            sm=call(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_SM),
            memory=call(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_MEM),
        )
        if self.pcie:  # each call samples a ~20 ms window: only when asked for
            tx = call(n.nvmlDeviceGetPcieThroughput, handle, n.NVML_PCIE_UTIL_TX_BYTES)
            rx = call(n.nvmlDeviceGetPcieThroughput, handle, n.NVML_PCIE_UTIL_RX_BYTES)
            if tx is not None and rx is not None:
                gpu.pcie_mb_s = {"tx": tx / 1024, "rx": rx / 1024}  # NVML reports KB/s
        mig = call(n.nvmlDeviceGetMigMode, handle)
        gpu.mig_mode = None if mig is None else bool(mig[0])
        gpu.processes = self._processes(handle)
        self._process_utilization(handle, uuid, gpu.processes)
        if gpu.mig_mode:
            gpu.mig_devices, mig_processes = self._mig_devices(handle)
            gpu.processes += mig_processes
        return gpu

    def _memory_info(self, handle: Any) -> Memory:
        """v2 first: v1's ``used`` includes the driver's reserve (~480 MiB on an idle H100)."""
        n = self.nvml
        if hasattr(n, "nvmlMemory_v2"):
            try:
                info = self._call(lambda h: n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2), handle)
            except (n.NVMLError, TypeError):  # ArgumentVersionMismatch on old drivers, TypeError on old bindings
                info = None
            if info is not None:
                return Memory(total=info.total, used=info.used, free=info.free, reserved=info.reserved)
        return _memory(self._call(n.nvmlDeviceGetMemoryInfo, handle))

    def _processes(self, handle: Any, gpu_instance: str | None = None) -> list[GpuProcess]:
        n, found = self.nvml, {}
        for kind, fn in (
            ("compute", n.nvmlDeviceGetComputeRunningProcesses),
            ("graphics", n.nvmlDeviceGetGraphicsRunningProcesses),
        ):
            for proc in self._call(fn, handle) or []:
                if proc.pid in found:  # a process with both contexts is listed once, as compute
                    continue
                found[proc.pid] = GpuProcess(
                    pid=proc.pid, used_memory=_bytes_or_none(proc.usedGpuMemory), type=kind, gpu_instance=gpu_instance
                )
        return list(found.values())

    def _process_utilization(self, handle: Any, uuid: str, processes: list[GpuProcess]) -> None:
        """Each process's SM % since the last read. NVML answers NotFound when no process ran since then: the
        GPU idles, which is no error (the processes' value stays None)."""
        try:
            samples = self._call(self.nvml.nvmlDeviceGetProcessUtilization, handle, self._utilization_seen.get(uuid, 0))
        except self.nvml.NVMLError:  # pynvml raises NVMLError(SUCCESS) for an empty list: no samples either
            samples = None
        by_pid, newest = process_utilization(samples or [])
        if newest:
            self._utilization_seen[uuid] = newest
        for p in processes:
            p.gpu_utilization = by_pid.get(p.pid)

    def _mig_devices(self, handle: Any) -> tuple[list[MigDevice], list[GpuProcess]]:
        n, call = self.nvml, self._call
        devices, processes = [], []
        for slot in range(call(n.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            mig = call(n.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            if mig is None:  # empty slot
                continue
            uuid = call(n.nvmlDeviceGetUUID, mig)
            uuid = _text(uuid) if uuid is not None else None
            name = call(n.nvmlDeviceGetName, mig)
            devices.append(
                MigDevice(
                    index=slot,
                    uuid=uuid,
                    name=_text(name) if name is not None else None,
                    memory=_memory(call(n.nvmlDeviceGetMemoryInfo, mig)),
                )
            )
            processes += self._processes(mig, gpu_instance=uuid)
        return devices, processes


def _gpu_error(exc: BaseException) -> str:
    if error_name(exc) == "GpuIsLost":
        return "GPU is lost: it fell off the bus or stopped answering; the host needs a GPU reset or a reboot"
    return f"NVML: {exc}"


def _memory(info: Any) -> Memory:
    if info is None:
        return Memory()
    return Memory(total=info.total, used=info.used, free=info.free)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _bytes_or_none(value: int | None) -> int | None:
    # NVML reports NVML_VALUE_NOT_AVAILABLE (2**64-1) where it cannot see a process's memory; pynvml turns
    # that into None in recent versions, older ones pass the sentinel through.
    return None if value is None or value >= 2**63 else int(value)


def process_utilization(samples: list[Any]) -> tuple[dict[int, int], int]:
    """NVML's per-process samples (``pid``, ``timeStamp``, ``smUtil``) as pid -> the SM % of its newest sample,
    and the newest time stamp (to ask for what came after it next time). Pure."""
    newest: dict[int, Any] = {}
    for s in samples:
        if s.pid not in newest or s.timeStamp > newest[s.pid].timeStamp:
            newest[s.pid] = s
    return {pid: int(s.smUtil) for pid, s in newest.items()}, max((s.timeStamp for s in samples), default=0)
