"""The end-to-end proof on a GPU machine: see tests/gpu/prove_on_gpu.sh (which runs this) for how to run.

    python3 tests/gpu/prove.py --out OUT [--image gpuenv-torch:local] [--python /opt/torch/.venv/bin/python3]
                               [--kernel-pythonpath /opt/torch-kernel] [--local]

Every step prints PASS / FAIL / SKIP / INFO and goes on where that makes sense; OUT/results.json holds
every check with its numbers, OUT/server.log the server's log, OUT/h100-real.json the NVML recording.
``--local`` runs the same path on a machine without a GPU (recorded NVML, a CPU image, no GPU checks),
to try the script itself before spending GPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import jclient  # noqa: E402

GiB = 1024**3
LABEL_KERNEL = "io.jupyter.gpuenv.kernel-id"
results: list[dict] = []


def check(step: str, name: str, ok: bool | None, detail: str = "", **data) -> bool:
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[ok] if ok in (True, False, None) else ok
    results.append({"step": step, "check": name, "status": status, "detail": detail, **data})
    print(f"[{status}] {step}. {name}{': ' + detail if detail else ''}", flush=True)
    return bool(ok)


def info(step: str, name: str, detail: str, **data) -> None:
    check(step, name, "INFO", detail, **data)


def run(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    text = (p.stdout + p.stderr).strip()
    if text:
        print("  " + text.replace("\n", "\n  ")[-3000:], flush=True)
    return p


def docker_client():
    import docker

    return docker.from_env(timeout=30)


def kernel_containers(kernel_id: str | None = None) -> list:
    label = f"{LABEL_KERNEL}={kernel_id}" if kernel_id else LABEL_KERNEL
    return docker_client().containers.list(all=True, filters={"label": label})


def nvidia_smi() -> list[dict]:
    fields = (
        "index,uuid,name,pci.bus_id,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,"
        "power.limit,clocks.sm,clocks.mem"
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = fields.split(",")
    return [
        dict(zip(names, (v.strip() for v in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def smi_apps() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


TORCH_CODE = r"""
import json, os
out = {"pid": os.getpid()}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, available=torch.cuda.is_available())
    if out["available"]:
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, uuid=str(getattr(p, "uuid", "")), count=torch.cuda.device_count())
        if ALLOC:
            x = torch.empty(ALLOC, dtype=torch.uint8, device="cuda"); x.fill_(1); torch.cuda.synchronize()
            globals()["_held"] = x
        out["allocated"] = torch.cuda.memory_allocated()
except ImportError as exc:
    out["torch"] = None; out["error"] = str(exc)
