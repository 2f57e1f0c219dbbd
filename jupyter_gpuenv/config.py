"""The server-side settings of jupyter_gpuenv, set as ``c.GpuEnv.<name>`` in jupyter_server_config.py."""

from __future__ import annotations

import os
import tempfile

from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Dict, Float, Int, Unicode, default, validate
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

    # -- container kernels ----------------------------------------------------------------------------
    environments = Dict(
        config=True,
        help="Container environments by name, e.g. {'pytorch': {'display_name': 'PyTorch 2.6 / CUDA 12.4', "
        "'image': 'pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime', 'gpus': 'exclusive:1', 'shm_size': '8g'}}. "
        "Keys: image, display_name, python, gpus (all | none | N | device=0,1 | exclusive:N), gpu_mode (auto | toolkit "
        "| devices | none), shm_size, memory, cpus, network (none | host), transport (ipc | tcp), "
        "cuda_version, mounts, env_allow, env, kernel_runtime (auto | image | mount). A kernelspec selects one "
        "with metadata.kernel_provisioner.config = {'environment': NAME}; `jupyter gpuenv add` writes those.",
    )

    warm_kernels = Dict(
        value_trait=Int(),
        config=True,
        help="Warm kernels per environment of c.GpuEnv.environments, e.g. {'pytorch': 1}: containers started ahead "
        "with ipykernel imported, so that a start of that environment takes one and is ready at once; the pool "
        "refills in the background, a changed environment's are replaced, none stays after the server stops. "
        "Each holds its container's memory (tens of MB) and no GPU memory; an exclusive environment's only a soft "
        "claim on a free GPU, which any start may take. Not with a broker yet.",
    )

    warm_imports = Dict(
        config=True,
        help="Modules a warm kernel imports ahead, per environment, e.g. {'pytorch': ['torch']}: the first cell's "
        "`import torch` is then instant. No CUDA context is made (that would hold GPU memory).",
    )

    allow_kernelspec_environments = Bool(
        True,
        config=True,
        help="Accept environments defined inside kernelspecs (what `jupyter gpuenv add` writes). Set False "
        "so that only the environments in this configuration can start: a kernelspec then may only name one.",
    )

    broker = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The shared-host broker that starts container kernels for every user of this machine, e.g. "
        "'unix:///run/jupyter-gpuenv/broker.sock'. Set: this server never talks to a Docker engine itself, and "
        "a kernelspec may only name an environment the broker's administrator defined. Unset: this server uses "
        "the Docker engine directly (one person's machine).",
    )

    docker_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Docker engine to start kernels on, e.g. 'unix:///run/user/1000/docker.sock' for a rootless "
        "engine. Unset: DOCKER_HOST, then the default socket.",
    )

    memory_warning_at = Float(
        0.9,
        config=True,
        help="Warn on a container kernel's row in the panel once its memory reaches this fraction of the "
        "environment's `memory` limit (0.9: at 90 %), before the limit kills and restarts the kernel.",
    )

    docker_timeout = Float(
        5.0,
        config=True,
        help="Seconds to wait for the Docker engine to answer before a kernel start fails with a clear error.",
    )

    pull_missing_images = Bool(
        True,
        config=True,
        help="Pull an environment's image when it is not on the engine: at a kernel's first start, or ahead with "
        "the panel's Prepare button (POST environments/NAME/pull). Progress shows in the panel and in GET "
        "environments. False: refuse to start, saying which image to pull or build (`jupyter gpuenv pull NAME`).",
    )

    pull_stall_timeout = Float(
        120.0,
        config=True,
        help="Seconds a pull may go without receiving or unpacking a byte before it is abandoned with a message "
        "(a registry that stopped answering). A slow pull that keeps moving is never cut short.",
    )

    socket_root = Unicode(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(),
        config=True,
        help="Where each container kernel's socket folder is made (bind-mounted into its container). "
        "Keep the path short: a unix socket path may hold at most 107 bytes.",
    )

    kernel_runtime_dir = Unicode(
        os.path.join(jupyter_data_dir(), "gpuenv", "kernel-runtimes"),
        config=True,
        help="Prepared kernel runtimes (ipykernel for one Python version), mounted read-only into images "
        "that have no ipykernel of their own. `jupyter gpuenv prepare-runtime` fills it.",
    )

    remove_orphans = Bool(
        True,
        config=True,
        help="When the server starts, remove kernel containers that an earlier run of a server of this user "
        "on this host left behind (its process is gone).",
    )

    shared_network_namespace = Bool(
        True,
        config=True,
        help="Container kernels without network (network 'none', the default) join one no-network namespace per "
        "user instead of getting one each, which Docker makes slowly (~0.1 s of a start, more when many start at "
        "once). It holds loopback and nothing else; another user's kernels never share it. A user's own kernels "
        "then share their 127.0.0.1, as local kernels do: one can reach a TCP port another of theirs listens on, "
        "and two cannot both listen on the same port. False: a namespace per kernel.",
    )

    terminal_grace_period = Float(
        300.0,
        config=True,
        help="Seconds a terminal opened from the GPU panel lives on with no browser tab showing it, so that a page "
        "reload finds the same shell. Then its shell is hung up, and a terminal's own "
        "container is removed (freeing its GPUs); a job under tmux in a kernel's container runs on.",
    )

    # -- usage metrics and ledger (docs/metrics.md) -----------------------------------------------------
    prometheus_metrics = Bool(
        True,
        config=True,
        help="Export per-GPU, per-kernel and GPU-usage series (jupyter_gpuenv_*) on the server's /metrics endpoint, "
        "which asks for the server's token unless c.ServerApp.authenticate_prometheus = False. docs/metrics.md "
        "lists them and shows a Prometheus scrape configuration.",
    )

    usage_dir = Unicode(
        config=True,
        help="Folder of the usage ledger (GPU-seconds per kernel, notebook and user; `jupyter gpuenv usage` and "
        "GET gpuenv/api/usage read it). Made private (0700) to this user. Default: <jupyter data dir>/gpuenv/usage.",
    )

    @default("usage_dir")
    def _default_usage_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "gpuenv", "usage")  # at use, so JUPYTER_DATA_DIR is honoured

    usage_flush_interval = Float(
        60.0,
        config=True,
        help="Seconds between two writes of the usage ledger. What is not written yet is in GET gpuenv/api/usage; "
        "a server that is killed loses at most this much accounting.",
    )

    usage_retention_days = Float(
        400.0,
        config=True,
        help="Days the usage ledger keeps: a month's file is deleted once the month ended this long ago. A file "
        "that grows is compacted to one record per kernel and hour, so the ledger stays small.",
    )

    park_idle_minutes = Float(
        0.0,
        config=True,
        help="Park a kernel idle this many minutes whose GPUs did no work meanwhile (its GPU memory moves to host "
        "memory, its variables stay, running a cell resumes it). 0: never park by itself (the default on one "
        "person's machine; on a shared host the broker's c.Broker.park_idle_minutes applies to its kernels).",
    )
    park_min_gpu_memory_gib = Float(
        1.0, config=True, help="The idle policy parks only kernels holding at least this much GPU memory (GiB)."
    )
    park_timeout = Float(
        300.0,
        config=True,
        help="Seconds a park or resume may take before it is reported as failed (a checkpoint moves about "
        "1-3 GiB/s). A restore that does not finish in time is reported, and the kernel offered a restart.",
    )

    @validate("usage_flush_interval", "usage_retention_days")
    def _positive_usage_setting(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be a positive number")
        return proposal["value"]

    @validate(
        "sample_interval",
        "driver_retry_interval",
        "docker_timeout",
        "pull_stall_timeout",
        "terminal_grace_period",
        "park_timeout",
    )
    def _positive_interval(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(f"{proposal['trait'].name} must be a positive number of seconds")
        return proposal["value"]

    @validate("park_idle_minutes", "park_min_gpu_memory_gib")
    def _not_negative(self, proposal):
        if proposal["value"] < 0:
            raise ValueError(f"{proposal['trait'].name} must be 0 or more")
        return proposal["value"]

    @validate("history_length")
    def _positive_length(self, proposal):
        if proposal["value"] < 1:
            raise ValueError("history_length must be at least 1")
        return proposal["value"]
