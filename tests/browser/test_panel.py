"""The GPU side panel in a real JupyterLab, driven in headless Chromium."""

from __future__ import annotations

import json
import os
import pwd
import re
import time

import pytest
from playwright.sync_api import Page, expect

from .lab_harness import (
    PANEL,
    RECORDINGS,
    environment_item,
    gpu_card,
    kernel_pid,
    open_gpu_panel,
    open_lab,
)


def endpoint(name: str) -> re.Pattern:
    """A gpuenv API URL, whatever query Lab adds (ServerConnection appends a cache buster to GETs)."""
    return re.compile(rf"/gpuenv/api/{name}(\?|$)")


# above the largest pid_max Linux allows (2**22): no process here has it, so /proc tells nothing of it
OTHER_PID = 4_194_305


@pytest.fixture(scope="module")
def notebook_on_gpu(gpu_lab):
    """analysis.ipynb with a real ipykernel whose pid the recording puts on GPU 0 with 4 GiB and 71 % of its SMs;
    beside it a process of no kernel (2 GiB, 16 %) that /proc does not know."""
    session = gpu_lab.start_notebook("analysis.ipynb")
    kernel_id = session["kernel"]["id"]
    pid = kernel_pid(kernel_id)

    def point_at_kernel(data):
        device = data["devices"][0]
        for key in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetProcessUtilization"):
            device[key][0]["pid"], device[key][1]["pid"] = pid, OTHER_PID

    gpu_lab.edit_recording(point_at_kernel)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the server attributes the pid to the kernel on its next sample
        procs = gpu_lab.api("GET", "gpuenv/api/gpus")["gpus"][0]["processes"]
        if any(p["pid"] == pid and p["kernel_id"] == kernel_id for p in procs):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the server did not attribute pid {pid} to kernel {kernel_id}: {procs}")
    return {"path": "analysis.ipynb", "kernel_id": kernel_id, "pid": pid}


def test_panel_shows_gpu_cards_with_the_recorded_numbers(page: Page, gpu_lab):
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    expect(panel.locator("article")).to_have_count(2)
    first = gpu_card(page, 0)
    expect(first).to_have_attribute("aria-label", "GPU 0: NVIDIA H100 80GB HBM3")
    expect(first.locator("header")).to_have_text(re.compile(r"GPU 0\s*H100 80GB HBM3"))
    memory = first.get_by_role("meter", name="Memory")
    expect(memory).to_have_attribute("aria-valuetext", "6.5 / 79.6 GiB")
    expect(first).to_contain_text("6.5 / 79.6 GiB")
    expect(first.get_by_role("meter", name="Utilization")).to_have_attribute("aria-valuetext", "87 %")
    expect(first).to_contain_text("54 °C")
    expect(first).to_contain_text("312 / 700 W")
    second = gpu_card(page, 1)
    expect(second).to_contain_text("0.5 / 79.6 GiB")
    expect(second).to_contain_text("No processes")
    expect(panel).to_contain_text("Driver 580.159.04 · CUDA 13.0")
    # the sparkline fills from the server's history, then from each refresh
    expect(first.locator("svg[role=img]")).to_have_attribute("aria-label", re.compile(r"utilization up to 87 %"))
    expect(panel.locator(".jp-GpuEnv-badge")).to_have_count(0)  # MIG is off on this recording


def test_processes_are_named_by_their_notebook(page: Page, gpu_lab, notebook_on_gpu):
    open_lab(page, gpu_lab, f"lab/tree/{notebook_on_gpu['path']}")
    open_gpu_panel(page)
    row = gpu_card(page, 0).locator("tbody tr", has_text="analysis.ipynb")
    expect(row).to_contain_text(f"pid {notebook_on_gpu['pid']}")
    expect(row).to_contain_text("4.0 GiB")
    expect(row).to_have_attribute("aria-current", "true")  # the notebook in focus is highlighted
    expect(gpu_card(page, 0).locator("tbody tr", has_text=f"pid {OTHER_PID}")).to_contain_text("other process")
    # the status bar item shows this notebook's GPU memory
    expect(page.locator("#jp-main-statusbar")).to_contain_text("GPU 4.0 GiB")


