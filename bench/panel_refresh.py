"""Browser time per refresh of the GPU panel, measured side by side in one run.

Starts the browser tests' JupyterLab (recorded NVML: two H100), opens it in headless Chromium and, over
the same number of seconds each, reads Chrome's own counters (CDP Performance.getMetrics: main-thread
task, script, layout and style time) with the GPU panel open and with it closed (status bar only). Divided
by the number of GET gpus requests seen in that window, that is the cost of one refresh.

    python bench/panel_refresh.py [--seconds 20] [--interval 1]

Also prints the size of the built bundle (jupyter_gpuenv/labextension/static).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from lab_harness import CHROMIUM, CHROMIUM_ARGS, LabServer, open_gpu_panel, open_lab  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def bundle_size() -> dict[str, int]:
    static = ROOT / "jupyter_gpuenv" / "labextension" / "static"
    files = [p for p in static.glob("*.js")]
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "source_maps": len(list(static.glob("*.map"))),
    }


def measure(page, cdp, seconds: float) -> dict[str, float]:
    seen: list[str] = []

    def on_request(request):
        if "/gpuenv/api/gpus" in request.url and "/history" not in request.url:
            seen.append(request.url)

    before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    page.on("request", on_request)
    page.wait_for_timeout(seconds * 1000)
    page.remove_listener("request", on_request)
    after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    n = max(1, len(seen))
    out = {"refreshes": len(seen)}
    for name in METRICS:
        out[f"{name}_ms_per_refresh"] = round((after[name] - before[name]) * 1000 / n, 2)
    return out


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="open/closed pairs; the median is shown")
    parser.add_argument("--interval", type=float, default=0.5, help="the panel's refresh interval (s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = LabServer(Path(tmp), recording="h100x2")
        try:
            server.api(
                "PUT", "lab/api/settings/jupyter-gpuenv:plugin", {"raw": json.dumps({"refreshInterval": args.interval})}
            )
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")
                open_lab(page, server)
                panel = open_gpu_panel(page)
                panel.locator("article").first.wait_for()
                page.wait_for_timeout(3000)  # let start-up work settle
                tab = page.locator('.jp-SideBar [data-id="jupyter-gpuenv-panel"]')
                runs: dict[str, list[dict[str, float]]] = {"panel open": [], "panel closed": []}
                for _ in range(args.rounds):  # alternate, so Lab's own background work hits both alike
                    runs["panel open"].append(measure(page, cdp, args.seconds))
                    tab.click()  # close
                    page.wait_for_timeout(500)
                    runs["panel closed"].append(measure(page, cdp, args.seconds))
                    tab.click()  # open again
                    page.wait_for_timeout(500)
                results = {case: median_of(rs) for case, rs in runs.items()}
                browser.close()
        finally:
            server.stop()

    print(f"refresh interval {args.interval} s, {args.rounds} x {args.seconds} s per case (median), Chromium headless")
    for case, r in results.items():
        print(f"  {case:13s} " + ", ".join(f"{k}={v}" for k, v in r.items()))
    o, c = results["panel open"], results["panel closed"]
    print(
        "  panel's own share per refresh (open - closed): "
        + ", ".join(f"{k.split('_')[0]}={o[k] - c[k]:.2f} ms" for k in o if k != "refreshes")
    )
    if c["TaskDuration_ms_per_refresh"]:
        print(
            f"  ratio open/closed (task time per refresh): "
            f"{o['TaskDuration_ms_per_refresh'] / c['TaskDuration_ms_per_refresh']:.2f}"
        )
    print(f"bundle: {bundle_size()}")


if __name__ == "__main__":
    main()
