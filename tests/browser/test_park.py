"""Park and resume in a real JupyterLab, as a person sees it: the kernel's row in the GPU panel, the status bar,
the notice while a cell waits for its GPU state, and a failed restore that offers a restart.

The kernel is real (a container kernel with a GPU of its own, from a kernelspec), and so are its container, the
server's allocation of GPUs and its park book. No GPU here: NVML replays a recording in which the test puts the
kernel's container on its GPU, and the driver's checkpoint API is ``fake_cuda.FakeCheckpoint`` acting on that
NVML (launch_lab.py installs both in the server's process).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid

import pytest
from container_harness import install_spec
from playwright.sync_api import Locator, Page, expect

from .lab_harness import PANEL, LabServer, gpu_card, open_gpu_panel, open_lab, wait_until

KERNEL_LABEL = "io.jupyter.gpuenv.kernel-id"
GIB = 1 << 30
NOTEBOOK = "park.ipynb"
MOVE = 30_000  # ms: a park, resume or restart, and the panel reading it (every 0.5 s while one settles)


@pytest.fixture
def park_lab(tmp_path, monkeypatch, docker_client):
    """Lab on two replayed H100s with the fake checkpoint driver, and a kernelspec for a container kernel with a
    GPU of its own; returns the server and the kernelspec's name."""
    share = tmp_path / "share"
    kernel_name = install_spec(share, "park", {"gpus": "exclusive:1", "gpu_mode": "none"})
    monkeypatch.setenv("JUPYTER_PATH", str(share))  # the server finds the kernelspec there
    sockets = tempfile.mkdtemp(prefix="gp", dir="/tmp")  # short unix socket paths; a park book of its own
    server = LabServer(tmp_path / "lab", recording="h100-real", extra_args=[f"--GpuEnv.socket_root={sockets}"])
    # GPU uuids of this test's own: no container kernel of another test on this Docker engine holds them
    uuids = [f"GPU-{uuid.uuid4()}" for _ in range(2)]

    def own_gpus(data):
        for device, gpu_uuid in zip(data["devices"], uuids, strict=True):
            device["nvmlDeviceGetUUID"] = gpu_uuid

    server.edit_recording(own_gpus)
    wait_until(
        lambda: [g["uuid"] for g in server.api("GET", "gpuenv/api/gpus")["gpus"]] == uuids,
        20,
        "the server reading the recording's new GPU uuids",
    )
    yield server, kernel_name
    server.stop()  # its container kernels go with it
    shutil.rmtree(sockets, ignore_errors=True)


def container_pid(docker_client, kernel_id: str, not_pid: int | None = None) -> int:
    """The host pid of the kernel's container's first process (a restart makes a new container)."""

    def running():
        for container in docker_client.containers.list(filters={"label": f"{KERNEL_LABEL}={kernel_id}"}):
            pid = container.attrs["State"]["Pid"]
            if container.status == "running" and pid and pid != not_pid:
                return pid
        return None

    return wait_until(running, 60, f"a running container of kernel {kernel_id}")


def put_on_its_gpu(server: LabServer, kernel_id: str, pid: int) -> int:
    """Make the replayed NVML show ``pid`` with 4 GiB on the kernel's GPU; returns that GPU's index."""
    row = next(k for k in server.api("GET", "gpuenv/api/kernels")["kernels"] if k["kernel_id"] == kernel_id)
    index = row["gpus"][0]

    def place(data):
        data["devices"][index]["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": pid, "usedGpuMemory": 4 * GIB}]

    server.edit_recording(place)
    return index


def kernel_row(page: Page, kernel_id: str) -> Locator:
    return page.locator(f'{PANEL} li.jp-GpuEnv-kernel[data-kernel="{kernel_id}"]')


def badge(row: Locator) -> Locator:
    return row.locator("[data-gpuenv-park-state]")


def run_cell(page: Page, code: str) -> Locator:
    """Type ``code`` into the notebook's last cell and run it (Shift+Enter); returns that cell."""
    cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
    expect(cells.last).to_be_visible()
    cell = cells.nth(cells.count() - 1)  # fixed: running it adds a new last cell
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    return cell


