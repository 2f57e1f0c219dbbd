"""JupyterHub on one GPU host with DockerSpawner: one single-user container per person, GPUs per person.

See docs/deploy-dockerspawner.md. The hub runs in a container on the Docker network ``jupyterhub``; each
user's server runs the single-user image (JupyterLab + jupyter_gpuenv + PyTorch/CUDA) and gets the GPUs
listed for them below through the NVIDIA Container Toolkit. Inside the container NVML sees only those
GPUs, so the GPU panel shows exactly what the person may use.

Container kernels are OFF in this configuration: the Docker socket is not mounted into user containers
(that would make every user root on the host). The single-user image itself is the PyTorch/CUDA
environment. tests/hub/test_deploy_docs.py loads this file with JupyterHub's own config loader.
"""

import os

from docker.types import DeviceRequest

c = get_config()  # noqa: F821 (provided by JupyterHub's config loader)

# -- the hub ---------------------------------------------------------------------------------------------
c.JupyterHub.bind_url = "http://:8000"
c.JupyterHub.hub_ip = "0.0.0.0"  # listen inside the hub container
c.JupyterHub.hub_connect_ip = "jupyterhub"  # how user containers reach it: the hub container's name
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/data/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/data/jupyterhub_cookie_secret"

# Authentication is your site's choice (OAuthenticator, LDAPAuthenticator, ...); set it here, e.g.
#   c.JupyterHub.authenticator_class = "github"
c.Authenticator.admin_users = {"admin"}
c.Authenticator.allow_all = False
c.Authenticator.allowed_users = {"alice", "bob", "carol", "admin"}

# -- one container per user --------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = os.environ.get("SINGLEUSER_IMAGE", "registry.example.org/gpuenv/singleuser:2025.06")
c.DockerSpawner.network_name = "jupyterhub"
c.DockerSpawner.remove = True  # the container goes when the server stops; the work volume stays
c.DockerSpawner.notebook_dir = "/home/jovyan/work"
c.DockerSpawner.volumes = {"jupyterhub-user-{username}": "/home/jovyan/work"}
c.DockerSpawner.mem_limit = "64G"
c.DockerSpawner.cpu_limit = 16
# PyTorch's DataLoader workers share tensors through /dev/shm; Docker's default of 64 MB is far too small
c.DockerSpawner.extra_host_config = {"shm_size": "8g"}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180  # the first start on a host pulls a large CUDA image

# -- GPUs per person ---------------------------------------------------------------------------------------
# NVML indices (as `nvidia-smi -L` lists them) or UUIDs. Nobody listed: no GPU (the panel says so).
# Sharing a GPU between people is allowed here (bob and carol share GPU 1) but nothing partitions its memory:
# use MIG devices for that (their MIG-... UUIDs go in this table like GPU UUIDs).
GPUS_PER_USER = {
    "alice": ["0"],
    "bob": ["1"],
    "carol": ["1"],
    "admin": [],
}


def give_gpus(spawner):
    """Give the user's container their GPUs (the `docker run --gpus '"device=0"'` of the Docker API)."""
    devices = GPUS_PER_USER.get(spawner.user.name, [])
    host_config = {k: v for k, v in spawner.extra_host_config.items() if k != "device_requests"}
    if devices:
        host_config["device_requests"] = [
            DeviceRequest(driver="nvidia", device_ids=list(devices), capabilities=[["gpu", "utility", "compute"]])
        ]
    spawner.extra_host_config = host_config


c.Spawner.pre_spawn_hook = give_gpus

# -- jupyter_gpuenv inside each user's server --------------------------------------------------------------
# Settings for the extension go to the single-user server, not to the hub: either bake a
# jupyter_server_config.py into the image (see docs/admin-config.md) or pass them as arguments:
c.Spawner.args = ["--GpuEnv.sample_interval=2", "--GpuEnv.history_length=300"]
