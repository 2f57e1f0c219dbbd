"""A container kernel's memory against its limit, for real: a notebook fills its kernel's memory to just below the
environment's limit, and its row warns before the limit restarts it; the row opens its notebook."""

from __future__ import annotations

import json
import os
import re

import docker
import pytest
from playwright.sync_api import Page, expect

from .lab_harness import LabServer, environment_item, open_gpu_panel, open_lab, wait_until

IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")
LIMIT = 512 * 1024**2  # the environment's memory: "512m"


@pytest.fixture
def memory_lab(tmp_path, monkeypatch):
    try:
        docker.from_env(timeout=10).images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means the same: no container kernels here
        if os.environ.get("CI"):
            pytest.fail(f"Docker engine or {IMAGE} missing in CI: {exc}")
        pytest.skip(f"needs a Docker engine with {IMAGE} (bash .ci/test.sh sets both up): {exc}")
    spec = tmp_path / "share" / "kernels" / "gpuenv-small"
    spec.mkdir(parents=True)
    config = {"environment": "small", "image": IMAGE, "gpus": "none", "memory": "512m"}
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Small container",
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "gpuenv-docker-provisioner", "config": config}},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    server = LabServer(tmp_path / "lab")
    yield server
    server.stop()


def kernel_row(server: LabServer, kernel_id: str) -> dict:
    rows = server.api("GET", "gpuenv/api/kernels")["kernels"]
    return next(r for r in rows if r["kernel_id"] == kernel_id)


def test_the_memory_warning_comes_before_the_limit(page: Page, memory_lab):
    server = memory_lab
    kernel_id = server.start_notebook("hog.ipynb", kernel="gpuenv-small")["kernel"]["id"]
    idle = wait_until(lambda: kernel_row(server, kernel_id)["host_memory"], timeout=60)
    assert idle["limit"] == LIMIT and not idle["warning"], idle
    open_lab(page, server, "lab/tree/hog.ipynb")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")
    row = environment_item(page, "small").locator(".jp-GpuEnv-envKernel", has_text="hog.ipynb")
    open_gpu_panel(page)
    expect(row.locator(".jp-GpuEnv-kernelMemory")).to_have_text(re.compile(r"^\d+ MiB of 512 MiB$"))
    expect(row.locator(".jp-GpuEnv-memoryWarning")).to_have_count(0)

    # what a notebook does: hold one large array, here up to 94 % of the limit, past the 90 % warning and below
    # the limit (bytes(...) writes every page, so the cgroup counts them all)
    hog = int(0.94 * LIMIT) - idle["used"]
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.click()
    page.keyboard.type(f"hog = b'x' * {hog}; len(hog)")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-Notebook .jp-OutputArea-output").first).to_have_text(str(hog), timeout=60_000)

    warning = row.locator(".jp-GpuEnv-memoryWarning")
    expect(warning).to_have_text(  # GET kernels every 10 s
        re.compile(r"^Free memory or save your work: this kernel uses 9\d % of its 512 MiB memory limit"),
        timeout=30_000,
    )
    expect(row.locator(".jp-GpuEnv-kernelMemory")).to_have_text(re.compile(r"^4\d\d MiB of 512 MiB$"))
    # before the limit: the kernel lives on, with its variables, and was never restarted
    after = kernel_row(server, kernel_id)
    assert after["host_memory"]["warning"] and after["last_exit"] is None, after
    assert next(s for s in server.api("GET", "api/sessions") if s["kernel"]["id"] == kernel_id)

    # the kernel's row opens its notebook, from a Lab that has it closed
    open_lab(page, server)
    open_gpu_panel(page)
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="hog.ipynb")).to_have_count(0)
    row.locator(".jp-GpuEnv-envKernelName").click()
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="hog.ipynb")).to_be_visible()
