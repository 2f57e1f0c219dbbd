"""Browser tests: a real JupyterLab with jupyter_gpuenv, in Debian's headless Chromium, via pytest-playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .lab_harness import CHROMIUM, CHROMIUM_ARGS, LabServer


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Playwright's own browser download needs the internet; Debian's chromium is what CI installs.
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/install-system.sh installs it")
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install chromium` (or .ci/install-system.sh) to run the browser tests"
        )
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def page(page):
    page.set_default_timeout(20_000)
    return page


@pytest.fixture(scope="module")
def gpu_lab(tmp_path_factory):
    """Lab whose NVML replays tests/recordings/h100x2.json (two H100, two processes on GPU 0)."""
    server = LabServer(tmp_path_factory.mktemp("gpu-lab"), recording="h100x2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gpu8_lab(tmp_path_factory):
    """Lab whose NVML replays tests/recordings/h100x8.json (eight H100: the panel's layout at 8 GPUs)."""
    server = LabServer(tmp_path_factory.mktemp("gpu8-lab"), recording="h100x8")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_lab(tmp_path_factory):
    """Lab on this machine's real NVML: no GPU and no driver in CI."""
    server = LabServer(tmp_path_factory.mktemp("plain-lab"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where screenshots go: GPUENV_SCREENSHOTS (e.g. docs/screenshots) or a temporary folder."""
    target = os.environ.get("GPUENV_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# tests/conftest.py loads pytest_jupyter, whose autouse fixtures take this thread's event loop and close it
# after each test; here that loop is Playwright's (sync API) and the servers run in subprocesses, so neither
# fixture has anything to do.
@pytest.fixture
def jp_asyncio_loop():
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield


def pytest_collection_modifyitems(items):
    """Run every test that drives a browser last (a stable sort: the order is otherwise kept).

    Playwright's sync API holds an event loop on the main thread from its first use to the end of the
    session; pytest_jupyter's async fixtures (jp_fetch, ...) of a test after it would find that loop and fail.
    """
    items.sort(key=lambda item: "browser" in getattr(item, "fixturenames", ()))
