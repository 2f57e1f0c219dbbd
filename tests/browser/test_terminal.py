"""A terminal in a notebook's environment, from the panel, as a person uses it: the shell answers from inside the
kernel's container, a page reload finds the same shell, closing the tab ends it; a terminal in a container of
its own takes that container away when it closes.

The server runs as an ordinary Unix account (a terminal never opens a root shell, and CI runs as root): the
account ``gpuenv-term``, made here once and put in the docker group, as a person on their own machine is.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import docker
import pytest
from playwright.sync_api import Page, expect

from .lab_harness import LabServer, environment_item, open_gpu_panel, open_lab, wait_until

IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")
ACCOUNT = "gpuenv-term"
KERNEL_LABEL = "io.jupyter.gpuenv.kernel-id"
TERMINAL_LABEL = "io.jupyter.gpuenv.terminal"
TERMINAL_TAB = ".jp-GpuEnv-terminalTab"


def cannot_run(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def ensure_account() -> pwd.struct_passwd:
    """``gpuenv-term``, a member of the docker group: a person who runs their own Jupyter and Docker."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        cannot_run("the terminal test runs its server as another Unix account: run it as root (CI does)")
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--user-group", "--shell", "/bin/bash", ACCOUNT], check=True)
    if ACCOUNT not in grp.getgrnam("docker").gr_mem:
        subprocess.run(["usermod", "--append", "--groups", "docker", ACCOUNT], check=True)
    return pwd.getpwnam(ACCOUNT)


@pytest.fixture
def terminal_lab():
    try:
        docker.from_env(timeout=10).images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means the same: no container kernels here
        cannot_run(f"needs a Docker engine with {IMAGE} (bash .ci/test.sh sets both up): {exc}")
    account = ensure_account()
    work = Path(tempfile.mkdtemp(prefix="gpuenv-terminal-"))  # root's pytest folders are closed to the account
    work.chmod(0o755)
    spec = work / "share" / "kernels" / "gpuenv-test"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Test container",
                "language": "python",
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "gpuenv-docker-provisioner",
                        "config": {"environment": "test", "image": IMAGE, "gpus": "none"},
                    }
                },
            }
        )
    )
    os.environ["JUPYTER_PATH"] = str(work / "share")
    try:
        server = LabServer(work / "lab", user=ACCOUNT)
    finally:
        del os.environ["JUPYTER_PATH"]
    # the text of Lab's terminals in the page (xterm's screen-reader rows), not only on a canvas
    server.api("PUT", "lab/api/settings/@jupyterlab/terminal-extension:plugin", {"raw": '{"screenReaderMode": true}'})
    yield server, account
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def screen(page: Page):
    """The terminal in the tab in front: its rows, as xterm gives them to screen readers."""
    return page.locator(f"{TERMINAL_TAB}:not(.lm-mod-hidden) .xterm-accessibility")


def run(page: Page, command: str) -> None:
    page.locator(f"{TERMINAL_TAB}:not(.lm-mod-hidden) .xterm-helper-textarea").focus()
    page.keyboard.type(command)
    page.keyboard.press("Enter")


def shells_in(container_id: str) -> list[str]:
    processes = docker.from_env().api.top(container_id)["Processes"]
    return [p[-1] for p in processes if p[-1].split()[0] in ("bash", "sh") and "sleep" not in p[-1]]


def test_a_terminal_in_the_kernels_container_and_one_in_a_container_of_its_own(page: Page, terminal_lab):
    server, account = terminal_lab
    kernel_id = server.start_notebook("work.ipynb", kernel="gpuenv-test")["kernel"]["id"]
    client = docker.from_env()
    (container,) = client.containers.list(filters={"label": f"{KERNEL_LABEL}={kernel_id}"})
    open_lab(page, server, "lab/tree/work.ipynb")
    # the notebook takes the front once its kernel is connected: open the terminal after that
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Test container | Idle", timeout=60_000)
    open_gpu_panel(page)

    # -- a shell in the kernel's container, from the kernel's row on its environment's card
    row = environment_item(page, "test").locator(f'li[data-kernel="{kernel_id}"]')
    expect(row).to_contain_text("work.ipynb", timeout=30_000)  # the panel reads kernels every 10 s
    row.get_by_role("button", name="Open terminal in this kernel's container").click()
    tab = page.locator(TERMINAL_TAB)
    expect(tab.locator(".jp-GpuEnv-terminalNotice")).to_contain_text("ends when the kernel shuts down")
    mark = secrets.token_hex(4)
    run(page, f"echo uid=$(id -u) dir=$(pwd) host=$(hostname) pid1=$(grep -c {kernel_id} /proc/1/cmdline)")
    run(page, f"python3 -c 'import ipykernel' && echo ipykernel-{mark}")
    expect(screen(page)).to_contain_text(f"ipykernel-{mark}")
    text = screen(page).inner_text()
    assert f"uid={account.pw_uid} " in text  # the kernel's user, never root
    assert f"dir={server.root} " in text  # the kernel's working folder
    assert "pid1=1" in text  # process 1 where the shell runs is the kernel's own: it is in the kernel's container
    assert "host=" in text and f"host={socket.gethostname()} " not in text  # not on this machine
    (terminal,) = server.api("GET", "gpuenv/api/terminals")["terminals"]
    assert terminal["kernel_id"] == kernel_id and terminal["container_id"] == container.id
    run(page, f"export MARK=still-{mark}")
    assert len(shells_in(container.id)) == 1

    # -- a page reload: the tab comes back on the same shell, with what it showed
    page.reload()
    expect(screen(page)).to_contain_text(f"ipykernel-{mark}", timeout=60_000)
    run(page, "echo mark=$MARK")
    expect(screen(page)).to_contain_text(f"mark=still-{mark}")
    assert [t["name"] for t in server.api("GET", "gpuenv/api/terminals")["terminals"]] == [terminal["name"]]

    # -- closing the tab ends the shell, and the kernel runs on
    close_tab(page, tab)
    wait_until(lambda: not server.api("GET", "gpuenv/api/terminals")["terminals"], 15, "the terminal closed")
    wait_until(lambda: shells_in(container.id) == [], 15, "the shell in the kernel's container ended")
    assert client.containers.get(container.id).status == "running"

    # -- a terminal in a container of its own: closing it removes that container
    item = environment_item(page, "test")
    item.get_by_role("button", name="Open terminal in this environment").click()
    expect(tab.locator(".jp-GpuEnv-terminalNotice")).to_contain_text("removes the container")
    run(page, f"echo own-$(grep -c 'sleep 3600' /proc/1/cmdline)-{mark}")  # the waiting container's process 1
    expect(screen(page)).to_contain_text(f"own-1-{mark}")
    (own,) = client.containers.list(filters={"label": TERMINAL_LABEL})
    assert own.id != container.id and own.attrs["Config"]["User"] == f"{account.pw_uid}:{account.pw_gid}"
    close_tab(page, tab)
    wait_until(lambda: not client.containers.list(all=True, filters={"label": TERMINAL_LABEL}), 20, "removed")
    assert server.api("GET", "gpuenv/api/terminals")["terminals"] == []


def close_tab(page: Page, tab) -> None:
    """Close the terminal's tab in the main area, as a person does (its ×)."""
    tab_id = tab.get_attribute("id")
    page.locator(f'.lm-DockPanel-tabBar li[data-id="{tab_id}"] .lm-TabBar-tabCloseIcon').click()
    expect(tab).to_have_count(0)
