"""JupyterLab under /user/alice/lab behind the real hub, in headless Chromium: alice logs in at the hub,
Lab loads under her prefix with the jupyter-gpuenv labextension, and its GPU panel shows her one GPU."""

from __future__ import annotations

from browser.lab_harness import open_gpu_panel
from playwright.sync_api import expect

PANEL = "#jupyter-gpuenv-panel"


def log_in(page, hub, user: str) -> None:
    """Open the user's Lab URL; the hub asks for a login, then OAuth brings the browser back."""
    page.goto(f"{hub.url}/user/{user}/lab")
    page.wait_for_url("**/hub/login**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.password)
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{user}/lab**")


def test_lab_under_the_users_prefix_loads_the_extension_and_its_panel(hub, page):
    remote_entries = []
    page.on("response", lambda r: "/lab/extensions/jupyter-gpuenv/" in r.url and remote_entries.append(r))

    log_in(page, hub, "alice")
    page.wait_for_selector("#jp-main-dock-panel", state="attached")

    config = page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent)")
    assert config["baseUrl"] == "/user/alice/"
    federated = [e["name"] for e in config.get("federated_extensions", [])]
    assert "jupyter-gpuenv" in federated, f"labextension jupyter-gpuenv not served; federated: {federated}"
    # the browser fetched its code from alice's server and JupyterLab loaded it
    page.wait_for_function("() => window._JUPYTERLAB && window._JUPYTERLAB['jupyter-gpuenv'] !== undefined")
    assert any(r.status == 200 and "/user/alice/lab/extensions/jupyter-gpuenv/" in r.url for r in remote_entries), [
        (r.url, r.status) for r in remote_entries
    ]

    # the GPU panel, talking to /user/alice/gpuenv/api/: only GPU 1 (CUDA_VISIBLE_DEVICES=1 from the spawner)
    panel = open_gpu_panel(page)
    expect(panel.locator("article")).to_have_count(1)
    expect(panel.locator('article[aria-label^="GPU 1:"]')).to_be_visible()
