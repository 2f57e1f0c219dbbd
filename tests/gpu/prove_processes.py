"""The processes table's columns on a real GPU (issue 24): what NVML and /proc say of a process doing GPU work.

    python3 tests/gpu/prove_processes.py --out DIR

A PyTorch process (the machine's own CUDA PyTorch) multiplies matrices for about 20 s; meanwhile the sampler's
reader (``gpus.nvml.NvmlReader``) and ``gpus.processes.describe`` read it each second, exactly as a server's
sampler thread does. Checked: the process is listed with its GPU memory, a GPU % that rises above 0 while it
computes (``nvmlDeviceGetProcessUtilization``, compared with ``nvidia-smi pmon``), its resident host memory
(against /proc/PID/status), its start time, command and user. Prints PASS/FAIL lines; writes processes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from jupyter_gpuenv.gpus import nvml, processes

WORK = (
    "import torch, time\n"
    "a = torch.randn(8192, 8192, device='cuda')\n"
    "t = time.time()\n"
    "while time.time() - t < 20:\n"
    "    a = a @ a\n"
    "    a = a / a.norm()\n"
    "    torch.cuda.synchronize()\n"
)
TORCH = "/opt/torch/.venv/bin/python3"  # the GPU machine's CUDA PyTorch (run with PYTHONPATH unset)
results: list[dict] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'}: {name} — {detail}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    python = TORCH if os.path.exists(TORCH) else "python3"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    worker = subprocess.Popen([python, "-c", WORK], env=env)
    reader = nvml.NvmlReader(nvml.load_pynvml())
    assert reader.init() is None, "NVML did not start"
    boot = processes.machine_boot_time()

    def facts(pid: int) -> processes.ProcessFacts:
        return processes.read_facts(pid, boot=boot)

    rows, pmon = [], []
    try:
        deadline = time.time() + 18
        while time.time() < deadline and worker.poll() is None:
            time.sleep(1.0)
            snapshot = reader.read()
            processes.describe(snapshot, me=os.getuid(), shared_host=False, facts=facts)  # as the server does
            mine = [pr for g in snapshot.gpus for pr in g.processes if pr.pid == worker.pid]
            if mine:
                rows.append(mine[0])
            smi = subprocess.run(["nvidia-smi", "pmon", "-c", "1", "-s", "u"], capture_output=True, text=True)
            pmon += [line.split() for line in smi.stdout.splitlines() if str(worker.pid) in line.split()]
        status = Path(f"/proc/{worker.pid}/status").read_text() if worker.poll() is None else ""
    finally:
        worker.kill()
        worker.wait()
        reader.shutdown()
    (args.out / "processes.json").write_text(
        json.dumps({"rows": [vars(r) for r in rows], "pmon": pmon, "results": results}, default=str, indent=1)
    )
    check("the computing process is listed on its GPU", bool(rows), f"{len(rows)} samples for pid {worker.pid}")
    if not rows:
        return 1
    last = rows[-1]
    busy = [r.gpu_utilization for r in rows if r.gpu_utilization]
    smi_busy = [row[3] for row in pmon if len(row) > 3 and row[3].isdigit()]
    check("its GPU memory", (last.used_memory or 0) > 256 << 20, f"{(last.used_memory or 0) >> 20} MiB")
    check("its GPU % rises above 0 while it computes (NVML per-process utilization)", bool(busy),
          f"GPU % samples {[r.gpu_utilization for r in rows]}; nvidia-smi pmon sm% {smi_busy}")  # fmt: skip
    rss = processes.resident_bytes(status) if status else None
    near = rss is None or abs((last.host_memory or 0) - rss) < 512 << 20
    check("its host memory is its resident memory", bool(last.host_memory) and near,
          f"{(last.host_memory or 0) >> 20} MiB; /proc now {(rss or 0) >> 20} MiB")  # fmt: skip
    age = time.time() - (last.started_at or 0)
    check("its start time is when it started", last.started_at is not None and 0 <= age < 120, f"{age:.0f} s ago")
    check("its command and the account it runs as", bool(last.command) and "python" in last.command
          and last.owner == "root", f"{last.command!r} as {last.owner!r}")  # fmt: skip
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
