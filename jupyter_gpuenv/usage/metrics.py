"""Prometheus metrics of the GPUs, of this server's kernels and of their GPU usage.

jupyter_server already serves prometheus_client's default registry at ``{base_url}metrics`` (authenticated unless
``c.ServerApp.authenticate_prometheus = False``). :func:`export` registers one collector there, once per process; a
scrape builds the series from the :class:`~jupyter_gpuenv.usage.counter.View` the usage tracker last published:
memory only, no NVML call, no kernel manager, no I/O. Names follow Prometheus's conventions (base units, ``_total``
counters); label values are bounded in length, and an ended kernel's counters are exported once more with their final
values, then dropped. docs/metrics.md lists the series and shows how to scrape them.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jupyter_gpuenv.gpus.nvml import GpuSample
from jupyter_gpuenv.usage.counter import KernelUsage, UsageCounter, View

PREFIX = "jupyter_gpuenv_"
LABEL_MAX = 200  # characters in a label value

GPU_LABELS = ["gpu", "uuid", "name"]
KERNEL_LABELS = ["kernel_id", "notebook", "environment", "container", "user"]
GPU_KERNEL_LABELS = ["gpu", "uuid", "kernel_id", "notebook", "user"]
USAGE_LABELS = ["kernel_id", "notebook", "environment", "user"]

_GPU_GAUGES = [  # name, help, value of a GPU (None: the series is left out)
    ("gpu_memory_used_bytes", "GPU memory held by processes, as nvidia-smi counts it.", lambda g: g.memory.used),
    ("gpu_memory_total_bytes", "GPU memory in total.", lambda g: g.memory.total),
    (
        "gpu_utilization_ratio",
        "Share of the last sample period in which a kernel ran on the GPU (NVML utilization.gpu, 0 to 1).",
        lambda g: None if g.utilization.gpu is None else g.utilization.gpu / 100,
    ),
    ("gpu_power_watts", "Power draw of the GPU.", lambda g: g.power_w),
    ("gpu_power_limit_watts", "Power limit the driver enforces.", lambda g: g.power_limit_w),
    ("gpu_temperature_celsius", "GPU core temperature.", lambda g: g.temperature_c),
]


def bounded(value: str | None, limit: int = LABEL_MAX) -> str:
    """A label value of at most ``limit`` characters; a long path keeps its end, where the file name is."""
    text = value or ""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _gpu_labels(gpu: GpuSample) -> list[str]:
    return [str(gpu.index), bounded(gpu.uuid), bounded(gpu.name)]


def _kernel_labels(u: KernelUsage, names: list[str]) -> list[str]:
    return [bounded(getattr(u, name)) for name in names]


def families(view: View) -> list[Metric]:
    """Every series of one scrape, from one published view."""
    snapshot = view.snapshot

    def gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)

    available = gauge(
        "nvml_available", "1 when NVML answered at the last sample, 0 when there is no GPU or driver.", []
    )
    available.add_metric([], 1 if snapshot.available else 0)
    out: list[Metric] = [available]

    for name, documentation, value_of in _GPU_GAUGES:
        family = gauge(name, documentation, GPU_LABELS)
        for gpu in snapshot.gpus if snapshot.available else []:
            value = value_of(gpu)
            if value is not None and not gpu.error:
                family.add_metric(_gpu_labels(gpu), value)
        out.append(family)

    held = gauge(
        "kernel_gpus", "GPUs a kernel holds: assigned to its container, or where its processes run.", KERNEL_LABELS
    )
    memory = gauge("kernel_gpu_memory_bytes", "GPU memory a kernel's processes hold, on all GPUs.", KERNEL_LABELS)
    parked = gauge("kernel_parked", "1 while a kernel is parked (its GPU memory moved to host memory).", KERNEL_LABELS)
    for u in view.usages:
        labels = _kernel_labels(u, KERNEL_LABELS)
        held.add_metric(labels, u.held_gpus)
        parked.add_metric(labels, 1 if u.parked else 0)
        if u.gpu_memory is not None:
            memory.add_metric(labels, u.gpu_memory)
    out += [held, memory, parked]

    by_kernel = {u.kernel_id: u for u in view.usages}
    per_gpu = gauge("gpu_kernel_memory_bytes", "GPU memory a kernel's processes hold on one GPU.", GPU_KERNEL_LABELS)
    for gpu in snapshot.gpus if snapshot.available else []:
        used: dict[str, int] = {}
        for proc in gpu.processes:
            if proc.kernel_id in by_kernel:
                used[proc.kernel_id] = used.get(proc.kernel_id, 0) + (proc.used_memory or 0)
        for kernel_id, used_bytes in used.items():
            u = by_kernel[kernel_id]
            per_gpu.add_metric(_gpu_labels(gpu)[:2] + _kernel_labels(u, ["kernel_id", "notebook", "user"]), used_bytes)
    out.append(per_gpu)

    seconds = CounterMetricFamily(
        PREFIX + "gpu_seconds", "GPU-seconds a kernel held (seconds times GPUs held).", labels=USAGE_LABELS
    )
    byte_seconds = CounterMetricFamily(
        PREFIX + "gpu_memory_byte_seconds",
        "GPU memory a kernel held, integrated over time (bytes times seconds).",
        labels=USAGE_LABELS,
    )
    for totals in view.totals:
        labels = _kernel_labels(totals.labels, USAGE_LABELS)
        seconds.add_metric(labels, totals.gpu_seconds)
        byte_seconds.add_metric(labels, totals.gpu_memory_byte_seconds)
    out += [seconds, byte_seconds]
    return out


class Collector:
    """Reads whichever counter was exported last: the one in prometheus_client's registry, or a broker's own."""

    def __init__(self) -> None:
        self.source: UsageCounter | None = None

    def describe(self) -> list[Metric]:
        return []  # names are not checked at registration: the source may not be there yet

    def collect(self) -> list[Metric]:
        source = self.source
        if source is None:
            return []
        view = source.view
        out = families(view)
        ended = [(t.labels.kernel_id, t.retired_at) for t in view.totals if t.retired_at is not None]
        source.meter.mark_exported(ended)
        return out


_collector = Collector()
_registered = False


def export(source: UsageCounter) -> None:
    """Serve ``source``'s metrics on jupyter_server's /metrics."""
    global _registered
    if not _registered:
        REGISTRY.register(_collector)
        _registered = True
    _collector.source = source


def unexport(source: UsageCounter) -> None:
    if _collector.source is source:
        _collector.source = None
