"""The server-side settings of jupyter_gpuenv, set as ``c.GpuEnv.<name>`` in jupyter_server_config.py."""

from __future__ import annotations

from traitlets import Bool, Float, Int, Unicode, validate
from traitlets.config import Configurable


class GpuEnv(Configurable):
    """Settings of the GPU panel's server side."""

    sample_interval = Float(
        1.0,
        config=True,
        help="Seconds between two NVML samples. One sampler serves every browser tab of this server, "
        "so the cost does not grow with the number of viewers.",
    )

    history_length = Int(
        300,
        config=True,
        help="How many samples the history ring buffer keeps (GET gpus/history). With the default "
        "interval of 1 s, 300 samples are the last five minutes.",
    )

    visible_devices = Unicode(
        None,
        allow_none=True,
        config=True,
        help="GPUs this server shows and gives to kernels: 'all', 'none', or a comma-separated list of "
        "NVML indices or UUIDs ('0,2', 'GPU-5f3c…'). Unset: CUDA_VISIBLE_DEVICES, then "
        "NVIDIA_VISIBLE_DEVICES, then all. Under JupyterHub, set the variable per user in the spawner.",
    )

    pcie_throughput = Bool(
        False,
        config=True,
        help="Also sample PCIe throughput. Off by default: NVML measures a ~20 ms window per GPU and "
        "direction, which costs more than every other field together.",
    )

    driver_retry_interval = Float(
        30.0,
        config=True,
        help="Seconds between two attempts to initialise NVML while no driver answers, so a driver "
        "that is loaded after the server started is picked up.",
    )

    @validate("sample_interval", "driver_retry_interval")
    def _positive_interval(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be a positive number of seconds")
        return proposal["value"]

    @validate("history_length")
    def _positive_length(self, proposal):
        if proposal["value"] < 1:
            raise ValueError("history_length must be at least 1")
        return proposal["value"]