def test_status_bar_item_is_hidden_for_a_notebook_without_gpu_memory(page: Page, gpu_lab):
    gpu_lab.start_notebook("cpu-only.ipynb")
    open_lab(page, gpu_lab, "lab/tree/cpu-only.ipynb")
    open_gpu_panel(page)
    expect(gpu_card(page, 0)).to_be_visible()
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")  # the kernel is up
    expect(page.locator("#jp-main-statusbar .jp-GpuEnv-status")).to_be_hidden()


def open_panel_counting_requests(page: Page, lab) -> list[str]:
    """Open Lab and the panel; the returned list fills with every GPU API request the page makes."""
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/gpuenv/api/gpus" in r.url else None)
    open_lab(page, lab)
    open_gpu_panel(page)
    expect(gpu_card(page, 0)).to_be_visible()
    return requests


def test_one_request_per_refresh_however_many_views(page: Page, gpu_lab):
    requests = open_panel_counting_requests(page, gpu_lab)
    requests.clear()
    page.wait_for_timeout(6_000)  # default interval 2 s: about 3 refreshes
    snapshots = [u for u in requests if "/history" not in u]
    assert 2 <= len(snapshots) <= 4, snapshots
    assert not [u for u in requests if "/history" in u], "steady state reads no history"


def test_mig_badge(page: Page, gpu_lab):
    recorded = {}

    def to_mig(data):
        recorded.update(data)
        data.clear()
        data.update(json.loads((RECORDINGS / "mig.json").read_text()))

    gpu_lab.edit_recording(to_mig)
    try:
        open_lab(page, gpu_lab)
        open_gpu_panel(page)
        card = gpu_card(page, 0)
        expect(card).to_contain_text("A100 80GB PCIe")
        expect(card.locator(".jp-GpuEnv-badge")).to_have_text("MIG · 2")
        expect(page.locator(f"{PANEL} article")).to_have_count(1)
    finally:
        gpu_lab.edit_recording(lambda data: (data.clear(), data.update(recorded)))


def test_polling_stops_while_the_tab_is_hidden(page: Page, gpu_lab):
    requests = open_panel_counting_requests(page, gpu_lab)
    set_hidden = """hidden => {
        Object.defineProperty(document, 'visibilityState',
                              {configurable: true, get: () => hidden ? 'hidden' : 'visible'});
        document.dispatchEvent(new Event('visibilitychange'));
    }"""
    page.evaluate(set_hidden, True)
    page.wait_for_timeout(2_500)  # a request already under way may finish
    requests.clear()
    page.wait_for_timeout(5_000)
    assert requests == [], f"{len(requests)} GPU requests while hidden"
    page.evaluate(set_hidden, False)
    page.wait_for_timeout(5_000)
    assert len(requests) >= 1, "polling resumes when the tab is shown again"


def test_side_setting_moves_the_panel(page: Page, gpu_lab):
    gpu_lab.api("PUT", "lab/api/settings/jupyter-gpuenv:plugin", {"raw": json.dumps({"side": "left"})})
    try:
        open_lab(page, gpu_lab)
        expect(page.locator('.jp-SideBar.jp-mod-left [data-id="jupyter-gpuenv-panel"]')).to_be_visible()
        expect(page.locator('.jp-SideBar.jp-mod-right [data-id="jupyter-gpuenv-panel"]')).to_have_count(0)
        open_gpu_panel(page)
        expect(gpu_card(page, 0)).to_be_visible()
    finally:
        gpu_lab.api("PUT", "lab/api/settings/jupyter-gpuenv:plugin", {"raw": "{}"})


def test_no_gpu_state_on_a_machine_without_driver(page: Page, plain_lab):
    reply = plain_lab.api("GET", "gpuenv/api/gpus")
    if reply["available"]:
        pytest.skip("this machine has a working NVIDIA driver: the no-GPU state cannot be seen here")
    open_lab(page, plain_lab)
    panel = open_gpu_panel(page)
    state = panel.locator('[data-state="no-gpu"]')
    expect(state).to_contain_text("No GPU on this machine")
    expect(state).to_contain_text("Notebooks here run on the CPU.")
    expect(panel.locator("article")).to_have_count(0)


