"""An image pulled from a registry, as the person sees it in Lab: the panel's bar, "Prepare", the status bar.

The registry is the CI one on 127.0.0.1 behind tests/registry_harness.py's proxy at 8 MB/s, so the ~115 MB the
pull downloads take long enough to watch.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile

import pytest
from playwright.sync_api import Page, expect
from registry_harness import RegistryProxy, remove_test_images

from .lab_harness import LabServer, environment_item, open_gpu_panel, open_lab, use_environment

NAME, DISPLAY = "from-registry", "From the registry"


@pytest.fixture
def pull_lab(tmp_path, monkeypatch, docker_client, pull_tag):
    proxy = RegistryProxy(rate=8e6)
    spec = tmp_path / "share" / "kernels" / f"gpuenv-{NAME}"
    spec.mkdir(parents=True)
    config = {"environment": NAME, "display_name": DISPLAY, "image": proxy.image(pull_tag), "gpus": "none"}
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": DISPLAY,
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "gpuenv-docker-provisioner", "config": config}},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    sockets = tempfile.mkdtemp(prefix="gp", dir="/tmp")  # unix socket paths must stay short
    # no shared namespace holder: it would run the pulled image on and keep it from being removed afterwards
    args = [f"--GpuEnv.socket_root={sockets}", "--GpuEnv.shared_network_namespace=False"]
    server = LabServer(tmp_path / "lab", extra_args=args)
    yield server
    server.stop()
    proxy.stop()
    remove_test_images(docker_client)  # the kernel is gone now: its image goes entirely
    shutil.rmtree(sockets, ignore_errors=True)


def test_prepare_shows_the_pull_on_the_environment_until_it_is_ready(page: Page, pull_lab, screenshot_dir):
    open_lab(page, pull_lab)
    open_gpu_panel(page)
    row = environment_item(page, NAME)
    expect(row).to_contain_text("pulled on first start")
    row.get_by_role("button", name="Prepare").click()
    bar = row.get_by_role("progressbar")
    expect(bar).to_be_visible()
    expect(row).to_contain_text(re.compile(r"\d+ / 11\d MB · \d+ MB/s · (\d+ min )?\d+ s left"))
    expect(row).to_contain_text(re.compile(r"layers \d of 5"))
    expect(row.locator(".jp-GpuEnv-pill")).to_have_text("pulling")
    first = int(bar.get_attribute("aria-valuenow") or 0)
    row.screenshot(path=str(screenshot_dir / "environment-pulling.png"))
    expect(bar).not_to_have_attribute("aria-valuenow", str(first))  # it moves
    expect(row.locator(".jp-GpuEnv-pill")).to_have_text("ready", timeout=60_000)
    expect(row.get_by_role("progressbar")).to_have_count(0)
    expect(row.get_by_role("button", name="Prepare")).to_have_count(0)


def test_a_notebook_waiting_for_its_image_shows_the_pull_in_the_status_bar(page: Page, pull_lab, screenshot_dir):
    pull_lab.start_notebook("waits.ipynb")
    open_lab(page, pull_lab, "lab/tree/waits.ipynb")
    open_gpu_panel(page)
    use_environment(page, NAME)  # the image is missing: the new kernel waits for it
    status = page.locator("#jp-main-statusbar .jp-GpuEnv-pullStatus")
    expect(status).to_contain_text(
        re.compile(rf"Preparing {DISPLAY}: pulling image \d+ % · (\d+ min )?\d+ s left"), timeout=30_000
    )
    expect(status.get_by_role("progressbar")).to_be_visible()
    page.locator("#jp-main-statusbar").screenshot(path=str(screenshot_dir / "statusbar-pulling.png"))
    row = environment_item(page, NAME)
    expect(row.get_by_role("progressbar")).to_be_visible()  # the panel shows it too, and who waits for it
    expect(row).to_contain_text(f"waits.ipynb waits for this image: its kernel starts in {DISPLAY} once it is pulled")
    expect(status).to_be_hidden(timeout=60_000)  # the image is there and the kernel starts: ours says nothing
    expect(page.locator("#jp-main-statusbar")).to_contain_text(DISPLAY)  # Lab's kernel status names it
