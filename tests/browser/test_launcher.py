"""Environment tiles in Lab's Launcher: the icon `jupyter gpuenv add` gives each, a GPU card or a CPU chip."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from jupyter_gpuenv.cli.main import main
from jupyter_gpuenv.environments.kernelspecs import LOGOS

from .lab_harness import LabServer, open_lab

IMAGE = "gpuenv-test-kernel:latest"  # only named: nothing starts here


@pytest.fixture
def launcher_lab(tmp_path, monkeypatch):
    prefix = tmp_path / "prefix"
    for name, gpus, display in (("torch", "1", "Torch on a GPU"), ("py", "none", "Python on the CPU")):
        added = main(
            ["add", name, "--image", IMAGE, "--gpus", gpus, "--display-name", display, "--prefix", str(prefix)]
        )
        assert added == 0
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    server = LabServer(tmp_path / "lab")
    yield server
    server.stop()


def test_environment_tiles_show_a_gpu_card_or_a_cpu_chip(page: Page, launcher_lab):
    open_lab(page, launcher_lab)
    for display, kernelspec, logo in (
        ("Torch on a GPU", "gpuenv-torch", "gpu.svg"),
        ("Python on the CPU", "gpuenv-py", "cpu.svg"),
    ):
        tile = page.locator('.jp-LauncherCard[data-category="Notebook"]', has_text=display)
        icon = tile.locator("img.jp-Launcher-kernelIcon")
        expect(icon).to_be_visible()  # not the first letter Lab draws for a kernelspec without a logo
        expect(tile.locator(".jp-LauncherCard-noKernelIcon")).to_have_count(0)
        assert icon.evaluate("img => img.complete && img.naturalWidth > 0"), f"{display}: its icon did not load"
        src = icon.get_attribute("src")
        assert f"/kernelspecs/{kernelspec}/logo-svg.svg" in src, src
        served = page.request.get(src if src.startswith("http") else launcher_lab.url(src.lstrip("/")))
        assert served.ok and served.body() == Path(LOGOS, logo).read_bytes(), (display, served.status)