def test_server_extension_missing(page: Page, gpu_lab):
    page.route("**/gpuenv/api/**", lambda route: route.fulfill(status=404, body="Not Found"))
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    expect(panel.locator('[data-state="no-extension"]')).to_contain_text(
        "jupyter server extension enable jupyter_gpuenv"
    )


def test_request_errors_back_off_and_recover(page: Page, gpu_lab):
    failing = {"on": True, "hits": []}

    def handle(route):
        if failing["on"]:
            failing["hits"].append(time.monotonic())
            route.fulfill(status=500, content_type="application/json", body=json.dumps({"message": "boom"}))
        else:
            route.continue_()

    page.route(endpoint("gpus"), handle)
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    error = panel.locator('[data-state="error"]')
    expect(error).to_contain_text("Lost contact with the GPU service")
    expect(error).to_contain_text("The server answered 500: boom")
    expect(error).to_contain_text(re.compile(r"retrying in \d+ s"))
    page.wait_for_timeout(8_000)
    hits = failing["hits"]
    span = hits[-1] - hits[0]
    # not faster than the 2 s interval (Lumino's first retry may come sooner: jitter from an immediate
    # start); how the back-off grows is a unit test (model.test.ts)
    assert len(hits) <= 2 + span / 2.0, f"{len(hits)} requests in {span:.1f} s"
    failing["on"] = False
    expect(gpu_card(page, 0)).to_contain_text("6.5 / 79.6 GiB", timeout=60_000)
    expect(error).to_have_count(0)


def test_environments_not_available_when_the_server_has_none(page: Page, gpu_lab):
    page.route(
        endpoint("environments"),
        lambda route: route.fulfill(
            status=404, content_type="application/json", body=json.dumps({"message": "no such gpuenv API endpoint"})
        ),
    )
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    expect(panel.locator('[data-state="env-not-available"]')).to_contain_text("Container kernels are not available")
    expect(gpu_card(page, 0)).to_be_visible()  # the GPU section does not suffer


ENVIRONMENTS = {
    "docker": {"available": True, "reason": None},
    "environments": [
        {
            "name": "pytorch",
            "display_name": "PyTorch 2.6 / CUDA 12.4",
            "image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
            "image_present": True,
            "cuda_version": "12.4",
            "compatible": True,
            "reason": None,
            "gpus": "exclusive:1",
            "kernelspec": "gpuenv-pytorch",
            "state": "ready",
            "pull_progress": None,
            "can_start": True,
            "reason_code": None,
        },
        {
            "name": "jax",
            "display_name": "JAX / CUDA 12.8",
            "image": "ghcr.io/nvidia/jax:jax",
            "image_present": False,
            "cuda_version": "12.8",
            "compatible": True,
            "reason": None,
            "gpus": "all",
            "kernelspec": "gpuenv-jax",
            "state": "pulling",
            "pull_progress": {
                "image": "ghcr.io/nvidia/jax:jax",
                "phase": "downloading",
                "bytes_done": 1.2e9,
                "bytes_total": 3.4e9,
                "percent": 35.3,
                "rate_bytes_per_s": 41e6,
                "eta_s": 54,
                "layers_done": 3,
                "layers_total": 9,
                "started_at": 1.7e9,
            },
            "can_start": False,
            "reason_code": "pulling",
        },
        {
            "name": "legacy",
            "display_name": "TensorFlow 2.20 / CUDA 13.1",
            "image": "tensorflow/tensorflow:2.20.0-gpu",
            "image_present": True,
            "cuda_version": "13.1",
            "compatible": False,
            "reason": "the image needs CUDA 13.1; the driver supports up to 13.0",
            "gpus": "0,1",
            "kernelspec": "gpuenv-legacy",
            "state": "incompatible",
            "pull_progress": None,
            "can_start": False,
            "reason_code": "cuda-too-new",
        },
    ],
}


def serve_environments(page: Page) -> None:
    """Environments in every state the panel designs for, whatever the engine of this machine has."""
    page.route(
        endpoint("environments"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(ENVIRONMENTS)),
    )


