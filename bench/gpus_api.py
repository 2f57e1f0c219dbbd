"""GET gpus latency and the server's event-loop lag, side by side with jupyterlab-nvdashboard.

    python3 bench/gpus_api.py --out bench.json [--duration 10] [--fake-nvml tests/recordings/h100x2.json]
                              [--no-nvdashboard]

Runs two servers one after the other on the same card (bench/lagserver.py: a jupyter_server that writes
its own event-loop lag), each for a series of windows of ``--duration`` seconds:

  jupyter_gpuenv (sample_interval 1 s):
    idle            no client: the sampler alone
    panel x1, x5    1 / 5 clients polling GET gpus once a second, as the side panel does
    poll x1, x10    1 / 10 pollers at 20 Hz each: GET gpus latency p50/p95
  jupyterlab-nvdashboard (its websockets at 1 s, its default):
    idle
    resources x1/x5 1 / 5 clients on its "GPU Resources" socket (utilization, memory, PCIe)
    util+mem x1/x5  1 / 5 clients on its "GPU Utilization" and "GPU Memory" sockets

For each window: loop lag (10 ms timer lateness: p50, p99, max, total ms of lateness per second), the
server's CPU time (all threads, and the loop's own thread) from /proc/<pid>/task/*/schedstat, and for our
windows the request latency. Every client runs in its own process, so client-side Python does not
distort the numbers. Prints a table and the ratios; writes everything to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# -- clients (each in its own process) ---------------------------------------------------------------
def http_poller(port: int, token: str, path: str, hz: float, start: float, stop: float, queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"token {token}"}
    latencies, errors, period = [], 0, 1.0 / hz
    next_at = start + random.random() * period  # clients are not in step with each other
    while True:
        now = time.time()
        if now >= stop:
            break
        if next_at > now:
            time.sleep(next_at - now)
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or not body:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append(1000 * (time.perf_counter() - t0))
        next_at += period
    queue.put({"latencies_ms": latencies, "errors": errors})


def ws_client(port: int, token: str, paths: list[str], stop: float, queue) -> None:
    import websocket  # websocket-client

    socks, messages, errors = [], 0, 0
    for path in paths:
        try:
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{port}{path}", header=[f"Authorization: token {token}"], timeout=5
            )
            ws.send(json.dumps({"updateFrequency": 1000, "isPaused": False}))  # what its panel sends
            socks.append(ws)
        except Exception as exc:
            errors += 1
            queue.put({"error": f"{path}: {exc}"})
    for ws in socks:
        ws.settimeout(0.05)
    while time.time() < stop:
        for ws in socks:
            try:
                ws.recv()
                messages += 1
            except websocket.WebSocketTimeoutException:
                pass
            except Exception:
                errors += 1
                time.sleep(0.05)
    for ws in socks:
        with contextlib.suppress(Exception):
            ws.close()
    queue.put({"messages": messages, "errors": errors})


# -- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, workdir: Path, label: str, extensions: dict, fake_nvml: Path | None, extra_args: list[str]
    ) -> None:
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lag_file, self.timings = self.dir / "lag.txt", self.dir / "timings.txt"
        self.log_path = self.dir / "server.log"
        cmd = [
            PY,
            str(ROOT / "bench" / "lagserver.py"),
            "--lag-file",
            str(self.lag_file),
            "--timings",
            str(self.timings),
        ]
        if fake_nvml:
            cmd += ["--fake-nvml", str(fake_nvml)]
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(self.dir / "config"),
            JUPYTER_DATA_DIR=str(self.dir / "data"),
            JUPYTER_RUNTIME_DIR=str(self.dir / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        (self.dir / "config").mkdir(exist_ok=True)  # the extensions, by a config file (the CLI takes no dict)
        (self.dir / "config" / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": extensions}})
        )
        cmd += [
            "--",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.dir}",
            "--GpuEnv.sample_interval=1.0",
            "--GpuEnv.remove_orphans=False",
            *extra_args,
        ]
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(self.dir))

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"token {self.token}"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.get("/api/status")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not answer")

    def cpu_ns(self) -> tuple[int, int]:
        """(all threads, the loop's own thread) CPU time in ns so far."""
        total, main = 0, 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            total += ns
            if task.name == str(self.proc.pid):
                main = ns
        return total, main

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def read_pairs(path: Path, t0: float, t1: float, key: str | None = None) -> list[float]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if key is None and len(parts) == 2:
            t, v = float(parts[0]), float(parts[1])
        elif key is not None and len(parts) == 3 and parts[1].startswith(key):
            t, v = float(parts[0]), float(parts[2])
        else:
            continue
        if t0 <= t <= t1:
            out.append(v)
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def window(server: Server, name: str, duration: float, clients: list[tuple]) -> dict:
    """Run the clients for ``duration`` seconds; measure the server meanwhile."""
    queue: mp.Queue = mp.Queue()
    start = time.time() + 0.5
    stop = start + duration
    procs = []
    for kind, *params in clients:
        target = http_poller if kind == "http" else ws_client
        args = (
            (server.port, server.token, *params, stop, queue)
            if kind == "ws"
            else (server.port, server.token, params[0], params[1], start, stop, queue)
        )
        procs.append(mp.Process(target=target, args=args, daemon=True))
    for p in procs:
        p.start()
    while time.time() < start:
        time.sleep(0.01)
    cpu0, t0 = server.cpu_ns(), time.time()
    while time.time() < stop:
        time.sleep(0.05)
    cpu1, t1 = server.cpu_ns(), time.time()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(5)
    time.sleep(0.7)  # the lag file is flushed every 0.5 s
    lag = read_pairs(server.lag_file, t0, t1)
    latencies = [x for r in results for x in r.get("latencies_ms", [])]
    row = {
        "window": name,
        "seconds": round(t1 - t0, 2),
        "clients": len(clients),
        "lag_p50_ms": pct(lag, 50),
        "lag_p99_ms": pct(lag, 99),
        "lag_max_ms": max(lag) if lag else None,
        "lag_ms_per_s": sum(lag) / (t1 - t0) if lag else None,
        "lag_samples": len(lag),
        "lag_over_1ms": sum(1 for x in lag if x > 1.0),
        # time the loop was held beyond 1 ms, per second: timer jitter below 1 ms does not count
        "blocked_ms_per_s": sum(max(0.0, x - 1.0) for x in lag) / (t1 - t0) if lag else None,
        "cpu_ms_per_s": (cpu1[0] - cpu0[0]) / 1e6 / (t1 - t0),
        "loop_cpu_ms_per_s": (cpu1[1] - cpu0[1]) / 1e6 / (t1 - t0),
        "requests": len(latencies),
        "latency_p50_ms": pct(latencies, 50),
        "latency_p95_ms": pct(latencies, 95),
        "latency_max_ms": max(latencies) if latencies else None,
        "errors": sum(r.get("errors", 0) for r in results) + sum(1 for r in results if "error" in r),
        "ws_messages": sum(r.get("messages", 0) for r in results),
        "client_errors": [r["error"] for r in results if "error" in r][:3],
    }
    for key in ("gpuenv.sample_once", "nvdashboard."):
        samples = read_pairs(server.timings, t0, t1, key)
        if samples:
            row["sample_cost"] = {
                "what": key.rstrip("."),
                "n": len(samples),
                "p50_ms": pct(samples, 50),
                "max_ms": max(samples),
                "sum_ms_per_s": sum(samples) / (t1 - t0),
            }
    return row


def fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: list[dict]) -> str:
    head = (
        "server",
        "window",
        "lag p50",
        "lag p99",
        "lag max",
        "lag >1ms",
        "blocked ms/s",
        "CPU ms/s",
        "loop CPU ms/s",
        "req",
        "p50 ms",
        "p95 ms",
        "sample cost p50/max ms (where)",
        "err",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cost = r.get("sample_cost")
        cost_s = (
            f"{fmt(cost['p50_ms'], 3)}/{fmt(cost['max_ms'], 3)} "
            f"({cost['what']}, {'loop' if 'nvdash' in cost['what'] else 'thread'})"
            if cost
            else "-"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["server"],
                    r["window"],
                    fmt(r["lag_p50_ms"], 3),
                    fmt(r["lag_p99_ms"], 3),
                    fmt(r["lag_max_ms"]),
                    fmt(r["lag_over_1ms"]),
                    fmt(r["blocked_ms_per_s"], 3),
                    fmt(r["cpu_ms_per_s"]),
                    fmt(r["loop_cpu_ms_per_s"]),
                    fmt(r["requests"]),
                    fmt(r["latency_p50_ms"], 3),
                    fmt(r["latency_p95_ms"], 3),
                    cost_s,
                    fmt(r["errors"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    by = {(r["server"], r["window"]): r for r in rows}
    out = []
    for n in (1, 5):
        ours = by.get(("gpuenv", f"panel x{n}"))
        for profile in ("resources", "util+mem"):
            theirs = by.get(("nvdashboard", f"{profile} x{n}"))
            if not ours or not theirs:
                continue
            item = {"clients": n, "nvdashboard": profile}
            for key in (
                "blocked_ms_per_s",
                "lag_over_1ms",
                "lag_ms_per_s",
                "lag_max_ms",
                "lag_p99_ms",
                "cpu_ms_per_s",
                "loop_cpu_ms_per_s",
            ):
                a, b = ours.get(key), theirs.get(key)
                item[key] = (b / a) if a and b is not None and a > 0 else None
                item[key + "_values"] = [a, b]
            out.append(item)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-gpus-api.json"))
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--fake-nvml", type=Path, help="a FakePynvml recording, for machines without a GPU")
    p.add_argument("--no-nvdashboard", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the servers' folders (lag files, logs)")
    args = p.parse_args()
    if args.fake_nvml is not None:
        args.fake_nvml = args.fake_nvml.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="gpuenv-bench-"))
    rows: list[dict] = []
    d = args.duration

    ours = Server(workdir, "gpuenv", {"jupyter_gpuenv": True, "jupyterlab_nvdashboard": False}, args.fake_nvml, [])
    try:
        ours.wait_ready()
        time.sleep(2.5)  # the sampler's first samples
        status, body = ours.get("/gpuenv/api/gpus")
        snap = json.loads(body)
        print(
            f"gpuenv: GET gpus {status}: available={snap.get('available')} gpus={len(snap.get('gpus', []))} "
            f"reason={snap.get('reason')}",
            flush=True,
        )
        path = "/gpuenv/api/gpus"
        plan = [
            ("idle", []),
            ("panel x1", [("http", path, 1.0)]),
            ("panel x5", [("http", path, 1.0)] * 5),
            ("poll x1", [("http", path, 20.0)]),
            ("poll x10", [("http", path, 20.0)] * 10),
            # jupyter_server's own cost per request, for comparison: its status endpoint
            ("api/status x1", [("http", "/api/status", 20.0)]),
            ("api/status x10", [("http", "/api/status", 20.0)] * 10),
        ]
        for name, clients in plan:
            row = window(ours, name, d, clients)
            row["server"] = "gpuenv"
            rows.append(row)
            print(
                f"  {name}: lag max {fmt(row['lag_max_ms'])} ms, lag {fmt(row['lag_ms_per_s'])} ms/s, "
                f"p50 {fmt(row['latency_p50_ms'], 3)} ms, p95 {fmt(row['latency_p95_ms'], 3)} ms",
                flush=True,
            )
    finally:
        ours.stop()

    if not args.no_nvdashboard:
        try:
            import jupyterlab_nvdashboard  # noqa: F401

            have = True
        except ImportError as exc:
            print(f"nvdashboard: not installed ({exc}); skipped", flush=True)
            have = False
        if have:
            theirs = Server(
                workdir, "nvdashboard", {"jupyter_gpuenv": False, "jupyterlab_nvdashboard": True}, args.fake_nvml, []
            )
            try:
                theirs.wait_ready()
                status, body = theirs.get("/nvdashboard/accelerators/check")
                print(f"nvdashboard: accelerators/check {status}: {body[:200]!r}", flush=True)
                time.sleep(1)
                res = ["/nvdashboard/gpu_resource"]
                um = ["/nvdashboard/gpu_utilization", "/nvdashboard/gpu_usage"]
                plan = [
                    ("idle", []),
                    ("resources x1", [("ws", res)]),
                    ("resources x5", [("ws", res)] * 5),
                    ("util+mem x1", [("ws", um)]),
                    ("util+mem x5", [("ws", um)] * 5),
                ]
                for name, clients in plan:
                    row = window(theirs, name, d, clients)
                    row["server"] = "nvdashboard"
                    rows.append(row)
                    print(
                        f"  {name}: lag max {fmt(row['lag_max_ms'])} ms, lag {fmt(row['lag_ms_per_s'])} ms/s, "
                        f"{row['ws_messages']} messages, errors {row['errors']} {row['client_errors']}",
                        flush=True,
                    )
            finally:
                theirs.stop()

    text = table(rows)
    rat = ratios(rows)
    print("\n" + text + "\n")
    for r in rat:

        def x(key, r=r):
            a, b = r[key + "_values"]
            return f"x{r[key]:.1f}" if r[key] is not None else f"({fmt(b, 3)} vs {fmt(a, 3)})"

        print(
            f"nvdashboard {r['nvdashboard']} / gpuenv panel, {r['clients']} client(s): "
            f"blocked ms/s {x('blocked_ms_per_s')}, lag >1ms events {x('lag_over_1ms')}, "
            f"lag max {x('lag_max_ms')}, lag p99 {x('lag_p99_ms')}, server CPU {x('cpu_ms_per_s')}, "
            f"loop-thread CPU {x('loop_cpu_ms_per_s')}"
        )
    result = {
        "rows": rows,
        "ratios": rat,
        "table": text,
        "duration": d,
        "fake_nvml": str(args.fake_nvml or ""),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.keep:
        print(f"server folders kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
