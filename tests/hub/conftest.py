"""A real JupyterHub for the tests in this folder: hub, configurable-http-proxy, and one single-user server
each for alice and bob, all on 127.0.0.1 with free ports and their state in a temporary folder.

One hub serves the whole session (starting it and two single-user servers is most of the cost). It is
stopped at the end with ``cleanup_servers``; the teardown then checks that no process it started (each
carries a marker in its environment) is still alive.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent
USERS = ("alice", "bob")
START_TIMEOUT = 60  # hub answering its API
SPAWN_TIMEOUT = 90  # both single-user servers ready (spawned in parallel)
STOP_TIMEOUT = 30
LAB_TIMEOUT_MS = 60_000  # Lab's first load on a slow, busy 2-core machine


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies from other tests) and its page, patient as Lab behind a hub needs."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(LAB_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def hub_request(base: str, method: str, path: str, token: str | None = None, **kwargs):
    """HTTP through a hub's proxy at ``base``, with a hub token; redirects are the caller's to follow."""
    import requests

    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    kwargs.setdefault("timeout", 15)
    kwargs.setdefault("allow_redirects", False)
    return requests.request(method, base + path, headers=headers, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with_marker(marker: str) -> list[int]:
    """Process ids whose environment carries ``GPUENV_HUB_TEST_MARKER=<marker>``."""
    needle = f"GPUENV_HUB_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


@dataclass
class Hub:
    url: str  # the proxy's public URL, what a browser opens
    password: str
    service_token: str
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, token: str | None = None, **kwargs):
        return hub_request(self.url, method, path, token, **kwargs)

    def api(self, method: str, path: str, **kwargs):
        """The hub's REST API with the test service's admin token."""
        return self.request(method, "/hub/api" + path, token=self.service_token, **kwargs)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no hub log)"


def _wait(predicate, timeout: float, what: str, hub: Hub, proc: subprocess.Popen, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterHub exited with {proc.returncode} while waiting for {what}:\n{hub.log_tail()}")
        try:
            value = predicate()
        except OSError:  # connection refused while starting
            value = None
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout} s\n{hub.log_tail()}")


def _stop(proc: subprocess.Popen, marker: str) -> list[int]:
    """Stop the hub (it stops the proxy and the servers); kill what is left. Returns the leftovers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    leftovers = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = processes_with_marker(marker)
        if not leftovers:
            break
        time.sleep(0.25)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    pytest.importorskip("requests")
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        pytest.fail("jupyterhub is not installed: pip install jupyterhub (part of the `test` extra)")
    if shutil.which("configurable-http-proxy") is None:
        pytest.fail("configurable-http-proxy is not on PATH: npm install -g configurable-http-proxy")

    work = tmp_path_factory.mktemp("hub")
    marker = secrets.token_hex(8)
    hub = Hub(
        url=f"http://127.0.0.1:{free_port()}",
        password=secrets.token_urlsafe(12),
        service_token=secrets.token_hex(32),
        log_path=work / "jupyterhub.log",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "CUDA_VISIBLE", "NVIDIA_VISIBLE", "CONFIGPROXY"))
    }
    env.update(
        GPUENV_HUB_DIR=str(work),
        GPUENV_HUB_PROXY_PORT=hub.url.rsplit(":", 1)[1],
        GPUENV_HUB_PORT=str(free_port()),
        GPUENV_HUB_PROXY_API_PORT=str(free_port()),
        GPUENV_HUB_PASSWORD=hub.password,
        GPUENV_HUB_SERVICE_TOKEN=hub.service_token,
        GPUENV_HUB_TEST_MARKER=marker,
        PYTHONUNBUFFERED="1",
    )
    with open(hub.log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "jupyterhub_config.py")],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait(lambda: hub.api("GET", "/").status_code == 200, START_TIMEOUT, "the hub's API", hub, proc)
        for name in USERS:
            r = hub.api("POST", f"/users/{name}/tokens", json={"note": "gpuenv hub test", "expires_in": 3600})
            assert r.status_code == 201, (r.status_code, r.text)
            hub.tokens[name] = r.json()["token"]
            r = hub.api("POST", f"/users/{name}/server")
            assert r.status_code in (201, 202), (r.status_code, r.text)

        def ready():
            return all(hub.api("GET", f"/users/{n}").json()["servers"].get("", {}).get("ready") for n in USERS)

        _wait(ready, SPAWN_TIMEOUT, "alice's and bob's servers", hub, proc, interval=0.5)
        yield hub
    finally:
        leftovers = _stop(proc, marker)
    assert not leftovers, f"processes left behind by the hub (killed now): {leftovers}\n{hub.log_tail()}"


# -- the browser (pytest-playwright): the same Chromium set-up as the panel's browser tests ---------------------
from browser.conftest import browser_type_launch_args, jp_asyncio_loop, jp_server_cleanup  # noqa: E402,F401