def test_environments_show_state_policy_and_why_they_cannot_start(page: Page, gpu_lab, notebook_on_gpu):
    serve_environments(page)
    open_lab(page, gpu_lab, f"lab/tree/{notebook_on_gpu['path']}")
    open_gpu_panel(page)
    ready = environment_item(page, "pytorch")
    expect(ready).to_contain_text("PyTorch 2.6 / CUDA 12.4")
    expect(ready).to_contain_text("pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime")
    expect(ready).to_contain_text("ready")
    expect(ready).to_contain_text("1 GPU of its own")
    expect(ready.get_by_role("button", name="Use for this notebook")).to_be_enabled()
    pulling = environment_item(page, "jax")
    expect(pulling).to_contain_text("1.2 / 3.4 GB")
    expect(pulling.get_by_role("button", name="Use for this notebook")).to_be_disabled()
    expect(pulling).to_contain_text("The image is being downloaded.")
    incompatible = environment_item(page, "legacy")
    expect(incompatible).to_contain_text("incompatible")
    expect(incompatible.get_by_role("button", name="Use for this notebook")).to_be_disabled()
    expect(incompatible).to_contain_text("The image needs CUDA 13.1; the driver supports up to 13.0.")


def test_dark_theme_and_screenshots(page: Page, gpu_lab, notebook_on_gpu, screenshot_dir):
    serve_environments(page)
    page.set_viewport_size({"width": 1280, "height": 1400})  # the whole panel, environments included
    colors = {}
    try:
        for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            gpu_lab.set_theme(theme)
            open_lab(page, gpu_lab, f"lab/tree/{notebook_on_gpu['path']}")
            expect(page.locator("body")).to_have_attribute(
                "data-jp-theme-light", "true" if name == "light" else "false"
            )
            panel = open_gpu_panel(page)
            card = gpu_card(page, 0)
            expect(card.locator("svg[role=img]")).to_be_visible()
            expect(card.locator('tr[aria-current="true"]')).to_contain_text("analysis.ipynb")
            expect(
                environment_item(page, "pytorch").get_by_role("button", name="Use for this notebook")
            ).to_be_enabled()
            page.wait_for_timeout(500)  # bar transitions
            colors[name] = card.evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).color]")
            panel.locator(".jp-GpuEnv-body").screenshot(path=str(screenshot_dir / f"panel-{name}.png"))
    finally:
        gpu_lab.set_theme("JupyterLab Light")
    assert colors["light"][0] != colors["dark"][0], colors
    assert colors["light"][1] != colors["dark"][1], colors


def run_command(page: Page, label: str) -> None:
    """Run a command from Lab's palette, as a person does: its shortcut, the label, Enter.

    The shortcut is Lab's on the whole page, so nothing is clicked first: a click in the main area could land on
    a Launcher card and open something that takes the focus.
    """
    search = page.locator(".lm-CommandPalette-input")
    if search.is_visible():  # still open from the last command: close it, so the shortcut opens it afresh
        search.press("Escape")
    expect(search).to_be_hidden()
    page.keyboard.press("Control+Shift+C")
    expect(search).to_be_visible()
    search.fill(label)
    expect(page.locator(".lm-CommandPalette-item.lm-mod-active")).to_contain_text(label)
    search.press("Enter")
    expect(search).to_be_hidden()


