"""A real JupyterLab server for the browser tests, and what a test does in the page."""

from __future__ import annotations

import functools
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import wait_until as _wait_until
from playwright.sync_api import Locator, Page, expect

# each look asks the engine or the server: five a second
wait_until = functools.partial(_wait_until, interval=0.2)

CHROMIUM = os.environ.get("GPUENV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE.parent / "recordings"
PANEL = "#jupyter-gpuenv-panel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``python launch_lab.py`` in a subprocess: 127.0.0.1, a free port, a token, a temporary root."""

    def __init__(
        self,
        workdir: Path,
        recording: str | None = None,
        extra_args: list[str] | None = None,
        user: str | None = None,
    ) -> None:
        """``user``: run the server as that Unix account (``setpriv``), in ``workdir`` made theirs, as a person
        does; ``workdir`` must be a folder that account can reach (not under root's pytest folders)."""
        self.root = workdir / "root"
        self.root.mkdir(parents=True)
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(workdir / "config")}
        prefix: list[str] = []
        if user is not None:
            account = pwd.getpwnam(user)
            for path in (workdir, self.root):
                os.chown(path, account.pw_uid, account.pw_gid)
            prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
            env["HOME"] = str(workdir)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.recording: Path | None = None
        cmd = [
            sys.executable,
            str(HERE / "launch_lab.py"),
            "--port",
            str(self.port),
            "--token",
            self.token,
            "--root-dir",
            str(self.root),
        ]
        if recording is not None:
            self.recording = workdir / f"{recording}.json"
            shutil.copy(RECORDINGS / f"{recording}.json", self.recording)
            cmd += ["--recording", str(self.recording)]
        self.log = workdir / "server.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            prefix + cmd + (extra_args or []),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        self._wait_ready()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Lab server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                self.api("GET", "api/status")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"Lab server did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    # -- recorded NVML --------------------------------------------------------------------------------
    def edit_recording(self, change) -> None:
        """Change the recording the server replays (``change(dict)``); the server reads it on its next sample."""
        assert self.recording is not None, "this server runs on the real NVML"
        data = json.loads(self.recording.read_text())
        change(data)
        tmp = self.recording.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.recording)

    # -- the fake checkpoint driver (launch_lab.py installs it with a recording) -----------------------
    def fail_next_driver_step(self, step: str, code: str, timeout: float = 15) -> None:
        """Make the driver's next ``step`` (lock, checkpoint, restore, unlock) fail with CUresult ``code``.

        Returns once the server has taken the request (at its next sample it reads, then deletes, the file).
        """
        assert self.recording is not None, "this server runs on the real NVML and driver"
        control = self.recording.with_suffix(".driver.json")
        tmp = control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fail": {step: code}}))
        os.replace(tmp, control)
        deadline = time.monotonic() + timeout
        while control.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not read {control} within {timeout} s")
            time.sleep(0.1)

    # -- notebooks and kernels ------------------------------------------------------------------------
    def start_notebook(self, path: str, kernel: str = "python3") -> dict[str, Any]:
        """Create a notebook and start its kernel through /api/sessions, as Lab does; returns the session."""
        notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        self.api("PUT", f"api/contents/{path}", {"type": "notebook", "format": "json", "content": notebook})
        return self.api(
            "POST", "api/sessions", {"path": path, "name": path, "type": "notebook", "kernel": {"name": kernel}}
        )

    def set_theme(self, theme: str) -> None:
        self.api("PUT", "lab/api/settings/@jupyterlab/apputils-extension:themes", {"raw": json.dumps({"theme": theme})})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def kernel_pid(kernel_id: str, timeout: float = 30) -> int:
    """The pid of a local kernel: the process whose command line names its connection file."""
    needle = f"kernel-{kernel_id}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no process runs kernel {kernel_id}")


# -- in the page ------------------------------------------------------------------------------------------
def open_lab(page: Page, server: LabServer, path: str = "lab") -> None:
    """Load Lab with a fresh workspace (``reset``), so no test inherits the layout of the one before.

    Without a document to open, until the Launcher Lab opens has the focus: it takes the focus when it opens,
    seconds after the page on a loaded machine, and a palette or menu opened before would close then.
    """
    page.goto(server.url(f"{path}?reset"))
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    if path == "lab":
        expect(page.locator("#jp-main-dock-panel .jp-Launcher")).to_be_focused(timeout=60_000)


def open_gpu_panel(page: Page) -> Locator:
    """Click the GPU icon in the side bar (unless its panel is already shown); returns the panel."""
    tab = page.locator('.jp-SideBar [data-id="jupyter-gpuenv-panel"]')
    expect(tab).to_be_visible()
    if tab.get_attribute("aria-selected") != "true":
        tab.click()
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    return panel


def gpu_card(page: Page, index: int) -> Locator:
    return page.locator(f'{PANEL} article[aria-label^="GPU {index}:"]')


def environment_item(page: Page, name: str) -> Locator:
    return page.locator(f'{PANEL} li[data-environment="{name}"]')


def use_environment(page: Page, name: str) -> None:
    """Press "Use for this notebook" on environment ``name``: the notebook in focus switches to its kernelspec.

    Open the notebook first (``open_lab(page, server, "lab/tree/x.ipynb")``) and the panel
    (``open_gpu_panel``); afterwards e.g. ``expect(page.locator("#jp-main-statusbar")).to_contain_text(...)``
    with the environment's display name, as Lab shows the kernel's name there.
    """
    button = environment_item(page, name).get_by_role("button", name="Use for this notebook")
    expect(button).to_be_enabled()
    button.click()
