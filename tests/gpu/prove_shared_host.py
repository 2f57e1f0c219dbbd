"""On the GPU machine: a shared host with the broker, two real Unix users, and the metrics against nvidia-smi.

Issue 11's proof: alice and bob, each with their own Jupyter server (run as their own Unix account, with
``c.GpuEnv.broker``), each start a "PyTorch" container kernel through the one broker that owns the engine.
Each kernel runs as its user, sees exactly one GPU (``torch.cuda.device_count() == 1``), and holds memory
there; each server attributes its own kernel's memory to its notebook and names the other's process as the
broker's ``show_other_users`` says. With two GPUs the environment is ``exclusive:1`` (different UUIDs, a
third start refused naming the holders); with one GPU it is a shared count of 1 and the policy's GPU limit
refuses a user's second kernel. Neither user can open the Docker socket.

Issue 14's check: the exporter on ``/metrics`` read against real NVML while the kernels hold memory, next to
``nvidia-smi`` (as GET gpus is).

usage (there, after ``source .gpu-carry/start-dockerd.sh`` and ``bash .gpu-carry/make-torch-image.sh``):
    python3 tests/gpu/prove_shared_host.py --out $OUT
Writes $OUT/shared_host.json (every check) and prints PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jclient import Server  # noqa: E402

ROOT = Path("/run/gpuenv-proof")
USERS = {"alice": 2, "bob": 3}  # GiB each one's kernel allocates, so the two are told apart
RESULTS: list[dict] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" — {detail}" if detail else ""), flush=True)
    return bool(ok)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def nvidia_smi(query: str, what: str = "--query-gpu") -> list[list[str]]:
    if not shutil.which("nvidia-smi"):
        return []
    out = sh(["nvidia-smi", f"{what}={query}", "--format=csv,noheader,nounits"]).stdout
    return [[v.strip() for v in line.split(",")] for line in out.splitlines() if line.strip()]


def python_for_users() -> str:
    """A Python 3 every user can run, with the carried packages on PYTHONPATH."""
    pythonpath = f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}"
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        probe = ["runuser", "-u", "nobody", "--", "env", pythonpath, candidate, "-c", "import jupyter_gpuenv"]
        if candidate and sh(probe).returncode == 0:
            return candidate
    raise SystemExit("no Python that other users can run")


def user_env(name: str, root: Path = ROOT) -> dict[str, str]:
    """What a user's processes get: their home, the carried packages, their own Jupyter config under ``root``."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{name}",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "JUPYTER_CONFIG_DIR": str(root / f"config-{name}"),
        "PYTHONUNBUFFERED": "1",
    }