def test_a_slow_docker_call_keeps_the_environment_list(page: Page, gpu_lab):
    """One reply saying Docker did not answer (a loaded machine) keeps the list with a note; only repeated ones
    replace it.

    The test decides every reply the panel gets: the first is the list, then each read waits until the test
    answers it. The panel also reads on its own (every 2 s while an image is pulled), so counting the palette's
    refreshes would race those reads; here each answer is one failed read, whichever read it answers.
    """
    down = {"docker": {"available": False, "reason": "the Docker engine did not answer within 5 s"}, "environments": []}
    queued, waiting = [ENVIRONMENTS], []

    def reply(route, body) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def handle(route) -> None:
        if queued:
            reply(route, queued.pop(0))
        else:
            waiting.append(route)  # answered by fail_one_read

    def fail_one_read() -> None:
        """Answer one read with Docker not answering: one the panel already waits on, else the palette's."""
        if waiting:
            reply(waiting.pop(0), down)
        else:
            queued.append(down)
            run_command(page, "Refresh GPUs")

    page.route(endpoint("environments"), handle)
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    expect(environment_item(page, "pytorch")).to_be_visible()
    stale = panel.locator('[data-state="env-stale"]')
    fail_one_read()
    expect(stale).to_have_text("Could not refresh; showing the last list. The Docker engine did not answer within 5 s.")
    expect(environment_item(page, "pytorch")).to_be_visible()
    expect(panel.locator('[data-state="env-no-docker"]')).to_have_count(0)
    fail_one_read()  # a second failure in a row: still the list
    expect(environment_item(page, "pytorch")).to_be_visible()
    fail_one_read()  # a third: now it says so
    expect(panel.locator('[data-state="env-no-docker"]')).to_contain_text("Docker is not available")
    expect(stale).to_have_count(0)
    page.unroute(endpoint("environments"))
    for route in waiting:
        route.abort()


def test_a_normal_state_is_a_note_not_a_warning(page: Page, gpu_lab):
    missing = {
        **ENVIRONMENTS["environments"][0],
        "state": "image-missing",
        "image_present": False,
        "reason": "image pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime is not on the engine yet: it is pulled at "
        "first start",
        "reason_code": "image-missing",
    }
    reply = {"docker": {"available": True, "reason": None}, "environments": [missing]}
    page.route(
        endpoint("environments"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(reply)),
    )
    open_lab(page, gpu_lab)
    open_gpu_panel(page)
    note = environment_item(page, "pytorch").locator(".jp-GpuEnv-envReason")
    expect(note).to_contain_text("it is pulled at first start.")
    color, warn, plain = note.evaluate(
        """e => {
            const probe = document.createElement('span');
            e.append(probe);
            const read = v => { probe.style.color = `var(${v})`; return getComputedStyle(probe).color; };
            const out = [getComputedStyle(e).color, read('--jp-warn-color0'), read('--jp-ui-font-color2')];
            probe.remove();
            return out;
        }"""
    )
    assert color != warn and color == plain, (color, warn, plain)


def test_history_chart_has_a_scale_and_a_readout_of_the_recorded_values(page: Page, gpu_lab):
    open_lab(page, gpu_lab)
    open_gpu_panel(page)
    card = gpu_card(page, 0)
    chart = card.locator(".jp-GpuEnv-chart")
    expect(chart.locator(".jp-GpuEnv-chartScale")).to_have_text(re.compile(r"100 %\s*0"))
    expect(chart.locator(".jp-GpuEnv-span")).to_have_text(re.compile(r"^\d+ (s|min)$"))
    plot = chart.locator(".jp-GpuEnv-chartPlot")
    box = plot.bounding_box()
    plot.hover(position={"x": box["width"] - 1, "y": box["height"] / 2})  # the newest sample
    # the recording: 6.5 of 79.6 GiB used, 87 % busy
    # the sample under the pointer; new samples arrive while it rests there, so it may be a few seconds old
    expect(chart.locator(".jp-GpuEnv-readout")).to_have_text(
        re.compile(r"^(now|\d+ s ago) · memory 6\.5 GiB \(8 %\) · utilization 87 %$")
    )
    expect(chart.locator(".jp-GpuEnv-cursor")).to_be_visible()
    page.mouse.move(0, 0)
    expect(chart.locator(".jp-GpuEnv-readout")).to_have_count(0)


