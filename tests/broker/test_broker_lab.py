"""alice, in JupyterLab under /user/alice/ on the shared host, switches a notebook to the broker's GPU environment
from the panel: her kernel then runs in a container as her, on a GPU the broker gave her. With the
broker down, the panel says so, naming it."""

from __future__ import annotations

from browser.lab_harness import environment_item, open_gpu_panel, use_environment
from hub.test_hub_lab import log_in
from playwright.sync_api import expect

from .conftest import wait_until

NOTEBOOK = "broker-switch.ipynb"


def test_alice_switches_a_notebook_to_the_broker_environment_from_the_panel(clean_site, page):
    site = clean_site
    notebook = {"type": "notebook", "format": "json"}
    notebook["content"] = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    r = site.server("alice", "PUT", f"api/contents/{NOTEBOOK}", json=notebook)
    assert r.status_code in (200, 201), (r.status_code, r.text[:300])
    session = {"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}}
    r = site.server("alice", "POST", "api/sessions", json=session)
    assert r.status_code == 201, (r.status_code, r.text[:300])

    log_in(page, site, "alice")
    page.goto(f"{site.url}/user/alice/lab/tree/{NOTEBOOK}?reset")
    page.wait_for_selector("#jp-main-dock-panel", state="attached")
    open_gpu_panel(page)
    expect(environment_item(page, "gpu")).to_contain_text("Test GPU kernel")
    expect(environment_item(page, "power")).to_have_count(0)  # carol's group only: not offered to alice
    use_environment(page, "gpu")

    def switched():
        sessions = site.server("alice", "GET", "api/sessions").json()
        kernel = next(s for s in sessions if s["path"] == NOTEBOOK)["kernel"]
        return kernel if kernel["name"] == "gpuenv-gpu" and kernel["execution_state"] == "idle" else None

    kernel = wait_until(switched, 90, "alice's notebook on the broker's GPU kernel", interval=0.5)
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Test GPU kernel")
    alice = site.users["alice"]
    containers = [c for c in site.containers() if c["kernel_id"] == kernel["id"]]
    assert [(c["status"], c["uid"]) for c in containers] == [("running", str(alice.uid))], containers
    rows = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel["id"]]
    assert len(rows) == 1 and len(rows[0]["gpus"]) == 1, rows

    # the broker goes down: the panel says so, naming it, instead of offering what cannot start
    with site.broker_down():
        # a fresh layout (reset): a restored one may show the panel's tab selected while the panel is hidden
        page.goto(f"{site.url}/user/alice/lab/tree/{NOTEBOOK}?reset")
        page.wait_for_selector("#jp-main-dock-panel", state="attached")
        open_gpu_panel(page)
        expect(page.locator('[data-state="env-no-docker"]')).to_contain_text("broker")

    # the notebook and its kernel go (the module's teardown checks that nothing of the kernel is left)
    for session_id in [s["id"] for s in site.server("alice", "GET", "api/sessions").json() if s["path"] == NOTEBOOK]:
        assert site.server("alice", "DELETE", f"api/sessions/{session_id}").status_code == 204
    site.server("alice", "DELETE", f"api/contents/{NOTEBOOK}")
