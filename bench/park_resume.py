"""Park and resume a container kernel against the driver's checkpoint API called directly, side by side in one run.

On the GPU machine (after ``source .gpu-carry/start-dockerd.sh`` and ``bash .gpu-carry/make-torch-image.sh``):
    python3 bench/park_resume.py --sizes 1 4 --out $OUT
(``tests/gpu/prove_parking.sh`` runs it after the proof.) For each size, two sides hold the same tensor, made by
the same cell with the same PyTorch (so the same reservation; each side's bytes are reported):
  - the baseline: a plain host process (``/opt/torch/.venv/bin/python3``) holds it, and this process calls the
    driver on it directly (``checkpoint.park`` / ``checkpoint.resume``, the calls the server makes), twice;
  - the kernel: one PyTorch container kernel of carol's server (one person's machine, as tests/gpu/prove_parking.py
    starts it) holds it and is parked and resumed through REST, twice (each timed from the request to the answer;
    the row's timeline gives the server's own phases).
Ratios: each park and resume against the driver's of the same round (1st with 1st, 2nd with 2nd), and per GiB.
Then, once: a cell run in a parked kernel whose GPU another kernel took waits; the holder is shut down, and the
seconds from its end to the cell's answer are set beside the resume's own (the cell wakes on the release).
Prints one JSON line per row and writes park_resume.json (with what the driver offers: checkpoint.LibCuda.offers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
from prove_parking import ROOT, TORCH, Person, gpu_apps, intact, session_of, tensor  # noqa: E402
from prove_shared_host import python_for_users, sh  # noqa: E402

from jupyter_gpuenv.parking import checkpoint  # noqa: E402

GIB = 1 << 30
HOST_TORCH = "/opt/torch/.venv/bin/python3"  # the GPU machine's own CUDA PyTorch (the image is made from it)
ROUNDS = 2  # the slowdown was on the second park of the same kernel


def holder_script(gib: float) -> str:
    """A host process that makes the tensor as the kernel's cell does, says its pid, and checks it on demand."""
    return (
        "import os, sys\n"
        f"exec({tensor(gib)!r})\n"
        "print('READY', os.getpid(), flush=True)\n"
        "for line in sys.stdin:\n"
        f"    exec({intact(gib)!r}); sys.stdout.flush()\n"
    )


async def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    return None


