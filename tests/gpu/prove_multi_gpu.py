"""The multi-GPU proof (issue #7), on a machine with 2+ GPUs, after start-dockerd.sh and make-torch-image.sh:

    python3 tests/gpu/prove_multi_gpu.py --out $OUT [--image gpuenv-torch:local] [--python /opt/torch/.venv/bin/python3]

1. GET gpus lists every GPU with numbers matching nvidia-smi.
2. Three kernels of an ``exclusive:1`` environment started at once: two get different GPUs, the third is
   refused (409, saying who holds what); each kernel's GPU memory is attributed to it, on its own GPU.
3. One ``exclusive:2`` kernel runs a two-process torch.distributed all-reduce over NCCL inside its container.
NVLink multicast stays off in the container (NCCL_NVLS_ENABLE=0 and friends), as the machine requires.
Writes $OUT/multi.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jclient  # noqa: E402

MiB, GiB = 1024**2, 1024**3
NO_MULTICAST = ["NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1"]
results: list[dict] = []

ALLREDUCE = r"""
import os, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank = dist.get_rank()
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
x = torch.full((1024, 1024), float(rank + 1), device="cuda")
dist.all_reduce(x)
if rank == 0:
    import json
    print("RESULT " + json.dumps({"world": dist.get_world_size(), "sum": x[0, 0].item(),
          "backend": dist.get_backend(), "devices": torch.cuda.device_count(),
          "nvls": os.environ.get("NCCL_NVLS_ENABLE")}), flush=True)
