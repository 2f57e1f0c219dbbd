"""JupyterHub configuration for the broker tests: real Unix users, their servers spawned as them, the broker
as a hub-managed service.

What TLJH or SystemdSpawner give a shared GPU host, on loopback: the hub runs as root, LocalProcessSpawner
starts each person's server as their own Unix account (setuid, their home as root folder), and the GPU
broker is a service the hub starts and stops. Servers reach the broker only through its unix socket
(``--GpuEnv.broker``); none of them may use the Docker socket.

The fixture (tests/broker/conftest.py) sets the GPUENV_BROKER_* variables: the hub's state folder, the test's
root-owned folder (broker socket, kernelspecs), ports, a password and a token for the test itself.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub's config loader)

here = Path(__file__).resolve().parent
work = Path(os.environ["GPUENV_BROKER_HUB_DIR"])
users = os.environ["GPUENV_BROKER_USERS"].split(",")
marker = os.environ["GPUENV_HUB_TEST_MARKER"]

# -- the hub and its proxy on loopback, state in the test's folder ---------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ["GPUENV_BROKER_PROXY_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["GPUENV_BROKER_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['GPUENV_BROKER_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = str(work / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{work / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(work / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(work / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}  # answer at once: the test spawns all in parallel

# -- the people: real Unix accounts (made by the fixture), one shared password -------------------------------
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["GPUENV_BROKER_PASSWORD"]
c.Authenticator.allowed_users = set(users)

# -- services: the test's own token, and the broker ------------------------------------------------------------
c.JupyterHub.services = [
    {"name": "gpuenv-test", "api_token": os.environ["GPUENV_BROKER_SERVICE_TOKEN"]},
    {
        # runs as the hub's user (root), like a broker unit of systemd; broker_fake_nvml.py replays NVML
        "name": "gpuenv-broker",
        "command": [
            sys.executable,
            str(here / "broker_fake_nvml.py"),
            "--config",
            os.environ["GPUENV_BROKER_CONFIG"],
        ],
        "environment": {
            "GPUENV_TEST_RECORDING": "h100x2",
            "GPUENV_BROKER_HOLD": os.environ["GPUENV_BROKER_HOLD"],
            "GPUENV_BROKER_PIDFILE": os.environ["GPUENV_BROKER_PIDFILE"],
            "GPUENV_BROKER_GPU_PROCESSES": os.environ["GPUENV_BROKER_GPU_PROCESSES"],
            "GPUENV_HUB_TEST_MARKER": marker,
            "PYTHONUNBUFFERED": "1",
        },
    },
]
c.JupyterHub.load_roles = [
    {"name": "gpuenv-test", "services": ["gpuenv-test"], "scopes": ["admin:users", "admin:servers", "tokens"]},
]

# -- single-user servers, as the users themselves -----------------------------------------------------------------
c.JupyterHub.spawner_class = "localprocess"
# jupyterhub-singleuser with NVML replayed (the same recording the broker replays: one host, two GPUs)
c.Spawner.cmd = [sys.executable, str(here.parent / "hub" / "singleuser_fake_nvml.py")]
c.Spawner.args = [f"--GpuEnv.broker=unix://{os.environ['GPUENV_BROKER_SOCKET']}"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {
    # the broker kernelspecs (`jupyter gpuenv add NAME --broker --prefix ...`), readable by every user
    "JUPYTER_PATH": os.environ["GPUENV_BROKER_JUPYTER_PATH"],
    "GPUENV_TEST_RECORDING": "h100x2",
    "GPUENV_HUB_TEST_MARKER": marker,
}
