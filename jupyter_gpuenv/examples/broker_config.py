"""The GPU broker of a shared host: /etc/jupyter-gpuenv/broker_config.py, read by `jupyter gpuenv broker`.

Four people, two teams, one box with several GPUs. `jupyter gpuenv broker install` writes this file if there
is none (`jupyter gpuenv broker --example-config` prints it); see docs/shared-host.md. tests/hub/test_deploy_docs.py
loads it and checks every setting.
"""

c = get_config()  # noqa: F821 (provided by the configuration loader)

c.Broker.socket = "/run/jupyter-gpuenv/broker.sock"

# What can run on this host: nothing else can, whatever a user writes into a kernelspec.
c.Broker.environments = {
    "pytorch": {
        "display_name": "PyTorch 2.6 / CUDA 12.4",
        "image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
        "gpus": "exclusive:1",  # a GPU of one's own; a start that finds none free names who holds them
        "shm_size": "16g",
        "memory": "64g",
        "cpus": 8,
    },
    "pytorch-2gpu": {
        "display_name": "PyTorch 2.6 / CUDA 12.4 (2 GPUs)",
        "image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
        "gpus": "exclusive:2",
        "shm_size": "32g",
    },
    "cpu": {"display_name": "Python (CPU)", "image": "python:3.12-slim", "gpus": "none", "memory": "8g"},
}

# Who may use what. A user's own rule wins, then the most permissive of their Unix groups', then the default.
c.Broker.policy = {
    "default": {"environments": ["cpu", "pytorch"], "max_gpus": 1, "max_kernels": 3},
    "groups": {"ml-research": {"environments": "*", "max_gpus": 2}},
    "users": {"intern": {"environments": ["cpu"], "max_kernels": 2}},
}
c.Broker.show_other_users = "name"  # or "anonymous": refusals say "another user"

c.Broker.kernel_runtime_dir = "/var/lib/jupyter-gpuenv/kernel-runtimes"  # `jupyter gpuenv prepare-runtime --dir`

# Every user's GPU usage for the administrator (docs/metrics.md): Prometheus scrapes 127.0.0.1:939/metrics with the
# token in metrics_token_file; `sudo jupyter gpuenv usage --dir /var/lib/jupyter-gpuenv/usage` needs no Prometheus.
c.Broker.metrics_port = 939  # 0: off
c.Broker.metrics_token_file = "/var/lib/jupyter-gpuenv/metrics.token"
c.Broker.usage_dir = "/var/lib/jupyter-gpuenv/usage"

# Warm kernels (docs/shared-host.md, "Warm kernels"): one started ahead per person whose server runs, handed to
# their next start of it, at most max_warm_kernels on the host. Each holds a container's memory, no GPU memory.
# c.Broker.warm_kernels = {"pytorch": 1}
# c.Broker.max_warm_kernels = 8