def driver_side(gib: float) -> dict:
    """The baseline: the driver called directly on a host process holding the tensor, ROUNDS times."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # /tmp/site would shadow its packages
    proc = subprocess.Popen([HOST_TORCH, "-c", holder_script(gib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("READY"):
            line = proc.stdout.readline()
        if not line:
            return {"error": "the host process did not make its tensor"}
        pid = int(line.split()[1])
        held = sum(mib for p, mib in gpu_apps() if p == pid) * 2**20
        driver = checkpoint.load_driver()
        rounds = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            parked = checkpoint.park(driver, [pid])
            park_s = time.perf_counter() - started
            started = time.perf_counter()
            resumed = checkpoint.resume(driver, [pid])
            resume_s = time.perf_counter() - started
            rounds.append({
                "park_s": park_s,
                "resume_s": resume_s,
                "steps": {name: seconds for name, _, _, seconds in parked.steps + resumed.steps},
                "error": str(parked.error or resumed.error or "") or None,
            })  # fmt: skip
        proc.stdin.write("check\n")
        proc.stdin.flush()
        checked = proc.stdout.readline().strip()
        return {"pid": pid, "held_bytes": held, "rounds": rounds, "intact": checked.startswith("INTACT 0")}
    finally:
        proc.kill()
        proc.wait()


async def kernel_side(who: Person, kernel: str, gib: float) -> dict:
    """The same tensor in the container kernel, parked and resumed through REST ROUNDS times."""
    res = await who.run(kernel, tensor(gib))
    if res["status"] != "ok":
        return {"error": f"the kernel did not make its tensor: {res['evalue']}"}
    rounds = []
    for _ in range(ROUNDS):
        # untimed: a sample that attributes its process to it (after a resume, before it the row has nothing to park)
        if not await wait_until(lambda: can_park(who, kernel), 30):
            return {"error": "the kernel was not seen on its GPU", "rounds": rounds}
        code, body, park_s = await who.act(kernel, "park")
        park = body.get("park", {}) if isinstance(body, dict) else {}
        code2, body2, resume_s = await who.act(kernel, "resume")
        resume = (body2.get("park", {}) if isinstance(body2, dict) else {}).get("timeline", {}).get("resume")
        rounds.append({
            "park_s": park_s,
            "resume_s": resume_s,
            "held_bytes": park.get("host_memory"),
            "server_park": park.get("timeline", {}).get("park"),
            "server_resume": resume,
            "ok": code == 200 and code2 == 200,
        })  # fmt: skip
    res = await who.run(kernel, intact(gib))
    await who.run(kernel, "del x; import torch; torch.cuda.empty_cache()")
    return {"rounds": rounds, "intact": "INTACT 0" in res["stdout"]}


async def can_park(who: Person, kernel: str) -> bool:
    return bool((await who.row(kernel)).get("park", {}).get("can_park"))


def compare(gib: float, base: dict, kern: dict) -> dict:
    row: dict = {"tensor_gib": gib, "driver_held_gib": base.get("held_bytes", 0) / GIB, "rounds": []}
    for n, (b, k) in enumerate(zip(base.get("rounds", []), kern.get("rounds", []), strict=False), 1):
        held = (k.get("held_bytes") or 0) / GIB
        per_gib = base.get("held_bytes", 0) / GIB / held if held else None  # kernel bytes vs baseline bytes
        row["rounds"].append({
            "round": n,
            "kernel_held_gib": held,
            "driver_park_s": b["park_s"],
            "kernel_park_s": k["park_s"],
            "park_ratio": k["park_s"] / b["park_s"],
            "park_ratio_per_gib": k["park_s"] / b["park_s"] * per_gib if per_gib else None,
            "driver_resume_s": b["resume_s"],
            "kernel_resume_s": k["resume_s"],
            "resume_ratio": k["resume_s"] / b["resume_s"],
            "resume_ratio_per_gib": k["resume_s"] / b["resume_s"] * per_gib if per_gib else None,
            "server_park_phases": phases(k.get("server_park")),
            "server_resume_phases": phases(k.get("server_resume")),
            "driver_steps": b["steps"],
            "ok": bool(k.get("ok")) and not b.get("error"),
        })  # fmt: skip
    row["ok"] = (
        len(row["rounds"]) == ROUNDS
        and all(r["ok"] for r in row["rounds"])
        and base.get("intact")
        and kern.get("intact")
    )
    return row


def phases(timeline: dict | None) -> dict | None:
    if not timeline:
        return None
    return {"seconds": timeline["seconds"], **{p["phase"]: p["seconds"] for p in timeline["phases"]}}


async def wake(who: Person, kernel: str) -> dict:
    """A cell in a parked kernel waits while another kernel holds its GPU; the holder ends; when does it run?"""
    await who.run(kernel, tensor(1))
    if not await wait_until(lambda: can_park(who, kernel), 30):
        return {"error": "the kernel was not seen on its GPU"}
    code, _, _ = await who.act(kernel, "park")
    holder = await who.notebook("holder.ipynb")  # exclusive:1: takes the GPU the parked kernel gave back
    if code != 200 or holder is None:
        return {"error": f"park {code}, holder {holder}"}
    await who.run(holder, tensor(1, "y"))
    cell = asyncio.ensure_future(who.run(kernel, "print(float(x[12345]))"))
    waiting = await wait_until(lambda: waits(who, kernel), 30)
    sent = time.perf_counter()
    await who.server.request("DELETE", f"/api/sessions/{await session_of(who, holder)}")
    answered = time.perf_counter()
    res = await cell
    ran = time.perf_counter()
    timeline = (await who.row(kernel)).get("park", {}).get("timeline", {}).get("resume") or {}
    await who.run(kernel, "del x; import torch; torch.cuda.empty_cache()")
    return {
        "cell_waited": bool(waiting),
        "cell_ok": res["status"] == "ok" and res["stdout"].startswith("12345.0"),
        "trigger": timeline.get("trigger"),
        "resume_s": timeline.get("seconds"),
        "from_holder_shutdown_sent_s": ran - sent,
        "from_holder_shutdown_answered_s": ran - answered,
        "over_resume_s": (ran - answered) - (timeline.get("seconds") or 0),
    }


async def waits(who: Person, kernel: str) -> bool:
    return "a cell waits" in ((await who.row(kernel)).get("park", {}).get("message") or "")


async def main(sizes: list[float], out: Path) -> int:
    ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    sh(["groupadd", "-f", "docker"])
    sh(["chgrp", "docker", "/var/run/docker.sock"])
    Path("/var/run/docker.sock").chmod(0o660)
    offers = checkpoint.LibCuda().offers()
    print(json.dumps({"driver_offers": offers}), flush=True)
    config = {"GpuEnv": {"environments": {"torch": TORCH}, "park_timeout": 600, "sample_interval": 0.5}}
    who = Person("carol", 18841, config, out, python_for_users())
    sh(["usermod", "-aG", "docker", "carol"])
    who.add("--broker")  # names the environment; c.GpuEnv.environments defines it
    rows: list[dict] = []
    woke: dict = {}
    try:
        if not await who.start():
            print("the server did not start")
            return 1
        kernel = await who.notebook("bench.ipynb")
        for gib in sizes:
            base = await asyncio.get_running_loop().run_in_executor(None, driver_side, gib)
            kern = await kernel_side(who, kernel, gib)
            rows.append(compare(gib, base, kern))
            print(json.dumps(rows[-1]), flush=True)
        woke = await wake(who, kernel)
        print(json.dumps({"wake": woke}), flush=True)
    finally:
        who.stop()
        (out / "park_resume.json").write_text(
            json.dumps({"driver_offers": offers, "sizes": rows, "wake": woke}, indent=1)
        )
        shutil.rmtree(ROOT / "config-carol", ignore_errors=True)
    ok = rows and all(r["ok"] for r in rows) and woke.get("cell_ok") and woke.get("trigger") == "release"
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--out", default="/tmp/gpuenv-out")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(args.sizes, Path(args.out))))
