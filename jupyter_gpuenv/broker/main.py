"""``jupyter gpuenv broker``: read the configuration as a whole, then serve until stopped."""

from __future__ import annotations

import asyncio
import logging

from jupyter_gpuenv.broker.catalog import CatalogBroker, serve
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.broker.setup import ConfigProblems, load_config
from jupyter_gpuenv.errors import InvalidEnvironment

log = logging.getLogger("jupyter_gpuenv.broker")


def load_settings(config_file: str | None) -> Broker:
    """The settings in ``config_file`` (default /etc/jupyter-gpuenv/broker_config.py), checked as a whole:
    ``setup.ConfigProblems`` names everything wrong with it at once."""
    return load_config(config_file)


def main(config_file: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s")
    try:
        daemon = CatalogBroker(load_settings(config_file))
    except ConfigProblems as exc:  # every problem, each on a line of its own
        log.error("gpuenv broker: %s", exc)
        return 2
    except (InvalidEnvironment, ValueError) as exc:
        log.error("gpuenv broker: %s", exc)
        return 2
    asyncio.run(serve(daemon))
    return 0
