"""A jupyter_server that measures its own event-loop lag from inside, for bench/gpus_api.py and tests/gpu.

    python3 bench/lagserver.py --lag-file LAG.txt [--fake-nvml REC.json] [--timings TIMINGS.txt] -- SERVERAPP-ARGS...

A coroutine on the server's event loop sleeps 10 ms again and again and writes down how late each wake-up
is (``time.time() lateness_ms`` lines in ``--lag-file``, flushed by a thread every 0.5 s). Anything that
holds the loop — a handler, a periodic callback calling NVML on the loop, the GIL held by another thread —
shows up as lateness. ``--timings`` also writes how long each GPU sample took: our sampler's
``sample_once`` (on its own thread) and nvdashboard's websocket ``send_data`` (on the loop).

``--fake-nvml`` replaces NVML by a FakePynvml recording (tests/recordings/*.json) for machines without a
GPU, for our extension and for jupyterlab-nvdashboard alike, so the bench runs anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Log:
    """Lines appended from any thread, written out by a flusher thread."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.lines = path, []
        if path is not None:
            path.write_text("")
            threading.Thread(target=self._flush_forever, name="bench-log", daemon=True).start()

    def add(self, line: str) -> None:
        if self.path is not None:
            self.lines.append(line)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(0.5)
            self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []  # swapping is atomic under the GIL
        if lines:
            with self.path.open("a") as f:
                f.write("\n".join(lines) + "\n")


def fake_pynvml_module(recording: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_pynvml
    import pynvml

    fake = fake_pynvml.FakePynvml(json.loads(recording.read_text()))

    def not_supported(*args):
        raise pynvml.NVMLError_NotSupported()

    # what jupyterlab-nvdashboard reads at import that no recording holds
    fake.nvmlDeviceGetNvLinkVersion = not_supported
    fake.nvmlDeviceGetMaxPcieLinkGeneration = lambda handle: 5
    fake.nvmlDeviceGetMaxPcieLinkWidth = lambda handle: 16
    return fake


def instrument(timings: Log) -> None:
    from jupyter_gpuenv.gpus import sampler

    original = sampler.Sampler.sample_once

    def sample_once(self):
        t0 = time.perf_counter()
        try:
            return original(self)
        finally:
            timings.add(f"{time.time():.6f} gpuenv.sample_once {1000 * (time.perf_counter() - t0):.4f}")

    sampler.Sampler.sample_once = sample_once
    try:
        from jupyterlab_nvdashboard.apps import gpu
    except Exception:
        return
    for name in dir(gpu):
        cls = getattr(gpu, name)
        if isinstance(cls, type) and name.endswith("WebSocketHandler") and "send_data" in cls.__dict__:

            def wrap(fn, label=name):
                def send_data(self):
                    t0 = time.perf_counter()
                    try:
                        return fn(self)
                    finally:
                        timings.add(f"{time.time():.6f} nvdashboard.{label} {1000 * (time.perf_counter() - t0):.4f}")

                return send_data

            cls.send_data = wrap(cls.__dict__["send_data"])


async def watch_loop(lag: Log, period: float = 0.01) -> None:
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        late = time.perf_counter() - t0 - period
        lag.add(f"{time.time():.6f} {1000 * late:.4f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lag-file", type=Path, required=True)
    p.add_argument("--timings", type=Path)
    p.add_argument("--fake-nvml", type=Path)
    args, rest = p.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.fake_nvml is not None:
        fake = fake_pynvml_module(args.fake_nvml)
        sys.modules["pynvml"] = fake  # nvdashboard imports pynvml at import time
        from jupyter_gpuenv.gpus import nvml

        nvml.load_pynvml = lambda: fake
    lag, timings = Log(args.lag_file), Log(args.timings)
    if args.timings is not None:
        instrument(timings)

    from jupyter_server.serverapp import ServerApp

    app = ServerApp.instance()
    app.initialize(rest)
    app.io_loop.add_callback(lambda: asyncio.ensure_future(watch_loop(lag)))
    try:
        app.start()
    finally:
        lag.flush()
        timings.flush()


if __name__ == "__main__":
    main()
