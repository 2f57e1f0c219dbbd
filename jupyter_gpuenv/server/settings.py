"""The server's own settings, read outside a running server (``jupyter gpuenv`` commands)."""

from __future__ import annotations

from jupyter_gpuenv.config import GpuEnv


def server_settings() -> GpuEnv:
    """``c.GpuEnv`` as the Jupyter server would read it (jupyter_server_config.py on its config path)."""
    from jupyter_server.serverapp import ServerApp  # here, not at import: it is slow

    app = ServerApp()
    app.load_config_file()
    return GpuEnv(config=app.config)
