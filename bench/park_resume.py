"""Seconds per GiB to park and resume a container kernel, against PyTorch's own copy of the same bytes.

On the GPU machine (after ``source .gpu-carry/start-dockerd.sh`` and ``bash .gpu-carry/make-torch-image.sh``):
    python3 bench/park_resume.py --sizes 1 4 16 --out $OUT
One server (carol's, as tests/gpu/prove_parking.py starts it), one PyTorch kernel. For each size: the kernel
holds that many GiB, is parked and resumed through REST (each timed from the request to the answer), and the
same kernel then times ``x.cpu()`` and ``.cuda()`` of the same tensor: the baseline, measured in the same run.
Prints and writes park_resume.json: per size the seconds, GiB/s, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
from prove_parking import ROOT, TORCH, Person, gpu_apps, tensor  # noqa: E402
from prove_shared_host import python_for_users, sh  # noqa: E402

COPY = (
    "import time, torch\ntorch.cuda.synchronize(); t = time.perf_counter(); h = x.cpu(); "
    "d2h = time.perf_counter() - t\nt = time.perf_counter(); x2 = h.cuda(); torch.cuda.synchronize(); "
    "h2d = time.perf_counter() - t\ndel h, x2; print(d2h, h2d)"
)


async def main(sizes: list[float], out: Path) -> int:
    ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    sh(["groupadd", "-f", "docker"])
    sh(["chgrp", "docker", "/var/run/docker.sock"])
    Path("/var/run/docker.sock").chmod(0o660)
    config = {"GpuEnv": {"environments": {"torch": TORCH}, "park_timeout": 600, "sample_interval": 0.5}}
    who = Person("carol", 18841, config, out, python_for_users())
    sh(["usermod", "-aG", "docker", "carol"])
    who.add("--broker")  # names the environment; c.GpuEnv.environments defines it
    rows = []
    try:
        if not await who.start():
            print("the server did not start")
            return 1
        kernel = await who.notebook("bench.ipynb")
        for gib in sizes:
            await who.run(kernel, tensor(gib))
            await asyncio.sleep(1.5)  # a sample: the kernel's process attributed to it
            code, body, park_s = await who.act(kernel, "park")
            held = (body.get("park") or {}).get("host_memory") or 0 if isinstance(body, dict) else 0
            off = not gpu_apps()
            code2, _, resume_s = await who.act(kernel, "resume")
            res = await who.run(kernel, COPY)
            d2h, h2d = (float(v) for v in res["stdout"].split()[:2]) if res["status"] == "ok" else (0.0, 0.0)
            row = {
                "tensor_gib": gib,
                "held_gib": held / 2**30,
                "park_s": park_s,
                "resume_s": resume_s,
                "park_s_per_gib": park_s / max(held / 2**30, 1e-9),
                "resume_s_per_gib": resume_s / max(held / 2**30, 1e-9),
                "torch_d2h_s": d2h,
                "torch_h2d_s": h2d,
                # per GiB: the kernel's whole reservation moves (PyTorch's cache too), the baseline copies x alone
                "park_vs_torch_d2h_per_gib": (park_s / max(held / 2**30, 1e-9)) / (d2h / gib) if d2h else None,
                "resume_vs_torch_h2d_per_gib": (resume_s / max(held / 2**30, 1e-9)) / (h2d / gib) if h2d else None,
                "ok": code == 200 and code2 == 200 and off,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            await who.run(kernel, "del x; import torch; torch.cuda.empty_cache()")
    finally:
        who.stop()
        (out / "park_resume.json").write_text(json.dumps(rows, indent=1))
        shutil.rmtree(ROOT / "config-carol", ignore_errors=True)
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", default="/tmp/gpuenv-out")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(args.sizes, Path(args.out))))