import ipykernel
out["ipykernel"] = ipykernel.__file__
names = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "PYTHONPATH")
out["env"] = {k: os.environ.get(k) for k in names}
print("RESULT " + json.dumps(out))
"""


def torch_code(alloc: int) -> str:
    return TORCH_CODE.replace("ALLOC", str(alloc))


def parse_result(reply: dict) -> dict:
    for line in reply.get("stdout", "").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {
        "error": f"no result: status={reply.get('status')} {reply.get('ename')} {reply.get('evalue')} "
        f"stderr={reply.get('stderr', '')[-500:]}"
    }


class Run:
    def __init__(self, args) -> None:
        self.args = args
        self.out: Path = args.out
        self.work = Path(args.workdir)
        if self.work.exists():
            shutil.rmtree(self.work)
        for d in ("data", "config", "runtime", "root"):
            (self.work / d).mkdir(parents=True)
        self.env = dict(
            os.environ,
            JUPYTER_DATA_DIR=str(self.work / "data"),
            JUPYTER_CONFIG_DIR=str(self.work / "config"),
            JUPYTER_RUNTIME_DIR=str(self.work / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        self.server_proc = None
        self.token = secrets.token_hex(16)
        self.driver_cuda = None

    # -- preparation -------------------------------------------------------------------------------
    def facts(self) -> None:
        rows = nvidia_smi()
        self.smi = rows
        info(
            "0",
            "nvidia-smi",
            "; ".join(f"{r['index']}: {r['name']} {r['uuid']} {r['memory.total']} MiB" for r in rows)
            or "no nvidia-smi",
            rows=rows,
        )
        drv = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
            if rows
            else ""
        )
        info("0", "driver", drv or "none", driver=drv)
        self.torch_cuda = None
        for py in ("python3", self.args.python):
            p = subprocess.run(
                [
                    py,
                    "-c",
                    "import torch, sys; print(torch.version.cuda, torch.__version__, '%d.%d' % sys.version_info[:2])",
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONPATH=""),
            )
            if p.returncode == 0 and p.stdout.split() and p.stdout.split()[0] != "None":
                self.torch_cuda, torch_version, pyver = p.stdout.split()[:3]
                info(
                    "0",
                    "host torch",
                    f"{py}: torch {torch_version}, CUDA {self.torch_cuda}, Python {pyver}",
                    torch=torch_version,
                    torch_cuda=self.torch_cuda,
                    python=py,
                )
                break
        if self.torch_cuda is None:
            self.torch_cuda = self.args.fallback_cuda
            info("0", "host torch", f"no CUDA torch on the host; --cuda-version {self.torch_cuda} (fallback)")

    def cli(self, *argv: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "jupyter_gpuenv.cli.main", *argv], env=self.env)

    def add_environments(self) -> None:
        a = self.args
        gpus = ["--gpus", "none"] if a.local else []
        p = self.cli(
            "add",
            "torch-local",
            "--user",
            "--image",
            a.image,
            "--python",
            a.python,
            "--display-name",
            f"PyTorch (local image) / CUDA {self.torch_cuda}",
            "--cuda-version",
            self.torch_cuda,
            "--env",
            f"PYTHONPATH={a.kernel_pythonpath}",
            *gpus,
        )
        check(
            "c",
            "jupyter gpuenv add torch-local (--env PYTHONPATH, --cuda-version from host torch)",
            p.returncode == 0,
            p.stdout.strip() or p.stderr.strip(),
        )
        p = self.cli(
            "add",
            "torch-future",
            "--user",
            "--image",
            a.image,
            "--python",
            a.python,
            "--display-name",
            "Needs CUDA 99.0",
            "--cuda-version",
            "99.0",
            "--env",
            f"PYTHONPATH={a.kernel_pythonpath}",
        )
        check(
            "g",
            "jupyter gpuenv add torch-future --cuda-version 99.0",
            p.returncode == 0,
            p.stdout.strip() or p.stderr.strip(),
        )
        p = self.cli("list")
        info("c", "jupyter gpuenv list", p.stdout.strip())

    # -- the server ----------------------------------------------------------------------------------
    def start_server(self) -> bool:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = {
            "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True, "jupyterlab_nvdashboard": False}},
            "GpuEnv": {"sample_interval": 1.0},
        }
        (self.work / "config" / "jupyter_server_config.json").write_text(json.dumps(cfg))
        cmd = [sys.executable, str(ROOT / "bench" / "lagserver.py"), "--lag-file", str(self.work / "lag.txt")]
        if self.args.local:
            cmd += ["--fake-nvml", str(ROOT / "tests" / "recordings" / "h100x2.json")]
        cmd += [
            "--",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.work / 'root'}",
            "--debug" if self.args.debug else "--ServerApp.log_level=INFO",
        ]
        self.server_log = (self.out / "server.log").open("w")
        t0 = time.perf_counter()
        self.server_proc = subprocess.Popen(
            cmd, stdout=self.server_log, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.work / "root")
        )
        self.server = jclient.Server(f"http://127.0.0.1:{self.port}", self.token)
        return t0

    async def wait_server(self, t0: float) -> bool:
        for _ in range(300):
            if self.server_proc.poll() is not None:
                break
            try:
                code, _ = await self.server.request("GET", "/api/status", timeout=2)
                if code == 200:
                    return check(
                        "a",
                        "server with jupyter_gpuenv started (--allow-root, 127.0.0.1, token)",
                        True,
                        f"{time.perf_counter() - t0:.1f} s, port {self.port}",
                    )
            except Exception:
                pass
            await asyncio.sleep(0.2)
        return check("a", "server started", False, (self.out / "server.log").read_text()[-2000:])

    def stop_server(self) -> None:
        if self.server_proc is not None and self.server_proc.poll() is None:
            self.server_proc.terminate()
            try:
                self.server_proc.wait(20)
            except subprocess.TimeoutExpired:
                self.server_proc.kill()
        if self.server_proc is not None:
            self.server_log.close()

    # -- the checks ---------------------------------------------------------------------------------
    async def gpus_match_smi(self) -> None:
        snap = None
        for _ in range(50):
            snap = await self.server.get("/gpuenv/api/gpus")
            sampled = snap.get("available") or snap.get("reason") not in (None, "GPUs have not been sampled yet")
            if sampled and (snap.get("available") or not self.args.local):
                break
            await asyncio.sleep(0.2)
        self.snapshot = snap
        self.driver_cuda = snap.get("cuda_driver_version")
        ok = bool(snap.get("available") and snap.get("gpus"))
        check(
            "a",
            "GET gpus lists the GPU(s)",
            ok,
            f"driver {snap.get('driver_version')}, CUDA {snap.get('cuda_driver_version')}, "
            f"{len(snap.get('gpus') or [])} GPU(s)"
            if ok
            else str(snap.get("reason")),
            snapshot=snap,
        )
        smi = nvidia_smi()
        if not smi:
            check("a", "GET gpus matches nvidia-smi", None, "no nvidia-smi here")
            return
        rows = []
        all_ok = True
        for s in smi:
            g = next((g for g in snap.get("gpus", []) if g["uuid"] == s["uuid"]), None)
            if g is None:
                all_ok = False
                rows.append({"field": "uuid", "nvidia-smi": s["uuid"], "GET gpus": "missing", "ok": False})
                continue
            mib = lambda b: None if b is None else b / 1024**2  # noqa: E731
            pairs = [
                ("index", s["index"], g["index"], str(g["index"]) == s["index"]),
                ("uuid", s["uuid"], g["uuid"], g["uuid"] == s["uuid"]),
                ("name", s["name"], g["name"], g["name"] == s["name"]),
                (
                    "pci.bus_id",
                    s["pci.bus_id"],
                    g["pci_bus_id"],
                    (g["pci_bus_id"] or "").upper() == s["pci.bus_id"].upper(),
                ),
                (
                    "memory.total MiB",
                    s["memory.total"],
                    round(mib(g["memory"]["total"]), 1),
                    abs(mib(g["memory"]["total"]) - num(s["memory.total"])) <= 1,
                ),
                (
                    "memory.used MiB",
                    s["memory.used"],
                    round(mib(g["memory"]["used"]), 1),
                    abs(mib(g["memory"]["used"]) - num(s["memory.used"])) <= 8,
                ),
                ("utilization.gpu %", s["utilization.gpu"], g["utilization"]["gpu"], None),
                (
                    "temperature.gpu C",
                    s["temperature.gpu"],
                    g["temperature_c"],
                    g["temperature_c"] is not None and abs(g["temperature_c"] - num(s["temperature.gpu"])) <= 3,
                ),
                ("power.draw W", s["power.draw"], g["power_w"], None),
                (
                    "power.limit W",
                    s["power.limit"],
                    g["power_limit_w"],
                    g["power_limit_w"] is not None and abs(g["power_limit_w"] - num(s["power.limit"])) <= 1,
                ),
                ("clocks.sm MHz", s["clocks.sm"], g["clocks_mhz"]["sm"], None),
                (
                    "clocks.mem MHz",
                    s["clocks.mem"],
                    g["clocks_mhz"]["memory"],
                    g["clocks_mhz"]["memory"] is not None
                    and abs(g["clocks_mhz"]["memory"] - num(s["clocks.mem"])) <= 5,
                ),
            ]
            for field, a, b, same in pairs:
                rows.append({"field": field, "nvidia-smi": a, "GET gpus": b, "ok": same})
                if same is False:
                    all_ok = False
        self.smi_table = rows
        print("    field                 nvidia-smi                                  GET gpus", flush=True)
        for r in rows:
            mark = {True: "=", False: "DIFF", None: "~ (changes by the second)"}[r["ok"]]
            print(f"    {r['field']:<20}  {str(r['nvidia-smi']):<42}  {str(r['GET gpus']):<42} {mark}", flush=True)
        check(
            "a",
            "GET gpus matches nvidia-smi (identity, memory within 8 MiB, temperature, power limit, mem clock)",
            all_ok,
            "; ".join(f"{r['field']} {r['nvidia-smi']} vs {r['GET gpus']}" for r in rows if r["ok"] is False),
            table=rows,
        )

    async def environments(self) -> None:
        report = await self.server.get("/gpuenv/api/environments")
        envs = {e["name"]: e for e in report.get("environments", [])}
        local = envs.get("torch-local", {})
        check(
            "c",
            "GET environments: torch-local ready and compatible",
            local.get("compatible") is True and local.get("image_present") is True,
            f"state {local.get('state')}, CUDA {local.get('cuda_version')}, reason {local.get('reason')}",
            environment=local,
        )
        fut = envs.get("torch-future", {})
        reason = fut.get("reason") or ""
        check(
            "g",
            "GET environments: torch-future incompatible, both CUDA versions named",
            fut.get("compatible") is False
            and "99.0" in reason
            and bool(self.driver_cuda)
            and self.driver_cuda in reason,
            reason,
            environment=fut,
        )

    async def start_kernel(self, name: str, step: str) -> str | None:
        t0 = time.perf_counter()
        code, body = await self.server.request("POST", "/api/kernels", {"name": name}, timeout=180)
        seconds = time.perf_counter() - t0
        ok = code == 201 and isinstance(body, dict) and "id" in body
        check(
            step,
            f"POST /api/kernels {name}",
            ok,
            f"{code} in {seconds:.1f} s" + ("" if ok else f": {body}"),
            seconds=seconds,
        )
        return body["id"] if ok else None

    async def kernel_row(self, kernel_id: str) -> dict:
        rep = await self.server.get("/gpuenv/api/kernels")
        return next((k for k in rep.get("kernels", []) if k["kernel_id"] == kernel_id), {})

    async def torch_in_kernel(self, kernel_id: str, step: str, alloc: int, label: str) -> dict:
        ch = await self.server.channels(kernel_id)
        try:
            reply = await ch.execute(torch_code(alloc), timeout=180)
        finally:
            ch.close()
        res = parse_result(reply)
        res["exec_seconds"] = round(reply["seconds"], 2)
        if self.args.local:
            check(step, f"{label}: code ran in the kernel (no GPU here)", "ipykernel" in res, json.dumps(res)[:400])
            return res
        ok = res.get("available") is True and (not alloc or (res.get("allocated") or 0) >= alloc)
        check(
            step,
            f"{label}: torch.cuda.is_available() and {alloc / GiB:.0f} GiB allocated"
            if alloc
            else f"{label}: torch.cuda.is_available()",
            ok,
            json.dumps(res)[:600],
            kernel=res,
        )
        return res

    async def attribution(self, kernel_id: str, alloc: int) -> None:
        proc, snap = None, None
        for _ in range(40):
            snap = await self.server.get("/gpuenv/api/gpus")
            for g in snap.get("gpus", []):
                for p in g["processes"]:
                    if p.get("kernel_id") == kernel_id and (p.get("used_memory") or 0) >= alloc:
                        proc = dict(p, gpu_index=g["index"], gpu_uuid=g["uuid"])
            if proc:
                break
            await asyncio.sleep(0.25)
        procs = [dict(p, gpu=g["index"]) for g in (snap or {}).get("gpus", []) for p in g["processes"]]
        check(
            "e",
            "GET gpus: the kernel's process holds the memory, attributed to the kernel id",
            proc is not None,
            json.dumps(proc or procs)[:600],
            process=proc,
            processes=procs,
        )
        info("e", "nvidia-smi --query-compute-apps", smi_apps() or "(none)")
        row = await self.kernel_row(kernel_id)
        check(
            "e",
            "GET kernels: the kernel's GPU and GPU memory",
            bool(row.get("gpus")) and (row.get("gpu_memory") or 0) >= alloc,
            json.dumps(row),
            kernel=row,
        )
        self.kernel_gpus = row.get("gpus")
        self.gpu_mode = row.get("gpu_mode")
        check(
            "c",
            "gpu_mode auto chose 'devices' (no NVIDIA Container Toolkit here)",
            row.get("gpu_mode") == "devices",
            f"gpu_mode {row.get('gpu_mode')}",
        )

    def record(self) -> None:
        p = run([sys.executable, str(HERE / "record_nvml.py"), str(self.out / "h100-real.json")], env=self.env)
        check(
            "b",
            "NVML recorded (every call nvml.py makes) while the kernel holds its memory",
            p.returncode == 0,
            p.stdout.strip()[-300:],
        )
        if p.returncode == 0:
            p = run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "--noconftest",
                    "-p",
                    "no:cacheprovider",
                    str(HERE / "test_recording_replay.py"),
                ],
                env=dict(self.env, GPUENV_REAL_RECORDING=str(self.out / "h100-real.json")),
            )
            check(
                "b",
                "the recording replays through FakePynvml to the live snapshot (tests/gpu/test_recording_replay.py)",
                p.returncode == 0,
                p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-300:],
            )

    async def interrupt(self, kernel_id: str) -> None:
        ch = await self.server.channels(kernel_id)
        sent: dict = {}

        async def interrupt_soon():
            await asyncio.sleep(1.0)
            sent["t"] = time.perf_counter()
            sent["code"], _ = await self.server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
            sent["answered"] = time.perf_counter()

        try:
            reply = await ch.execute("import time\ntime.sleep(30)", timeout=40, on_busy=interrupt_soon)
        finally:
            ch.close()
        took = (reply["t_reply"] - sent["t"]) if reply.get("t_reply") and "t" in sent else None
        check(
            "f",
            "interrupt of time.sleep(30): KeyboardInterrupt within ~1 s",
            reply.get("ename") == "KeyboardInterrupt" and took is not None and took < 1.5,
            f"POST interrupt {sent.get('code')}, {reply.get('ename')} {took and f'{took:.3f}'} s after the POST",
            seconds=took,
        )

    async def restart(self, kernel_id: str) -> None:
        before = kernel_containers(kernel_id)
        gpus_before = before[0].labels.get("io.jupyter.gpuenv.gpus") if before else None
        t0 = time.perf_counter()
        code, body = await self.server.request("POST", f"/api/kernels/{kernel_id}/restart", timeout=180)
        seconds = time.perf_counter() - t0
        after = kernel_containers(kernel_id)
        gpus_after = after[0].labels.get("io.jupyter.gpuenv.gpus") if after else None
        check(
            "f",
            "POST restart",
            code == 200,
            f"{code} in {seconds:.1f} s; container "
            f"{before[0].short_id if before else None} -> {after[0].short_id if after else None}",
            seconds=seconds,
        )
        res = await self.torch_in_kernel(kernel_id, "f", 0, "after restart")
        row = await self.kernel_row(kernel_id)
        same = gpus_before == gpus_after and row.get("gpus") == self.kernel_gpus
        if not self.args.local:
            same = same and bool(gpus_after) and res.get("uuid", "x").removeprefix("GPU-") in gpus_after
        check(
            "f",
            "the restarted kernel keeps its GPU (same uuid: container label, GET kernels, torch)",
            same,
            f"label {gpus_before} -> {gpus_after}; GET kernels gpus {self.kernel_gpus} -> {row.get('gpus')}; "
            f"torch uuid {res.get('uuid')}",
        )

    async def shutdown(self, kernel_id: str, step: str = "f") -> None:
        found = kernel_containers(kernel_id)
        sockets = found[0].labels.get("io.jupyter.gpuenv.socket-dir") if found else None
        t0 = time.perf_counter()
        code, _ = await self.server.request("DELETE", f"/api/kernels/{kernel_id}")
        seconds = time.perf_counter() - t0
        left = kernel_containers(kernel_id)
        check(
            step,
            "DELETE: no container left (label io.jupyter.gpuenv.kernel-id), no socket folder",
            code == 204 and not left and sockets is not None and not os.path.exists(sockets),
            f"{code} in {seconds:.2f} s; containers left {[c.short_id for c in left]}; socket folder {sockets} "
            f"exists={os.path.exists(sockets) if sockets else None}",
            seconds=seconds,
        )

    def prepare_runtime(self) -> None:
        a = self.args
        # the kernel-runtime path: ipykernel prepared on the host, mounted into an image that lacks it
        pyver = (
            subprocess.run(
                [sys.executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if not a.local
            else a.local_pyver
        )
        env = dict(self.env)
        if a.wheels:
            env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(Path(a.wheels).resolve()))
        t0 = time.perf_counter()
        p = run([sys.executable, "-m", "jupyter_gpuenv.cli.main", "prepare-runtime", pyver], env=env, timeout=600)
        self.runtime_ok = check(
            "c",
            f"jupyter gpuenv prepare-runtime {pyver}",
            p.returncode == 0,
            f"{time.perf_counter() - t0:.1f} s; " + (p.stdout.strip() or p.stderr.strip()[-800:]),
        )
        if self.runtime_ok:
            p = self.cli(
                "add",
                "torch-mount",
                "--user",
                "--image",
                a.image,
                "--python",
                a.python,
                "--display-name",
                "PyTorch, ipykernel mounted",
                "--cuda-version",
                self.torch_cuda,
                "--kernel-runtime",
                "mount",
                "--gpus",
                "none" if a.local else "all",
            )
            check(
                "c",
                "jupyter gpuenv add torch-mount --kernel-runtime mount",
                p.returncode == 0,
                p.stdout.strip() or p.stderr.strip(),
            )

    async def mounted_runtime(self) -> None:
        # after the torch-local kernel, so that it proved it needs no prepared runtime
        self.prepare_runtime()
        if not self.runtime_ok:
            check("c", "kernel with the mounted kernel runtime", None, "prepare-runtime failed")
            return
        kid = await self.start_kernel("gpuenv-torch-mount", "c")
        if kid is None:
            return
        try:
            res = await self.torch_in_kernel(kid, "c", 256 * 1024**2, "kernel_runtime mount")
            check(
                "c",
                "ipykernel came from the mounted runtime (/opt/gpuenv-kernel)",
                str(res.get("ipykernel", "")).startswith("/opt/gpuenv-kernel"),
                str(res.get("ipykernel")),
            )
        finally:
            await self.shutdown(kid, "c")

    async def refused(self) -> None:
        before = {c.id for c in docker_client().containers.list(all=True)}
        log_size = (self.out / "server.log").stat().st_size
        t0 = time.perf_counter()
        code, body = await self.server.request("POST", "/api/kernels", {"name": "gpuenv-torch-future"}, timeout=120)
        seconds = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        after = {c.id for c in docker_client().containers.list(all=True)}
        with (self.out / "server.log").open() as f:
            f.seek(log_size)
            log = f.read()
        line = next((entry for entry in log.splitlines() if "99.0" in entry), "")
        check(
            "g",
            "POST /api/kernels gpuenv-torch-future refused, no container started",
            code >= 400 and after == before,
            f"{code} in {seconds:.2f} s; containers before {len(before)} after {len(after)}; "
            f"response {json.dumps(body)[:300]}",
            response=body,
        )
        check(
            "g",
            "the refusal names both CUDA versions (server log)",
            "99.0" in line and bool(self.driver_cuda) and self.driver_cuda in line,
            line.strip()[:400],
        )
        msg = json.dumps(body)
        check(
            "g",
            "the REST answer itself names both CUDA versions",
            "99.0" in msg and bool(self.driver_cuda) and self.driver_cuda in msg,
            msg[:300],
        )

    async def guarded(self, step: str, name: str, coro) -> None:
        """A step that raises is a FAIL; the run goes on with the next one."""
        try:
            await coro
        except Exception as exc:
            import traceback

            traceback.print_exc()
            check(step, f"{name} raised", False, f"{type(exc).__name__}: {exc}"[:600])

    async def main(self) -> None:
        self.facts()
        self.add_environments()
        t0 = self.start_server()
        try:
            if not await self.wait_server(t0):
                return
            g = self.guarded
            await g("a", "GET gpus vs nvidia-smi", self.gpus_match_smi())
            await g("c", "GET environments", self.environments())
            kid = await self.start_kernel("gpuenv-torch-local", "d")
            self.kernel_gpus = None
            if kid:
                alloc = 0 if self.args.local else 4 * GiB
                await g(
                    "d", "torch in the kernel", self.torch_in_kernel(kid, "d", alloc, "torch in the container kernel")
                )
                mounts = [m["Destination"] for c in kernel_containers(kid) for m in c.attrs.get("Mounts", [])]
                check(
                    "c",
                    "--env PYTHONPATH: the image's own ipykernel, no kernel runtime mounted",
                    "/opt/gpuenv-kernel" not in mounts,
                    f"container mounts {mounts}",
                )
                if not self.args.local:
                    await g("e", "attribution", self.attribution(kid, alloc))
                    self.record()
                else:
                    check("e", "attribution of GPU memory", None, "no GPU here")
                    self.kernel_gpus = (await self.kernel_row(kid)).get("gpus")
                await g("f", "interrupt", self.interrupt(kid))
                await g("f", "restart", self.restart(kid))
                await g("f", "shutdown", self.shutdown(kid))
            await g("c", "mounted runtime", self.mounted_runtime())
            await g("g", "refusal", self.refused())
        finally:
            self.stop_server()
            left = kernel_containers()
            for c in left:
                c.remove(force=True)
            info("z", "cleanup", f"removed {len(left)} leftover kernel container(s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image", default="gpuenv-torch:local")
    p.add_argument("--python", default="/opt/torch/.venv/bin/python3")
    p.add_argument("--kernel-pythonpath", default="/opt/torch-kernel")
    p.add_argument("--wheels", help="pip --find-links for prepare-runtime (no index)")
    p.add_argument("--workdir", default="/tmp/gpuenv-prove")
    p.add_argument("--fallback-cuda", default="12.4")
    p.add_argument("--local", action="store_true", help="no GPU: recorded NVML, CPU kernels")
    p.add_argument("--local-pyver", default="3.11")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    r = Run(args)
    try:
        asyncio.run(r.main())
    finally:
        (args.out / "results.json").write_text(json.dumps({"results": results}, indent=1, default=str) + "\n")
    counts = {s: sum(1 for x in results if x["status"] == s) for s in ("PASS", "FAIL", "SKIP", "INFO")}
    print(f"\nprove: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
