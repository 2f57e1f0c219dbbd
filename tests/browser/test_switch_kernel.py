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
    spec = share / "kernels" / "gpuenv-test"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Test container",
                "language": "python",
                "interrupt_mode": "signal",
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "gpuenv-docker-provisioner",
                        "config": {"environment": "test", "image": IMAGE, "gpus": "none"},
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

    server.stop()  # a server that shuts down takes its container kernels with it
    assert docker.from_env().containers.list(all=True, filters={"label": f"{KERNEL_LABEL}={kernel_id}"}) == []
