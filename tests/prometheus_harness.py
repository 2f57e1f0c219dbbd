"""A real Prometheus (Debian's /usr/bin/prometheus) on a free loopback port, for the tests that scrape with it.

The server's metrics (tests/usage/test_metrics.py) and the broker's (tests/broker/test_broker_metrics.py) are checked
the way an administrator would see them: scraped by Prometheus with the scrape configs of docs/examples, then queried
through its HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS = Path("/usr/bin/prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_prometheus() -> None:
    """Fail in CI, where it must be installed; skip with the reason elsewhere."""
    if not PROMETHEUS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PROMETHEUS} is missing: .ci/install-system.sh installs Debian's prometheus")
        pytest.skip(f"{PROMETHEUS} is not installed (apt-get install prometheus)")


@contextlib.contextmanager
def running_prometheus(folder: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Prometheus scraping ``scrape_configs`` every second, its state in ``folder``: {url, proc, log}."""
    require_prometheus()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    with open(folder / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": folder / "prometheus.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