def test_a_gpu_opens_as_a_dashboard_with_the_recorded_values(page: Page, gpu_lab):
    open_lab(page, gpu_lab)
    open_gpu_panel(page)
    gpu_card(page, 0).get_by_role("button", name="Open GPU 0 dashboard").click()
    dashboard = page.locator("#jp-main-dock-panel .jp-GpuEnv-dashboard")
    expect(dashboard).to_contain_text("GPU 0 · NVIDIA H100 80GB HBM3")
    # the recording's numbers, fed by the same poll (and the server's one sampler) as the panel
    for title, now in (("Utilization", "87 %"), ("Memory", "6.5 GiB"), ("Power", "312 W"), ("Temperature", "54 °C")):
        expect(dashboard.locator(f'section[aria-label="{title}"] .jp-GpuEnv-metricNow')).to_have_text(now)
    expect(dashboard.locator('section[aria-label="Memory"] .jp-GpuEnv-chartScale')).to_contain_text("79.6 GiB")
    expect(dashboard.locator('section[aria-label^="PCIe"]')).to_have_count(0)  # not read by this server
    expect(dashboard).to_contain_text("PCIe throughput is not read by this server")
    plot = dashboard.locator('section[aria-label="Power"] .jp-GpuEnv-chartPlot')
    box = plot.bounding_box()
    plot.hover(position={"x": box["width"] - 1, "y": box["height"] / 2})
    expect(dashboard.locator('section[aria-label="Power"] .jp-GpuEnv-readout')).to_have_text(
        re.compile(r"^(now|\d+ s ago) · 312 W$")
    )
    # a second click shows the same tab
    gpu_card(page, 0).get_by_role("button", name="Open GPU 0 dashboard").click()
    expect(page.locator("#jp-main-dock-panel .jp-GpuEnv-dashboard")).to_have_count(1)


def test_sections_fold_and_titles_stay_on_one_line(page: Page, gpu_lab):
    serve_environments(page)
    page.set_viewport_size({"width": 1280, "height": 800})
    open_lab(page, gpu_lab)
    panel = open_gpu_panel(page)
    for env in ("pytorch", "jax", "legacy"):  # a name with a pill is one line, however narrow the panel
        header = environment_item(page, env).locator(".jp-GpuEnv-envHeader")
        expect(header).to_be_visible()
        lines = header.evaluate(
            "e => e.getBoundingClientRect().height / e.querySelector('.jp-GpuEnv-pill').getBoundingClientRect().height"
        )
        assert lines < 1.9, (env, lines)
    toggle = panel.get_by_role("button", name="Environments")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(environment_item(page, "pytorch")).to_have_count(0)
    gpus = panel.get_by_role("button", name="GPUs", exact=True)
    gpus.click()
    expect(panel.locator("article")).to_have_count(0)
    gpus.click()
    toggle.click()
    expect(panel.locator("article")).to_have_count(2)
    expect(environment_item(page, "pytorch")).to_be_visible()


def test_processes_show_what_nvml_and_proc_give(page: Page, gpu_lab, notebook_on_gpu):
    """nvitop's columns: the kernel's real process (its account, memory, age and command from /proc) with the
    recording's GPU numbers; a process /proc does not know reads '–' there, not an error."""
    open_lab(page, gpu_lab)
    open_gpu_panel(page)
    table = gpu_card(page, 0).locator("table")
    columns = ["Process", "User", "GPU %", "GPU mem", "Host mem", "Time"]
    expect(table.locator("thead th")).to_have_text([re.compile(rf"^{re.escape(c)}( ▾| ▴)?$") for c in columns])
    expect(table.locator('th[aria-sort="descending"]')).to_have_text("GPU mem ▾")  # by GPU memory at first
    kernel = table.locator("tbody tr", has_text="analysis.ipynb")
    cells = kernel.locator("td")
    expect(cells.nth(0)).to_contain_text(f"pid {notebook_on_gpu['pid']}")
    expect(cells.nth(0)).to_contain_text("-m ipykernel_launcher -f")  # its command line, shortened
    expect(cells.nth(1)).to_have_text(pwd.getpwuid(os.getuid()).pw_name)
    expect(cells.nth(2)).to_have_text("71 %")
    expect(cells.nth(3)).to_have_text("4.0 GiB")
    expect(cells.nth(4)).to_have_text(re.compile(r"^\d+ MiB$"))  # an idle ipykernel holds tens of MiB
    expect(cells.nth(5)).to_have_text(re.compile(r"^\d+ (s|min( \d+ s)?)$"))
    other = table.locator("tbody tr", has_text=f"pid {OTHER_PID}").locator("td")
    expect(other).to_have_text([re.compile(rf"^other process\s*pid {OTHER_PID}$"), "–", "16 %", "2.0 GiB", "–", "–"])
    expect(gpu_card(page, 1)).to_contain_text("No processes")


