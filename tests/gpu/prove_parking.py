"""On the GPU machine: park and resume (issue 12) with the real driver's checkpoint API.

One person's machine (part A): carol's own Jupyter server (her Unix account, in the docker group; no broker)
runs a PyTorch container kernel ``exclusive:1`` holding a known tensor of ≥ 4 GiB.
  - POST park: nvidia-smi shows its process gone from the GPU and the memory freed, within seconds;
  - a second ``exclusive:1`` kernel then starts on that GPU (the lease was released);
  - POST resume while it runs: 409 naming it; after it ends: 200, and the tensor is checked element by element;
  - parked again, a cell run in it resumes it and runs (no error, the right answer);
  - a server with a short idle policy parks an idle kernel by itself, and a cell brings it back.
A shared host (part B): the broker (root) and alice and bob through it, ``exclusive:1`` on one GPU: alice parks,
bob's kernel starts on the GPU, alice's resume is refused naming bob, bob's kernel ends, alice's next cell
resumes hers through the broker, tensor intact.
Seconds per GiB for park and resume are measured on the way (bench/park_resume.py has the sizes sweep).

usage (there, after ``source .gpu-carry/start-dockerd.sh`` and ``bash .gpu-carry/make-torch-image.sh``):
    python3 tests/gpu/prove_parking.py --out $OUT
Writes $OUT/parking.json (every check, every timing) and prints PASS/FAIL lines.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jclient import Server  # noqa: E402
from prove_shared_host import RESULTS, check, nvidia_smi, python_for_users, sh, user_env  # noqa: E402

ROOT = Path("/run/gpuenv-parking")
GIB = 1 << 30
TIMINGS: dict[str, float] = {}
TORCH = {
    "display_name": "PyTorch (GPU machine)",
    "image": "gpuenv-torch:local",
    "python": "/opt/torch/.venv/bin/python3",
    "env": {"PYTHONPATH": "/opt/torch-kernel"},
    "kernel_runtime": "image",
    "gpus": "exclusive:1",
    "shm_size": "2g",
}


def as_user(name: str, argv: list[str]) -> list[str]:
    return ["runuser", "-u", name, "--", "env", *[f"{k}={v}" for k, v in user_env(name, ROOT).items()], *argv]


def gpu_apps() -> list[tuple[int, float]]:
    """(pid, MiB) of every compute process nvidia-smi lists."""
    return [(int(p), float(m)) for p, m in nvidia_smi("pid,used_memory", "--query-compute-apps") if p.isdigit()]


def used_mib() -> float:
    return sum(float(v[0]) for v in nvidia_smi("memory.used"))


async def wait_for(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    return None


class Person:
    """One user's Jupyter server, as that user."""

    def __init__(self, name: str, port: int, config: dict, out: Path, py: str) -> None:
        self.name, self.port, self.out, self.py = name, port, out, py
        sh(["useradd", "-m", name])
        folder = ROOT / f"config-{name}"
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(folder, name, name)
        (folder / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}}, **config})
        )
        self.server = Server(f"http://127.0.0.1:{port}", f"token-{name}")
        self.proc: subprocess.Popen | None = None

    def add(self, *args: str) -> None:
        added = sh(as_user(self.name, [self.py, "-m", "jupyter_gpuenv.cli.main", "add", "torch", "--user", *args]))
        check(f"{self.name}: `jupyter gpuenv add torch {' '.join(args)}`", added.returncode == 0, added.stderr[-300:])

    async def start(self, *extra: str) -> bool:
        log = open(self.out / f"server-{self.name}-{self.port}.log", "w")  # noqa: SIM115 - open while it runs
        self.proc = subprocess.Popen(
            as_user(self.name, [self.py, "-m", "jupyter_server", "--ip=127.0.0.1", f"--port={self.port}",
                                "--no-browser", f"--IdentityProvider.token=token-{self.name}",
                                f"--ServerApp.root_dir=/home/{self.name}", *extra]),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

        async def up():
            try:
                return (await self.server.request("GET", "/api/status"))[0] == 200
            except OSError:
                return False

        return bool(await wait_for(up, 40))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def notebook(self, path: str) -> str | None:
        code, body = await self.server.request(
            "POST", "/api/sessions", {"path": path, "type": "notebook", "kernel": {"name": "gpuenv-torch"}}
        )
        return body["kernel"]["id"] if code == 201 else None

    async def row(self, kernel_id: str) -> dict:
        rows = (await self.server.get("/gpuenv/api/kernels"))["kernels"]
        return next((r for r in rows if r["kernel_id"] == kernel_id), {})

    async def act(self, kernel_id: str, action: str) -> tuple[int, object, float]:
        started = time.perf_counter()
        code, body = await self.server.request("POST", f"/gpuenv/api/kernels/{kernel_id}/{action}", {}, timeout=600)
        return code, body, time.perf_counter() - started

    async def run(self, kernel_id: str, code: str, timeout: float = 300) -> dict:
        channels = await self.server.channels(kernel_id)
        try:
            return await channels.execute(code, timeout=timeout)
        finally:
            channels.close()


def tensor(gib: float, name: str = "x") -> str:
    """A cell that makes ``name``: float32 0, 1, 2, … filling ``gib`` GiB on the GPU (each value is exact below 2**24,
    so the pattern repeats modulo 2**24 to stay exact)."""
    n = int(gib * GIB) // 4
    return (
        f"import torch\n{name} = (torch.arange({n}, device='cuda') % (1 << 24)).to(torch.float32)\n"
        "torch.cuda.synchronize(); print(torch.cuda.memory_allocated() >> 20)"
    )


def intact(gib: float, name: str = "x") -> str:
    n = int(gib * GIB) // 4
    return (
        f"import torch\nwant = (torch.arange({n}, device='cuda') % (1 << 24)).to(torch.float32)\n"
        f"print('INTACT' if torch.equal({name}, want) else 'CHANGED', int(({name} != want).sum()))\ndel want"
    )


async def park_and_measure(who: Person, kernel_id: str, pid_before: set[int], label: str) -> bool:
    before = used_mib()
    code, body, seconds = await who.act(kernel_id, "park")
    ok = check(f"{label}: POST park answers 200, parked", code == 200 and body["park"]["state"] == "parked",
               json.dumps(body)[:300])  # fmt: skip
    if not ok:
        return False
    gone = await wait_for(lambda: not (pid_before & {p for p, _ in gpu_apps()}), 10)
    after = used_mib()
    host = body["park"]["host_memory"] or 0
    TIMINGS[f"{label}_park_s"], TIMINGS[f"{label}_park_gib"] = seconds, host / GIB
    check(f"{label}: nvidia-smi shows its process off the GPU and the memory freed within 10 s",
          bool(gone) and before - after >= 0.9 * host / 2**20,
          f"used {before:.0f} → {after:.0f} MiB, {host / GIB:.2f} GiB to host memory in {seconds:.2f} s")  # fmt: skip
    return True


async def part_a(out: Path, py: str) -> None:
    print("== A. one person's machine: carol's own server, no broker", flush=True)
    sh(["groupadd", "-f", "docker"])
    sh(["chgrp", "docker", "/var/run/docker.sock"])
    os.chmod("/var/run/docker.sock", 0o660)
    config = {"GpuEnv": {"environments": {"torch": TORCH}, "park_timeout": 120, "sample_interval": 0.5}}
    carol = Person("carol", 18821, config, out, py)
    sh(["usermod", "-aG", "docker", "carol"])
    carol.add("--broker")  # a kernelspec that names the environment; c.GpuEnv.environments defines it
    try:
        check("carol's server starts", await carol.start())
        summary = await carol.server.get("/gpuenv/api/kernels")
        check("GET kernels: parking is available with this driver", summary["parking"]["available"] is True,
              json.dumps(summary["parking"]))  # fmt: skip
        first = await carol.notebook("train.ipynb")
        if not check("carol starts a PyTorch kernel (exclusive:1)", first is not None):
            return
        res = await carol.run(first, tensor(6))
        check("kernel 1 holds a 6 GiB tensor", res["status"] == "ok", res["stdout"] + str(res["evalue"]))
        await asyncio.sleep(2)  # a sample: its process attributed to it
        row = await carol.row(first)
        check("its row can be parked", row.get("park", {}).get("can_park") is True, json.dumps(row)[:300])
        pids = {p for p, m in gpu_apps()}
        container = row["container_id"]
        before = container_memory(container)
        if not await park_and_measure(carol, first, pids, "a_6gib"):
            return
        grown = container_memory(container) - before
        held = (await carol.row(first))["park"]["host_memory"] or 0
        check("the parked GPU memory is in the kernel's own container (its memory cgroup grew by it)",
              grown >= 0.9 * held, f"+{grown / GIB:.2f} GiB for {held / GIB:.2f} GiB parked")  # fmt: skip
        second = await carol.notebook("other.ipynb")
        check("a second exclusive:1 kernel starts on the GPU the parked one released", second is not None)
        if second:
            res = await carol.run(second, tensor(1, "y"))
            check("the second kernel computes on that GPU", res["status"] == "ok", str(res["evalue"]))
            code, body, _ = await carol.act(first, "resume")
            check("resume while the GPU is taken: 409 naming the holder",
                  code == 409 and second[:8] in str(body), str(body)[:300])  # fmt: skip
            await carol.server.request("DELETE", f"/api/sessions/{await session_of(carol, second)}")
            await wait_for(lambda: len(gpu_apps()) == 0, 20)
        code, body, seconds = await carol.act(first, "resume")
        TIMINGS["a_6gib_resume_s"] = seconds
        check("resume once it ended: 200, running", code == 200 and body["park"]["state"] == "running",
              f"{seconds:.2f} s {json.dumps(body)[:200]}")  # fmt: skip
        res = await carol.run(first, intact(6))
        check("the tensor is intact, element by element", "INTACT 0" in res["stdout"], res["stdout"][-200:])
        # a cell in a parked kernel resumes it
        await asyncio.sleep(2)  # a sample that sees it on the GPU again (until then its row says there is nothing)
        pids = {p for p, m in gpu_apps()}
        if await park_and_measure(carol, first, pids, "a_again"):
            started = time.perf_counter()
            res = await carol.run(first, "print(float(x[12345]), float(x.sum() > 0))")
            TIMINGS["a_cell_resume_s"] = time.perf_counter() - started
            check("a cell run in the parked kernel resumes it and runs",
                  res["status"] == "ok" and res["stdout"].startswith("12345.0 1.0"),
                  f"{TIMINGS['a_cell_resume_s']:.2f} s: {res['stdout'][-100:]} {res['evalue']}")  # fmt: skip
            row = await carol.row(first)
            check("…and its row says running again", row.get("park", {}).get("state") == "running", str(row)[:200])
    finally:
        carol.stop()
    print("== A1. a container whose memory limit cannot take its GPU memory", flush=True)
    small = dict(TORCH, memory="8g", gpus="1")
    config["GpuEnv"]["environments"] = {"torch": TORCH, "small": small}
    limited = Person("carol", 18823, config, out, py)
    sh(as_user("carol", [py, "-m", "jupyter_gpuenv.cli.main", "add", "small", "--broker", "--user"]))
    try:
        check("carol's server with an 8g environment starts", await limited.start())
        code, body = await limited.server.request(
            "POST", "/api/sessions", {"path": "small.ipynb", "type": "notebook", "kernel": {"name": "gpuenv-small"}}
        )
        kernel = body["kernel"]["id"] if code == 201 else None
        if check("a kernel of the 8g environment starts", kernel is not None, str(body)[:200]):
            res = await limited.run(kernel, tensor(4))
            await asyncio.sleep(2)
            code, body, _ = await limited.act(kernel, "park")
            check("parking its ~18 GiB into an 8g container is refused, saying so",
                  code == 409 and "memory limit" in str(body), str(body)[:300])  # fmt: skip
            res = await limited.run(kernel, "print(float(x[7]))")
            check("…and it runs on as it was", res["stdout"].startswith("7.0"), res["stdout"][-100:])
    finally:
        limited.stop()
        config["GpuEnv"]["environments"] = {"torch": TORCH}
    print("== A2. the idle policy (park_idle_minutes 0.25, at least 1 GiB)", flush=True)
    config["GpuEnv"].update({"park_idle_minutes": 0.25, "park_min_gpu_memory_gib": 1})
    idle = Person("carol", 18822, config, out, py)
    try:
        check("carol's server with an idle policy starts", await idle.start())
        kernel = await idle.notebook("idle.ipynb")
        if not check("carol starts a kernel under the idle policy", kernel is not None):
            return
        res = await idle.run(kernel, tensor(2))
        check("an idle-policy kernel holds 2 GiB", res["status"] == "ok", str(res["evalue"]))
        started = time.monotonic()

        async def parked():
            return (await idle.row(kernel)).get("park", {}).get("state") == "parked"

        by_policy = await wait_for(parked, 120, 1.0)
        row = await idle.row(kernel)
        check("the idle policy parked it by itself",
              bool(by_policy) and row["park"]["by"] == "idle policy",
              f"after {time.monotonic() - started:.0f} s: {json.dumps(row.get('park'))}")  # fmt: skip
        res = await idle.run(kernel, intact(2))
        check("a cell brings it back, tensor intact", "INTACT 0" in res["stdout"], res["stdout"][-200:])
    finally:
        idle.stop()


def container_memory(container_id: str) -> int:
    """Bytes the container's memory cgroup holds now, as the engine reports it."""
    import docker

    stats = docker.from_env(timeout=30).containers.get(container_id).stats(stream=False)
    return int(stats.get("memory_stats", {}).get("usage") or 0)


async def session_of(who: Person, kernel_id: str) -> str:
    sessions = await who.server.get("/api/sessions")
    return next((s["id"] for s in sessions if s["kernel"]["id"] == kernel_id), "")


async def part_b(out: Path, py: str) -> None:
    print("== B. a shared host: the broker parks, bob takes the GPU, alice's cell resumes hers", flush=True)
    (ROOT / "broker_config.py").write_text(
        f"c.Broker.socket = {str(ROOT / 'broker.sock')!r}\n"
        f"c.Broker.environments = {{'torch': {TORCH!r}}}\n"
        "c.Broker.policy = {'default': {'environments': ['torch'], 'max_gpus': 1, 'max_kernels': 2}}\n"
        "c.Broker.sample_interval = 0.5\nc.Broker.metrics_port = 0\n"
    )
    broker_log = open(out / "broker-parking.log", "w")  # noqa: SIM115 - open while the broker runs
    broker = subprocess.Popen(
        [sys.executable, "-m", "jupyter_gpuenv.cli.main", "broker", "--config", str(ROOT / "broker_config.py")],
        stdout=broker_log,
        stderr=subprocess.STDOUT,
    )
    people = {}
    try:
        await wait_for(lambda: (ROOT / "broker.sock").exists(), 20)
        for port, name in ((18831, "alice"), (18832, "bob")):
            person = Person(name, port, {}, out, py)
            person.add("--broker")
            check(f"{name}'s server starts", await person.start(f"--GpuEnv.broker=unix://{ROOT / 'broker.sock'}"))
            people[name] = person
        alice, bob = people["alice"], people["bob"]
        kernel = await alice.notebook("alice.ipynb")
        if not check("alice starts a PyTorch kernel through the broker", kernel is not None):
            return
        res = await alice.run(kernel, tensor(5))
        check("alice's kernel holds 5 GiB", res["status"] == "ok", str(res["evalue"]))
        code, body = await bob.server.request("POST", "/api/kernels", {"name": "gpuenv-torch"})
        check("bob cannot start an exclusive kernel while alice holds the GPU",
              code == 409 and "alice" in str(body), str(body)[:300])  # fmt: skip
        await asyncio.sleep(2)
        if not await park_and_measure(alice, kernel, {p for p, _ in gpu_apps()}, "b_broker_5gib"):
            return
        theirs = await bob.notebook("bob.ipynb")
        check("bob's exclusive kernel starts on the GPU alice's parked kernel gave back", theirs is not None)
        if theirs:
            res = await bob.run(theirs, tensor(1, "y"))
            check("bob computes on it", res["status"] == "ok", str(res["evalue"]))
            code, body, _ = await alice.act(kernel, "resume")
            check("alice's resume: 409 naming bob", code == 409 and "bob" in str(body), str(body)[:300])
            await bob.server.request("DELETE", f"/api/sessions/{await session_of(bob, theirs)}")
            await wait_for(lambda: len(gpu_apps()) == 0, 20)
        started = time.perf_counter()
        res = await alice.run(kernel, intact(5))
        TIMINGS["b_cell_resume_s"] = time.perf_counter() - started
        check("alice's next cell resumes her kernel through the broker, tensor intact",
              "INTACT 0" in res["stdout"], f"{TIMINGS['b_cell_resume_s']:.2f} s {res['stdout'][-200:]}")  # fmt: skip
    finally:
        for person in people.values():
            person.stop()
        broker.terminate()
        try:
            broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()


async def main(out: Path) -> int:
    gpus = nvidia_smi("index,uuid,name,driver_version")
    check("nvidia-smi lists the GPUs", bool(gpus), json.dumps(gpus))
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(mode=0o755, parents=True)
    py = python_for_users()
    try:
        await part_a(out, py)
        await part_b(out, py)
    finally:
        (out / "parking.json").write_text(json.dumps({"gpus": gpus, "checks": RESULTS, "timings": TIMINGS}, indent=1))
    for key, value in TIMINGS.items():
        print(f"timing {key}: {value:.3f}")
    failed = [r for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpuenv-out"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(Path(args.out))))
