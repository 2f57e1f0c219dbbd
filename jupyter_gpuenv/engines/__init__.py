"""Engines: what runs a kernel's container, behind one contract (``base.Engine``).

``connect`` is the one place that reads which engine this server uses: the Docker engine itself on one person's
machine (``docker.engine.DockerEngine``), or the shared host's broker (``broker.BrokerClient``, with
``c.GpuEnv.broker``), which owns the Docker engine for every user.
"""

from __future__ import annotations

import logging

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.engines.base import Engine

_engines: dict[tuple[object, ...], Engine] = {}


def connect(settings: GpuEnv, log: logging.Logger | None = None) -> Engine:
    """The engine this server's settings name, one per process and setting, shared by all its kernels."""
    if settings.broker:
        from jupyter_gpuenv.engines.broker import BrokerClient

        key: tuple[object, ...] = (settings.broker, settings.docker_timeout)
        if key not in _engines:
            _engines[key] = BrokerClient(settings.broker, settings.docker_timeout)
        return _engines[key]
    from jupyter_gpuenv.engines.local import LocalEngine

    key = (settings.docker_url, settings.docker_timeout, settings.socket_root, settings.pull_stall_timeout)
    if key not in _engines:
        _engines[key] = LocalEngine(settings, log)
    local = _engines[key]
    assert isinstance(local, LocalEngine)
    local.settings = settings  # the caller's, read just now: changed settings (environments, runtimes) apply
    return local


def cancel_pulls() -> None:
    """The server stops: kernel starts waiting for a pull fail now instead of holding up its shutdown (the Docker
    engine drops a pull whose client hung up; the next server reports it as interrupted)."""
    for each in list(_engines.values()):
        cancel = getattr(each, "cancel_pulls", None)  # a broker's pulls are the broker's
        if cancel is not None:
            cancel()