def test_processes_sort_by_each_column_and_a_notebooks_row_opens_it(page: Page, gpu_lab, notebook_on_gpu):
    open_lab(page, gpu_lab)  # no notebook open yet
    open_gpu_panel(page)
    card = gpu_card(page, 0)
    rows = card.locator("tbody tr")
    expect(rows.first).to_contain_text("analysis.ipynb")  # by GPU memory: 4 GiB before the other's 2 GiB
    # (column, first row once clicked, first row clicked again); a column's missing values stay last
    for column, first, again in (
        ("GPU mem", "other process", "analysis.ipynb"),
        ("GPU %", "analysis.ipynb", "other process"),  # 71 % before 16 %
        ("Host mem", "analysis.ipynb", "analysis.ipynb"),  # the other has none: last either way
        ("Time", "analysis.ipynb", "analysis.ipynb"),
        ("User", "analysis.ipynb", "analysis.ipynb"),
        ("Process", "analysis.ipynb", "other process"),  # by name, a to z
    ):
        button = card.get_by_role("button", name=column, exact=True)
        button.click()
        expect(rows.first).to_contain_text(first)
        button.click()
        expect(rows.first).to_contain_text(again)
        expect(card.locator("th[aria-sort]")).to_contain_text(column)
    rows.filter(has_text="analysis.ipynb").click()
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="analysis.ipynb")).to_be_visible()


def test_eight_gpus_and_a_dashboard_screenshots(page: Page, gpu8_lab, screenshot_dir):
    """The layout at 8 GPUs, light and dark (docs/screenshots with GPUENV_SCREENSHOTS=docs/screenshots)."""
    serve_environments(page)
    page.set_viewport_size({"width": 1280, "height": 3800})
    try:
        for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            gpu8_lab.set_theme(theme)
            open_lab(page, gpu8_lab)
            panel = open_gpu_panel(page)
            expect(panel.locator("article")).to_have_count(8)
            expect(gpu_card(page, 4)).to_contain_text("78.0 / 79.6 GiB")
            expect(gpu_card(page, 7).locator("svg[role=img]")).to_be_visible()
            expect(environment_item(page, "pytorch")).to_be_visible()
            page.wait_for_timeout(500)  # bar transitions
            panel.locator(".jp-GpuEnv-body").screenshot(path=str(screenshot_dir / f"panel-8gpus-{name}.png"))
        gpu8_lab.set_theme("JupyterLab Light")
        open_lab(page, gpu8_lab)
        panel = open_gpu_panel(page)
        expect(panel.locator("article")).to_have_count(8)
        full = panel.locator(".jp-GpuEnv-cards").bounding_box()["height"]
        panel.get_by_role("button", name="Compact").click()
        expect(gpu_card(page, 0).locator("svg[role=img]")).to_have_count(0)  # two meters per GPU, nothing else
        expect(gpu_card(page, 4).get_by_role("meter", name="Memory")).to_have_attribute(
            "aria-valuetext", "78.0 / 79.6 GiB"
        )
        compact = panel.locator(".jp-GpuEnv-cards").bounding_box()["height"]
        assert compact < 800 and compact < full / 2.5, (compact, full)  # 8 GPUs in one laptop-sized view
        panel.locator(".jp-GpuEnv-body").screenshot(path=str(screenshot_dir / "panel-8gpus-compact-light.png"))
        page.set_viewport_size({"width": 1280, "height": 800})
        gpu_card(page, 0).get_by_role("button", name="Open GPU 0 dashboard").click()
        dashboard = page.locator("#jp-main-dock-panel .jp-GpuEnv-dashboard")
        expect(dashboard.locator('section[aria-label="Utilization"] .jp-GpuEnv-metricNow')).to_have_text("87 %")
        page.wait_for_timeout(2_500)  # a few more samples on the charts
        dashboard.screenshot(path=str(screenshot_dir / "dashboard-light.png"))
    finally:
        gpu8_lab.set_theme("JupyterLab Light")
