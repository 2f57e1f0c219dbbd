""" "Use for this notebook": the panel switches a notebook's kernel to a container environment, for real."""

from __future__ import annotations

import json
import os
import time

import docker
import pytest
from playwright.sync_api import Page, expect

from .lab_harness import LabServer, environment_item, open_gpu_panel, open_lab, use_environment

IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")
KERNEL_LABEL = "io.jupyter.gpuenv.kernel-id"


@pytest.fixture
def container_lab(tmp_path, monkeypatch):
    try:
        docker.from_env(timeout=10).images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means the same: no container kernels here
        if os.environ.get("CI"):
            pytest.fail(f"Docker engine or {IMAGE} missing in CI: {exc}")
        pytest.skip(f"needs a Docker engine with {IMAGE} (bash .ci/test.sh sets both up): {exc}")
    share = tmp_path / "share"
    # "test" runs anywhere; "wants-gpu" asks for every GPU, which this machine (CI: no driver) cannot give
    for name, display, gpus in (("test", "Test container", "none"), ("wants-gpu", "Wants a GPU", "all")):
        spec = share / "kernels" / f"gpuenv-{name}"
        spec.mkdir(parents=True)
        spec.joinpath("kernel.json").write_text(
            json.dumps(
                {
                    "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": display,
                    "language": "python",
                    "interrupt_mode": "signal",
                    "metadata": {
                        "kernel_provisioner": {
                            "provisioner_name": "gpuenv-docker-provisioner",
                            "config": {"environment": name, "image": IMAGE, "gpus": gpus},
                        }
                    },
                }
            )
        )
    monkeypatch.setenv("JUPYTER_PATH", str(share))  # the server finds the kernelspec there
    server = LabServer(tmp_path / "lab")
    yield server
    server.stop()


def test_use_for_this_notebook_moves_the_notebook_into_a_container(page: Page, container_lab):
    server = container_lab
    before = server.start_notebook("switch.ipynb")["kernel"]
    assert before["name"] == "python3"
    open_lab(page, server, "lab/tree/switch.ipynb")
    open_gpu_panel(page)
    expect(environment_item(page, "test")).to_contain_text("Test container")
    use_environment(page, "test")

    deadline, session = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        session = next(s for s in server.api("GET", "api/sessions") if s["path"] == "switch.ipynb")
        if session["kernel"]["name"] == "gpuenv-test" and session["kernel"]["execution_state"] == "idle":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the notebook's kernel did not switch: {session}")
    kernel_id = session["kernel"]["id"]
    containers = docker.from_env().containers.list(filters={"label": f"{KERNEL_LABEL}={kernel_id}"})
    assert [c.status for c in containers] == ["running"]
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Test container")
    # the notebook's row on its environment follows Lab's session change, not the kernels' 10 s read
    row = environment_item(page, "test")
    expect(row.locator(".jp-GpuEnv-envKernel", has_text="switch.ipynb")).to_be_visible(timeout=5_000)
    # this server runs as root (CI does), so its kernels do: both Terminal buttons are off up front, saying why
    in_kernel = row.get_by_role("button", name="Open terminal in this kernel's container")
    expect(in_kernel).to_be_disabled()
    expect(row.get_by_role("button", name="Open terminal in this environment")).to_be_disabled()
    expect(row.locator(".jp-GpuEnv-terminalsOff")).to_have_text(
        "Run the Jupyter server as a normal user to open terminals: this one runs as root, so its kernels do too, "
        "and a terminal never opens a root shell."
    )

    server.stop()  # a server that shuts down takes its container kernels with it
    assert docker.from_env().containers.list(all=True, filters={"label": f"{KERNEL_LABEL}={kernel_id}"}) == []


def test_a_refused_start_from_the_launcher_leads_with_the_fix(page: Page, container_lab):
    if container_lab.api("GET", "gpuenv/api/gpus")["available"]:
        pytest.skip("this machine has a GPU: an environment asking for one is not refused here")
    open_lab(page, container_lab)
    # the panel says it first, the fix on one line and what NVML said folded
    open_gpu_panel(page)
    why = environment_item(page, "wants-gpu").locator(".jp-GpuEnv-why")
    expect(why.locator(".jp-GpuEnv-reasonLead")).to_have_text(
        "Environment 'wants-gpu' asks for GPUs (all) but this server sees none: give it `--gpus none` to run it on "
        "the CPU."
    )
    details = why.locator("details")
    expect(details).not_to_have_attribute("open", "")
    expect(details).to_contain_text(f"jupyter gpuenv add wants-gpu --image {IMAGE} --gpus none")
    # the Launcher offers every kernelspec: starting it anyway gets Lab's dialog, with the fix first and wrapped
    page.locator(".jp-LauncherCard", has_text="Wants a GPU").first.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Error Starting Kernel")
    message = dialog.locator(".jp-Dialog-body pre").first
    expect(message).to_contain_text("asks for GPUs (all) but this server sees none: give it `--gpus none`")
    first_line = message.inner_text().splitlines()[0]
    assert first_line.rstrip().endswith("to run it on the CPU"), first_line
    wraps = message.evaluate("e => [getComputedStyle(e).whiteSpace, e.scrollWidth <= e.clientWidth]")
    assert wraps == ["pre-wrap", True], wraps
