"""JupyterHub with DockerSpawner on one GPU host, with container kernels through the GPU broker.

See docs/shared-host.md, "Servers in containers". The broker runs on the host as a hub-managed service in
hub-token mode: each user's server (uid 1000 in its own container, like every other user's) presents its
hub token, and the hub says whose it is. User containers get the broker's socket and their own socket
folder, never the Docker socket. tests/hub/test_deploy_docs.py loads this file with JupyterHub's own config
loader and checks what each user's container gets.
"""

import os

c = get_config()  # noqa: F821 (provided by JupyterHub's config loader)

BROKER = "/run/jupyter-gpuenv"

c.JupyterHub.bind_url = "http://:8000"
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = "jupyterhub"
c.Authenticator.allowed_users = {"alice", "bob", "carol"}

# -- the broker: a hub-managed service on the host (the hub runs on the host here, as root) ---------------
c.JupyterHub.services = [
    {
        "name": "gpuenv-broker",
        "command": ["jupyter-gpuenv", "broker", "--config", "/etc/jupyter-gpuenv/broker_config.py"],
        # it asks the hub whose a token is: its own token needs no more than the default scopes
    }
]

# -- one container per user, with the broker's socket and their own socket folder ------------------------
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = os.environ.get("SINGLEUSER_IMAGE", "registry.example.org/gpuenv/singleuser:2025.06")
c.DockerSpawner.network_name = "jupyterhub"
c.DockerSpawner.remove = True
c.DockerSpawner.notebook_dir = "/home/jovyan/work"
c.DockerSpawner.volumes = {
    "jupyterhub-user-{username}": "/home/jovyan/work",  # the broker gives kernels this same volume
    f"{BROKER}/broker.sock": f"{BROKER}/broker.sock",
    # the broker makes each kernel's socket folder here, owned by uid 1000, and mounts it into the kernel
    f"{BROKER}/sockets/hub-{{raw_username}}": f"{BROKER}/sockets/hub-{{raw_username}}",
}
c.DockerSpawner.extra_host_config = {"shm_size": "2g"}
c.Spawner.default_url = "/lab"
c.Spawner.args = [f"--GpuEnv.broker=unix://{BROKER}/broker.sock"]