# every text a JupyterLab notification shows, however briefly (the notice is updated in place)
WATCH_NOTIFICATIONS = """() => {
    const seen = (window.__gpuenvNotices = []);
    const note = () => document.querySelectorAll('.Toastify__toast').forEach(t => {
        if (!seen.includes(t.textContent)) seen.push(t.textContent);
    });
    new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def noticed(page: Page, text: str) -> None:
    """Wait until a notification has shown ``text`` (it may be on screen for a moment only)."""
    page.wait_for_function("text => window.__gpuenvNotices.some(t => t.includes(text))", arg=text, timeout=MOVE)


def close_notices(page: Page) -> None:
    """Close the notifications on screen with their close button, as a person does; they may cover the panel.

    (Lab's notices, react-toastify 9, start their auto-close timer when their slide-in animation ends, and on a
    busy page that moment can be missed: a notice then stays until closed. Not this extension's doing.)
    """
    page.evaluate("() => document.querySelectorAll('.jp-Notification-Toast-Close').forEach(b => b.click())")
    expect(page.locator(".Toastify__toast")).to_have_count(0)


def test_park_resume_on_a_cell_and_a_failed_restore_offering_a_restart(
    page: Page, park_lab, docker_client, screenshot_dir
):
    server, kernel_name = park_lab
    kernel_id = server.start_notebook(NOTEBOOK, kernel=kernel_name)["kernel"]["id"]
    pid = container_pid(docker_client, kernel_id)
    index = put_on_its_gpu(server, kernel_id, pid)

    open_lab(page, server, f"lab/tree/{NOTEBOOK}")
    page.evaluate(WATCH_NOTIFICATIONS)
    status_bar = page.locator("#jp-main-statusbar")
    expect(status_bar).to_contain_text("Idle", timeout=60_000)  # the notebook is connected to its kernel
    open_gpu_panel(page)
    row = kernel_row(page, kernel_id)
    gpu_status = status_bar.locator(".jp-GpuEnv-status")

    # on its GPU: Park can be pressed
    expect(badge(row)).to_have_text("on GPU", timeout=MOVE)
    expect(row).to_contain_text(NOTEBOOK)
    expect(row).to_contain_text(f"4.0 GiB on GPU {index}")
    expect(gpu_status).to_contain_text("GPU 4.0 GiB")
    park = row.locator('[data-gpuenv-action="park"]')
    expect(park).to_be_enabled()

    # Park: its memory is in host memory, its GPU free, and the status bar says so
    park.click()
    expect(badge(row)).to_have_text("parked", timeout=MOVE)
    expect(row.locator(".jp-GpuEnv-kernelDetail")).to_contain_text(re.compile(r"4\.0 GiB in host memory · parked"))
    expect(row.locator('[data-gpuenv-action="resume"]')).to_be_enabled()
    expect(gpu_status).to_contain_text("GPU parked · 4.0 GiB in host memory")
    row.screenshot(path=str(screenshot_dir / "kernel-parked.png"))
    expect(gpu_card(page, index)).to_contain_text("No processes")  # its GPU is free meanwhile

    # a cell run in the parked notebook resumes it first, and says so
    cell = run_cell(page, "print(6 * 7)")
    expect(cell.locator(".jp-OutputArea-output")).to_have_text("42", timeout=MOVE)
    expect(cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).to_have_count(0)
    noticed(page, "Resuming GPU state…")
    noticed(page, "GPU state resumed; the cell runs now.")
    close_notices(page)
    expect(badge(row)).to_have_text("on GPU", timeout=MOVE)
    expect(gpu_status).to_contain_text("GPU 4.0 GiB")

    # park again; this time the driver cannot restore it: the row says what happened and offers a restart
    expect(park).to_be_enabled(timeout=MOVE)
    park.click()
    expect(badge(row)).to_have_text("parked", timeout=MOVE)
    server.fail_next_driver_step("restore", "CUDA_ERROR_OUT_OF_MEMORY")
    row.locator('[data-gpuenv-action="resume"]').click()
    expect(badge(row)).to_have_text("failed", timeout=MOVE)
    expect(row.locator(".jp-GpuEnv-kernelNotice")).to_contain_text("restart the kernel")
    expect(row.locator(".jp-GpuEnv-kernelNotice")).to_contain_text("CUDA_ERROR_OUT_OF_MEMORY")
    expect(gpu_status).to_contain_text("GPU parking failed")
    restart = row.locator('[data-gpuenv-action="restart"]')
    expect(restart).to_have_text("Restart kernel")
    expect(restart).to_be_enabled()
    row.screenshot(path=str(screenshot_dir / "kernel-restore-failed.png"))

    # Restart kernel: a new container on the same GPU, not parked; once it holds GPU memory it can be parked
    restart.click()
    expect(page.locator(f'{PANEL} [data-gpuenv-park-state="failed"]')).to_have_count(0, timeout=MOVE)
    new_pid = container_pid(docker_client, kernel_id, not_pid=pid)
    assert put_on_its_gpu(server, kernel_id, new_pid) == index, "a restarted kernel keeps its GPU"
    expect(badge(row)).to_have_text("on GPU", timeout=MOVE)
    expect(park).to_be_enabled(timeout=MOVE)
    expect(gpu_status).to_contain_text("GPU 4.0 GiB")
    after = run_cell(page, "print('restarted', 6 * 7)")
    expect(after.locator(".jp-OutputArea-output")).to_have_text("restarted 42", timeout=MOVE)