dist.destroy_process_group()
"""


def check(step: str, name: str, ok: bool, detail: str = "") -> bool:
    results.append({"step": step, "check": name, "result": "PASS" if ok else "FAIL", "detail": detail})
    print(f"[{step}] {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def smi() -> list[dict]:
    fields = "index,uuid,memory.total,memory.used"
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [
        dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
        for line in out.splitlines()
        if line
    ]


def result_of(reply: dict) -> dict:
    for line in reply.get("stdout", "").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {
        "error": f"{reply.get('status')} {reply.get('ename')} {reply.get('evalue')} {reply.get('stderr', '')[-800:]}"
    }


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image", default="gpuenv-torch:local")
    p.add_argument("--python", default="/opt/torch/.venv/bin/python3")
    p.add_argument("--kernel-pythonpath", default="/opt/torch-kernel")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpuenv-multi-"))
    for d in ("data", "config", "runtime", "root"):
        (work / d).mkdir()
    # the carried wheels are installed with --target: the extension's own enabling config is not on the path
    (work / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}}})
    )
    env = dict(
        os.environ,
        JUPYTER_DATA_DIR=str(work / "data"),
        JUPYTER_CONFIG_DIR=str(work / "config"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        PYTHONUNBUFFERED="1",
    )
    torch_cuda = (
        subprocess.run(
            ["python3", "-c", "import torch; print(torch.version.cuda)"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=""),
        ).stdout.strip()
        or "12.0"
    )
    common = [
        "--image",
        a.image,
        "--python",
        a.python,
        "--cuda-version",
        torch_cuda,
        "--env",
        f"PYTHONPATH={a.kernel_pythonpath}",
        "--user",
    ]
    for item in NO_MULTICAST:
        common += ["--env", item]
    for name, gpus in (("excl", "exclusive:1"), ("pair", "exclusive:2")):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "jupyter_gpuenv.cli.main",
                "add",
                name,
                "--gpus",
                gpus,
                *common,
                "--display-name",
                f"torch {gpus}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        check("0", f"jupyter gpuenv add {name} --gpus {gpus}", r.returncode == 0, (r.stdout + r.stderr).strip()[-300:])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    log = (a.out / "multi-server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work / 'root'}",
        ],
        env=env,
        cwd=work / "root",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = jclient.Server(f"http://127.0.0.1:{port}", token)
    snap: dict = {}
    try:
        for _ in range(150):
            try:
                snap = await api.get("/gpuenv/api/gpus")
                if snap.get("available"):
                    break
            except Exception:
                pass
            await asyncio.sleep(0.2)
        rows = smi()
        ours = {g["uuid"]: g for g in snap.get("gpus", [])}
        same = len(rows) == len(ours) and all(
            r["uuid"] in ours
            and abs(ours[r["uuid"]]["memory"]["total"] / MiB - int(r["memory.total"])) <= 1
            and abs(ours[r["uuid"]]["memory"]["used"] / MiB - int(r["memory.used"])) <= 8
            for r in rows
        )
        check(
            "3",
            f"GET gpus lists every GPU ({len(ours)}) matching nvidia-smi (uuid, memory total/used)",
            same,
            "; ".join(
                f"{r['index']}: smi {r['memory.used']}/{r['memory.total']} MiB, ours "
                f"{ours.get(r['uuid'], {}).get('memory', {}).get('used', 0) / MiB:.0f}/"
                f"{ours.get(r['uuid'], {}).get('memory', {}).get('total', 0) / MiB:.0f}"
                for r in rows
            ),
        )

        # 1. three exclusive:1 kernels at once
        t0 = time.perf_counter()
        answers = await asyncio.gather(
            *(api.request("POST", "/api/kernels", {"name": "gpuenv-excl"}) for _ in range(3))
        )
        started = [b["id"] for c, b in answers if c == 201]
        refused = [b for c, b in answers if c != 201]
        check(
            "1",
            "three exclusive:1 kernels at once: two start, one is refused (409, who holds what)",
            len(started) == 2 and len(refused) == 1 and "held by kernel" in json.dumps(refused),
            f"{[c for c, _ in answers]} in {time.perf_counter() - t0:.1f} s; refusal: "
            f"{(refused[0].get('message') if refused and isinstance(refused[0], dict) else refused)}",
        )
        kernels = {k["kernel_id"]: k for k in (await api.get("/gpuenv/api/kernels"))["kernels"]}
        assigned = {k: kernels[k]["gpus"] for k in started if k in kernels}
        check(
            "1",
            "the two kernels hold different GPUs",
            len({tuple(v) for v in assigned.values()}) == 2 and all(len(v) == 1 for v in assigned.values()),
            json.dumps(assigned),
        )
        sizes = {}
        for i, kernel_id in enumerate(started):
            ch = await api.channels(kernel_id)
            size = (i + 1) * GiB
            reply = await ch.execute(
                f"import torch, json; x = torch.empty({size}, dtype=torch.uint8, device='cuda'); "
                "print('RESULT ' + json.dumps({'count': torch.cuda.device_count(), "
                "'uuid': str(torch.cuda.get_device_properties(0).uuid)}))",
                timeout=180,
            )
            ch.close()
            res = result_of(reply)
            sizes[kernel_id] = size
            check(
                "1",
                f"kernel {kernel_id[:8]} sees exactly its one GPU and holds {i + 1} GiB",
                res.get("count") == 1,
                json.dumps(res),
            )
        await asyncio.sleep(2.5)
        gpus = (await api.get("/gpuenv/api/gpus"))["gpus"]
        seen = {}
        for g in gpus:
            for proc in g["processes"]:
                if proc.get("kernel_id") in sizes:
                    seen[proc["kernel_id"]] = (g["index"], proc["used_memory"])
        ok = all(k in seen and [seen[k][0]] == assigned.get(k) and seen[k][1] >= sizes[k] for k in sizes)
        check(
            "1",
            "GET gpus attributes each kernel's memory to it, on its own GPU",
            ok,
            json.dumps({k[:8]: {"gpu": v[0], "MiB": round(v[1] / MiB)} for k, v in seen.items()}),
        )
        for kernel_id in started:
            await api.request("DELETE", f"/api/kernels/{kernel_id}")

        # 2. one exclusive:2 kernel, NCCL all-reduce inside its container
        code, body = await api.request("POST", "/api/kernels", {"name": "gpuenv-pair"})
        if check("2", "an exclusive:2 kernel starts", code == 201, f"{code} {body if code != 201 else ''}"):
            kernel_id = body["id"]
            row = next(k for k in (await api.get("/gpuenv/api/kernels"))["kernels"] if k["kernel_id"] == kernel_id)
            check("2", "it holds two GPUs", len(row["gpus"]) == 2, json.dumps(row["gpus"]))
            ch = await api.channels(kernel_id)
            script = json.dumps(ALLREDUCE)
            reply = await ch.execute(
                "import subprocess, sys, pathlib\n"
                f"pathlib.Path('allreduce.py').write_text({script})\n"
                "p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', "
                "'--master_addr=127.0.0.1', '--master_port=29511', 'allreduce.py'], capture_output=True, text=True)\n"
                "print(p.stdout); print(p.stderr[-3000:], file=sys.stderr)",
                timeout=300,
            )
            ch.close()
            res = result_of(reply)
            check(
                "2",
                "two-process NCCL all-reduce in the container gives 1 + 2 = 3 on every element",
                res.get("sum") == 3.0
                and res.get("world") == 2
                and res.get("backend") == "nccl"
                and res.get("nvls") == "0",
                json.dumps(res)[:600],
            )
            await api.request("DELETE", f"/api/kernels/{kernel_id}")
        import docker

        left = docker.from_env().containers.list(all=True, filters={"label": "io.jupyter.gpuenv.kernel-id"})
        check("z", "no kernel container left", not left, f"{len(left)} left")
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    (a.out / "multi.json").write_text(json.dumps(results, indent=1))
    print("\n| step | check | result | detail |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['step']} | {r['check']} | {r['result']} | {r['detail'][:300].replace('|', '/')} |")
    failed = sum(r["result"] == "FAIL" for r in results)
    print(f"\n{len(results) - failed} PASS, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