async def terminal_output(server: Server, kernel_id: str, command: str, seconds: float = 8.0) -> str:
    """Open a terminal in the kernel's container (POST gpuenv/api/terminals), run one command, read the screen."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    code, body = await server.request("POST", "/gpuenv/api/terminals", {"kernel_id": kernel_id})
    if code not in (200, 201):
        return f"POST terminals: {code} {body}"
    name = body.get("name") or body.get("terminal", {}).get("name")
    url = server.url.replace("http", "ws", 1) + f"/gpuenv/api/terminals/{name}/websocket"
    conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {server.token}"}))
    await conn.write_message(json.dumps(["stdin", command + "\n"]))
    text, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(conn.read_message(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            break
        if message is None:
            break
        kind, *data = json.loads(message)
        if kind == "stdout":
            text.append(data[0])
    conn.close()
    await server.request("DELETE", f"/gpuenv/api/terminals/{name}")
    return "".join(text)


async def main(out: Path, local: bool) -> int:
    gpus = nvidia_smi("index,uuid,name") if not local else [["0", "GPU-local", "none"]]
    check("nvidia-smi lists the GPUs", bool(gpus), json.dumps(gpus))
    two = len(gpus) >= 2
    py = python_for_users()
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(mode=0o755, parents=True)
    for name in USERS:
        sh(["useradd", "-m", name])  # fine if they exist
        config = ROOT / f"config-{name}"
        config.mkdir(mode=0o755)
        shutil.chown(config, name, name)
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}}})
        )
    env = {
        "display_name": "PyTorch (GPU machine)",
        "image": "gpuenv-torch:local",
        "python": "/opt/torch/.venv/bin/python3",
        "env": {"PYTHONPATH": "/opt/torch-kernel"},
        "kernel_runtime": "image",
        "gpus": "exclusive:1" if two else "1",
        "shm_size": "2g",
    }
    if local:  # a dry run of the plumbing here: the CPU test image, no GPU attached
        env.update({"image": "gpuenv-test-kernel:latest", "python": "python3", "env": {}, "gpu_mode": "none"})
    (ROOT / "broker_config.py").write_text(
        f"c.Broker.socket = {str(ROOT / 'broker.sock')!r}\n"
        f"c.Broker.environments = {{'torch': {env!r}}}\n"
        "c.Broker.policy = {'default': {'environments': ['torch'], 'max_gpus': 1, 'max_kernels': 2}}\n"
        "c.Broker.show_other_users = 'name'\nc.Broker.sample_interval = 0.5\nc.Broker.orphan_interval = 2\n"
    )
    broker_log = open(out / "broker.log", "w")  # noqa: SIM115 - open while the broker runs
    launcher = ["-m", "jupyter_gpuenv.cli.main"] if not local else [str(Path(__file__).parent / "local_broker.py")]
    broker = subprocess.Popen(
        [sys.executable, *launcher, "broker", "--config", str(ROOT / "broker_config.py")],
        stdout=broker_log,
        stderr=subprocess.STDOUT,
    )
    servers: dict[str, tuple[subprocess.Popen, Server]] = {}
    try:
        for _ in range(100):
            if (ROOT / "broker.sock").exists():
                break
            await asyncio.sleep(0.1)
        check("the broker serves its socket", (ROOT / "broker.sock").exists())
        for port, name in enumerate(USERS, start=18801):
            added = sh(["runuser", "-u", name, "--", "env", *[f"{k}={v}" for k, v in user_env(name).items()], py,
                        "-m", "jupyter_gpuenv.cli.main", "add", "torch", "--broker", "--user",
                        "--display-name", "PyTorch (broker)"])  # fmt: skip
            check(f"{name}: `jupyter gpuenv add torch --broker --user`", added.returncode == 0, added.stderr[-300:])
            log = open(out / f"server-{name}.log", "w")  # noqa: SIM115 - open while the server runs
            proc = subprocess.Popen(
                ["runuser", "-u", name, "--", "env", *[f"{k}={v}" for k, v in user_env(name).items()], py, "-m",
                 "jupyter_server", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
                 f"--IdentityProvider.token=token-{name}", f"--ServerApp.root_dir=/home/{name}",
                 f"--GpuEnv.broker=unix://{ROOT / 'broker.sock'}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            servers[name] = (proc, Server(f"http://127.0.0.1:{port}", f"token-{name}"))
        for name, (_, server) in servers.items():
            for _ in range(150):
                try:
                    code, _body = await server.request("GET", "/api/status")
                except OSError:
                    code = None
                if code == 200:
                    break
                await asyncio.sleep(0.2)
            check(f"{name}'s server runs as {name}", code == 200)

        kernels = {}
        for name, (_, server) in servers.items():
            code, body = await server.request(
                "POST", "/api/sessions",
                {"path": f"{name}-train.ipynb", "type": "notebook", "kernel": {"name": "gpuenv-torch"}},
            )  # fmt: skip
            ok = check(f"{name} starts a PyTorch kernel through the broker", code == 201, str(body)[:300])
            if ok:
                kernels[name] = body["kernel"]["id"]
        facts = {}
        for name, kernel_id in kernels.items():
            server = servers[name][1]
            channels = await server.channels(kernel_id)
            code = (
                "import json, os, torch\n"
                f"x = torch.ones(({USERS[name]} << 28,), dtype=torch.float32, device='cuda')\n"
                "torch.cuda.synchronize()\n"
                "p = torch.cuda.get_device_properties(0)\n"
                "print(json.dumps({'count': torch.cuda.device_count(), 'uuid': str(getattr(p, 'uuid', '')),"
                " 'uid': os.getuid(), 'sum': float(x.sum()), 'home': os.environ.get('HOME')}))"
            )
            if local:  # no torch in the CPU test image: the same answer's shape, to try the rest of the script
                answer = f"{{'count': 1, 'uuid': 'local', 'uid': os.getuid(), 'sum': {float(USERS[name] << 28)}}}"
                code = f"import json, os; print(json.dumps({answer}))"
            res = await channels.execute(code, timeout=180)
            line = next((ln for ln in res["stdout"].splitlines() if ln.startswith("{")), "{}")
            facts[name] = json.loads(line)
            uid = int(sh(["id", "-u", name]).stdout)
            f = facts[name]
            why = json.dumps(f) if f else res.get("evalue") or res.get("stderr", "")[-300:]
            check(f"{name}'s kernel runs as {name} and sees one GPU", f.get("count") == 1 and f.get("uid") == uid, why)
            check(f"{name}'s tensor is intact on the GPU", f.get("sum") == float(USERS[name] << 28))
        if two and len(facts) == 2:
            uuids = facts["alice"].get("uuid"), facts["bob"].get("uuid")
            check("exclusive:1 gave the two users different GPUs", uuids[0] != uuids[1], " / ".join(map(str, uuids)))
            _, alice = servers["alice"]
            code, body = await alice.request("POST", "/api/kernels", {"name": "gpuenv-torch"})
            check("a third exclusive kernel is refused, naming the holders",
                  code in (403, 409) and "bob" in str(body), str(body)[:300])  # fmt: skip
        elif len(facts) == 2:
            check("one GPU, shared: both kernels on it", facts["alice"].get("uuid") == facts["bob"].get("uuid"))
            _, bob = servers["bob"]
            code, body = await bob.request("POST", "/api/kernels", {"name": "gpuenv-torch"})
            check("bob's second GPU kernel is refused by the policy (max_gpus 1)", code == 403, str(body)[:300])

        await asyncio.sleep(4)  # one sample, and the servers' view of whose kernel each container is
        smi_apps = nvidia_smi("pid,used_memory,gpu_uuid", "--query-compute-apps")
        for name, kernel_id in kernels.items():
            server = servers[name][1]
            other = next(n for n in USERS if n != name)
            snapshot = await server.get("/gpuenv/api/gpus")
            procs = [p for g in snapshot["gpus"] for p in g["processes"] or []]
            mine = [p for p in procs if p["kernel_id"] == kernel_id]
            theirs = [p for p in procs if p["kernel_id"] is None and p.get("user")]
            check(f"{name}'s server attributes its kernel's GPU memory to it",
                  bool(mine) and mine[0]["used_memory"] >= USERS[name] << 30,
                  json.dumps(mine)[:300])  # fmt: skip
            check(f"{name}'s server names {other}'s process as the broker's setting says",
                  other in [p["user"] for p in theirs], json.dumps(theirs)[:300])  # fmt: skip
            rows = (await server.get("/gpuenv/api/kernels"))["kernels"]
            check(
                f"GET kernels gives {name}'s notebook kernel its GPU memory",
                any(r["kernel_id"] == kernel_id and (r["gpu_memory"] or 0) >= USERS[name] << 30 for r in rows),
            )
            # issue 14: the exporter against nvidia-smi, in the same few seconds
            code, text = await server.request("GET", "/metrics")
            used = {
                m[0]: float(m[1])
                for m in re.findall(
                    r'jupyter_gpuenv_gpu_memory_used_bytes\{[^}]*uuid="([^"]+)"[^}]*\} ([0-9.e+]+)', text or ""
                )
            }
            smi_used = {u: float(v) * 2**20 for _i, u, v in nvidia_smi("index,uuid,memory.used")}
            close = used and all(abs(used[u] - smi_used.get(u, -1)) <= max(64 * 2**20, 0.02 * smi_used[u])
                                 for u in used)  # fmt: skip
            check(f"/metrics on {name}'s server: GPU memory used as nvidia-smi counts it", code == 200 and close,
                  f"metrics {used} / nvidia-smi {smi_used}")  # fmt: skip
            kernel_mem = re.findall(
                rf'jupyter_gpuenv_kernel_gpu_memory_bytes\{{[^}}]*kernel_id="{kernel_id}"[^}}]*\}} ([0-9.e+]+)',
                text or "")  # fmt: skip
            smi_sum = sum(float(m) * 2**20 for _p, m, _u in smi_apps)
            check(
                f"/metrics on {name}'s server: the kernel's GPU memory",
                bool(kernel_mem) and float(kernel_mem[0]) >= USERS[name] << 30,
                f"{kernel_mem} (all apps {smi_sum / 2**30:.2f} GiB)",
            )
        if "alice" in kernels:  # issue 16: a terminal in alice's kernel's container sees exactly its GPU
            listed = await terminal_output(servers["alice"][1], kernels["alice"],
                                           "/usr/local/nvidia/bin/nvidia-smi -L || nvidia-smi -L")  # fmt: skip
            gpu_lines = [ln for ln in listed.splitlines() if ln.startswith("GPU ")]
            uuid = facts.get("alice", {}).get("uuid") or "?"
            check("a terminal in alice's kernel: `nvidia-smi -L` lists exactly its GPU",
                  len(gpu_lines) == 1 and uuid in gpu_lines[0], listed.strip()[-400:])  # fmt: skip
            ident = await terminal_output(servers["alice"][1], kernels["alice"], "id -u")
            check("the terminal's shell runs as alice", str(sh(["id", "-u", "alice"]).stdout.strip()) in ident)
        for name in USERS:
            opened = sh(["runuser", "-u", name, "--", py, "-c", "open('/var/run/docker.sock', 'rb')"])
            check(f"{name} cannot open the Docker socket", opened.returncode != 0 and "Permission" in opened.stderr,
                  opened.stderr.strip().splitlines()[-1] if opened.stderr else "")  # fmt: skip
        for name, kernel_id in kernels.items():
            await servers[name][1].request("DELETE", f"/api/kernels/{kernel_id}")
        await asyncio.sleep(1)
        leases = json.loads((ROOT / "leases.json").read_text())
        import docker

        left = [
            c.id for c in docker.from_env().containers.list(all=True, filters={"label": "io.jupyter.gpuenv.broker"})
        ]
        check("after shutdown: no lease, no container left", leases == [] and left == [], f"{leases} {left}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        broker.terminate()
        for proc in [p for p, _ in servers.values()] + [broker]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        (out / "shared_host.json").write_text(json.dumps(RESULTS, indent=1))
    failed = [r for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpuenv-out"))
    parser.add_argument("--local", action="store_true", help="dry-run the plumbing without a GPU (checks fail)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rc = asyncio.run(main(Path(args.out), args.local))
    print(f"shared host proof: {time.monotonic() - started:.0f} s")
    sys.exit(rc)
