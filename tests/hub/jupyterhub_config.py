"""JupyterHub configuration for the hub tests: a real hub, proxy and single-user servers on loopback.

The test fixture (tests/hub/conftest.py) sets the GPUENV_HUB_* variables: a fresh folder for the database,
cookie secret and home folders, three free ports, a shared password and a token for the test itself.

Users are not system accounts: SimpleLocalProcessSpawner (JupyterHub's spawner for tests) runs every
single-user server as the hub's own user, with HOME set to a per-user folder. It gives no isolation
between users, which is fine here: what is under test is the extension behind the hub's routing and
authentication, not the operating system's user separation.
"""

import os
import sys
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner

c = get_config()  # noqa: F821 (provided by JupyterHub's config loader)

work = Path(os.environ["GPUENV_HUB_DIR"])

# -- the hub and its proxy on loopback, state in the test's folder ---------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ["GPUENV_HUB_PROXY_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["GPUENV_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['GPUENV_HUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = str(work / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{work / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(work / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(work / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
# answer "spawn pending" at once, so the test starts both servers side by side
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}

# -- two users with a shared password ----------------------------------------------------------------------
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["GPUENV_HUB_PASSWORD"]
c.Authenticator.allowed_users = {"alice", "bob"}

# the test drives the hub through its REST API with this service's token
c.JupyterHub.services = [{"name": "gpuenv-test", "api_token": os.environ["GPUENV_HUB_SERVICE_TOKEN"]}]
c.JupyterHub.load_roles = [
    {"name": "gpuenv-test", "services": ["gpuenv-test"], "scopes": ["admin:users", "admin:servers", "tokens"]},
]

# -- single-user servers -----------------------------------------------------------------------------------
c.JupyterHub.spawner_class = SimpleLocalProcessSpawner
c.SimpleLocalProcessSpawner.home_dir_template = str(work / "home" / "{username}")
# jupyterhub-singleuser, with NVML replayed from tests/recordings/ (CI has no GPU)
c.Spawner.cmd = [sys.executable, str(Path(__file__).with_name("singleuser_fake_nvml.py"))]
# --allow-root: CI runs as root; the GpuEnv setting shows that extension settings pass as arguments
# (docs/admin-config.md), the way docs/examples/jupyterhub_config_dockerspawner.py passes them
c.Spawner.args = ["--allow-root", "--GpuEnv.sample_interval=0.5"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.Spawner.environment = {
    "GPUENV_TEST_RECORDING": os.environ.get("GPUENV_TEST_RECORDING", "h100x2"),
    # a marker in every process this hub starts, so the fixture can prove none is left behind
    "GPUENV_HUB_TEST_MARKER": os.environ["GPUENV_HUB_TEST_MARKER"],
}

# The GPUs each person may use: the same pattern an administrator uses on a shared GPU host
# (docs/admin-config.md). alice gets GPU 1 through CUDA_VISIBLE_DEVICES; bob GPU 0 through
# NVIDIA_VISIBLE_DEVICES, the variable the NVIDIA container runtime reads.
GPUS_PER_USER = {
    "alice": {"CUDA_VISIBLE_DEVICES": "1"},
    "bob": {"NVIDIA_VISIBLE_DEVICES": "0"},
}


def pre_spawn_hook(spawner):
    spawner.environment = {**spawner.environment, **GPUS_PER_USER.get(spawner.user.name, {})}


c.Spawner.pre_spawn_hook = pre_spawn_hook
