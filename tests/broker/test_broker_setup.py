"""The administrator's path on a shared host, each message as a person meets it: the real broker (NVML replayed),
real Unix users running `jupyter gpuenv` against it.

One broker of its own for this module (no hub, no servers: these are the admin's and the CLI's conversations
with the broker), started as `jupyter gpuenv broker --config FILE` is, its output kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from registry_harness import REGISTRY, REPOSITORY, layered_tag, need_registry, remove_test_images

from .conftest import BROKER_TIMEOUT, HERE, IMAGE, WIRE, as_user, wait_until, write_broker_config

MISSING_IMAGE = "gpuenv-test-never-built:absent"


@dataclass
class Lone:
    root: Path
    socket: str
    config: Path
    confdir: Path  # JUPYTER_CONFIG_DIR of the users' commands: c.GpuEnv.broker names this broker
    log: Path
    proc: subprocess.Popen
    layered: str  # an image only the CI registry has

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, user: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`jupyter gpuenv ARGS` as ``user``, their kernelspecs in a data folder of their own."""
        data = self.root / f"data-{user}"
        if not data.exists():
            data.mkdir(mode=0o700)
            shutil.chown(data, user, user)
        env = [f"JUPYTER_CONFIG_DIR={self.confdir}", f"JUPYTER_DATA_DIR={data}", "PYTHONUNBUFFERED=1"]
        return as_user(user, ["env", *env, sys.executable, "-m", "jupyter_gpuenv.cli.main", *args], timeout=timeout)

    @contextlib.contextmanager
    def client(self, user: str):
        """One long-lived client process of ``user`` (its kernels end when it does): ``ask(op, **args)``."""
        process = subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env", "/usr/bin/python3",
             str(WIRE), "--session", self.socket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

        def ask(op: str, /, **args) -> dict:
            process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            process.stdin.flush()
            return json.loads(process.stdout.readline())

        try:
            yield ask
        finally:
            process.stdin.close()
            process.wait(30)

    def ask(self, user: str, op: str, /, **args) -> dict:
        """One operation as a process of ``user``: the broker's final line."""
        request = json.dumps({"op": op, "args": args})
        done = as_user(user, ["/usr/bin/python3", str(WIRE), self.socket, request], timeout=120)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert lines, (done.stdout, done.stderr)
        return lines[-1]


def _hello(socket_path: str) -> bool:
    done = as_user("alice", ["/usr/bin/python3", str(WIRE), socket_path, '{"op": "hello", "args": {}}'], timeout=20)
    return '"result"' in done.stdout


@pytest.fixture(scope="module")
def lone(unix_users, docker_image):
    import docker

    docker_client = docker.from_env(timeout=60)
    need_registry()
    remove_test_images(docker_client)
    layered = f"{REGISTRY}/{REPOSITORY}:{layered_tag(docker_client)}"
    root = Path(f"/run/gpuenv-test-{secrets.token_hex(4)}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    socket_path = str(root / "broker" / "broker.sock")
    config = root / "broker_config.py"
    extra = {
        "missing": {"display_name": "Never built", "image": MISSING_IMAGE, "gpus": "none"},
        "layered": {"display_name": "Pulled on demand", "image": layered, "gpus": "none"},
    }
    write_broker_config(
        config,
        socket_path,
        extra=f"c.Broker.environments.update({extra!r})\nc.Broker.usage_dir = {str(root / 'usage')!r}\n",
    )
    confdir = root / "jupyter-config"
    confdir.mkdir(mode=0o755)
    (confdir / "jupyter_server_config.py").write_text(f'c.GpuEnv.broker = "unix://{socket_path}"\n')
    (confdir / "jupyter_server_config.py").chmod(0o644)
    log = root / "broker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GPUENV_"))}
    env.update(GPUENV_TEST_RECORDING="h100x2", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "broker_fake_nvml.py"), "--run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    lone = Lone(root, socket_path, config, confdir, log, proc, layered)
    try:
        wait_until(lambda: proc.poll() is not None or _hello(socket_path), BROKER_TIMEOUT, "the broker answers")
        assert proc.poll() is None, lone.output()
        yield lone
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(Exception):
            docker_client.api.remove_image(layered)
        shutil.rmtree(root, ignore_errors=True)


# -- the configuration ---------------------------------------------------------------------------------------------
def broker_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_gpuenv.cli.main", "broker", *args], capture_output=True, text=True, timeout=60
    )


def test_a_missing_configuration_is_one_line_naming_the_path(tmp_path):
    done = broker_command("--config", str(tmp_path / "nowhere.py"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(tmp_path / "nowhere.py") in done.stderr and "broker install" in done.stderr


def test_every_configuration_problem_is_said_at_once(tmp_path):
    config = tmp_path / "broker_config.py"
    config.write_text(
        "c.Broker.enviroments = {}\n"
        f"c.Broker.environments = {{'gpu': {{'image': {IMAGE!r}, 'gpus': 'most'}}, 'cpu': {{'image': {IMAGE!r}}}}}\n"
        "c.Broker.policy = {'default': {'environments': ['cpu', 'pytorch']},\n"
        "                   'users': {'bob': {'environments': ['gpux']}}}\n"
        "c.Broker.metrics_port = 'ninety'\n"
        "c.Broker.environments[7] = {'image': 'x'}\n"
        "c.Broker.sample_interval = 0.0\n"
    )
    done = broker_command("--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].endswith(f"] gpuenv broker: 7 problems in {config}:") and len(lines) == 8
    text = done.stderr
    assert "c.Broker.enviroments is not a setting of the broker; did you mean c.Broker.environments?" in text
    assert "'most' is not a GPU policy" in text
    assert "c.Broker.policy['default'] names the environment 'pytorch', which c.Broker.environments does not" in text
    assert "c.Broker.policy['users']['bob'] names the environment 'gpux'" in text
    assert "c.Broker.metrics_port:" in text
    assert "c.Broker.environments: the name 7 must be a string" in text
    assert "c.Broker.sample_interval must be more than 0, not 0.0" in text  # it would divide by it


def test_the_example_configuration_ships_and_passes_the_check(tmp_path):
    from jupyter_gpuenv.broker.setup import check, example_config

    done = broker_command("--example-config")
    assert done.returncode == 0 and done.stdout == example_config()
    assert "c.Broker.environments = {" in done.stdout
    from traitlets.config.loader import PyFileConfigLoader

    (tmp_path / "broker_config.py").write_text(done.stdout)
    assert check(PyFileConfigLoader("broker_config.py", str(tmp_path)).load_config()) == []
    hub_token = Path(__file__).resolve().parents[2] / "docs" / "examples"  # the DockerSpawner example passes too
    assert check(PyFileConfigLoader("broker_hub_token_config.py", str(hub_token)).load_config()) == []


# -- the broker at start -------------------------------------------------------------------------------------------
def test_the_broker_prints_and_logs_a_readiness_table(lone):
    wait_until(lambda: "ENVIRONMENT" in lone.output(), 60, "the readiness table")
    text = lone.output()
    printed = [line for line in text.splitlines() if line.startswith(("ENVIRONMENT", "gpu ", "cpu ", "missing "))]
    header, rows = printed[0], {line.split()[0]: line for line in printed[1:]}
    assert header.split()[:4] == ["ENVIRONMENT", "IMAGE", "KERNEL", "GPUS"]
    assert "present" in rows["gpu"] and "ipykernel in the image" in rows["gpu"]
    assert "exclusive:1 (2 on this host)" in rows["gpu"] and rows["gpu"].endswith("ready")
    assert "? / driver 13.0" in rows["gpu"] and "TOO NEW" not in rows["gpu"]  # no CUDA in the image; the recording's
    assert rows["cpu"].split()[-1] == "ready" and " none " in rows["cpu"]
    assert "missing" in rows["missing"].split()[1] and rows["missing"].endswith("image-missing")
    assert f"missing: image {MISSING_IMAGE} is not on the engine yet" in text
    logged = [line for line in text.splitlines() if "gpuenv broker: ENVIRONMENT" in line]
    assert logged, "the table is logged too"


def test_the_broker_makes_its_ledger_at_start_and_usage_says_when_there_is_none(lone):
    usage = lone.root / "usage"
    assert usage.is_dir() and (usage.stat().st_mode & 0o777) == 0o700  # there as soon as the broker answers
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_gpuenv.cli.main", "usage", "--dir", str(usage)], capture_output=True, text=True
    )
    assert done.returncode == 0 and "No GPU use recorded in this period." in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_gpuenv.cli.main", "usage", "--dir", str(lone.root / "usgae")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "no ledger there" in done.stderr and str(lone.root / "usgae") in done.stderr


# -- the users' commands -------------------------------------------------------------------------------------------
def test_add_broker_asks_the_broker(lone):
    done = lone.cli("alice", "add", "nope", "--broker", "--user")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no environment 'nope' on this host" in done.stderr and "gpu" in done.stderr
    assert not (lone.root / "data-alice" / "kernels" / "gpuenv-nope").exists()

    done = lone.cli("alice", "add", "gpu", "--broker", "--user")
    assert done.returncode == 0, done.stderr
    spec = json.loads((lone.root / "data-alice" / "kernels" / "gpuenv-gpu" / "kernel.json").read_text())
    assert spec["display_name"] == "Test GPU kernel"  # the broker's name for it

    done = lone.cli("alice", "add", "power", "--broker", "--user")  # there, but for the gpu-power group only
    assert done.returncode == 2 and "not one this host's administrator lets you use" in done.stderr

    listed = lone.cli("alice", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("gpu ")]
    assert "invalid" not in row and f"Test GPU kernel  [{IMAGE}; GPUs exclusive:1; GPU broker]" in row


def test_add_broker_reads_the_configuration_while_the_broker_is_down(lone, tmp_path):
    down = tmp_path / "config"
    down.mkdir()
    (down / "jupyter_server_config.py").write_text(f'c.GpuEnv.broker = "unix://{tmp_path}/none.sock"\n')
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(down), "JUPYTER_DATA_DIR": str(tmp_path / "data")}

    def add(*args):
        return subprocess.run(
            [sys.executable, "-m", "jupyter_gpuenv.cli.main", "add", *args, "--broker", "--user"],
            capture_output=True,
            text=True,
            env=env,
        )

    done = add("nope", "--broker-config", str(lone.config))
    assert done.returncode == 2
    assert f"no environment 'nope' on this host (the GPU broker's configuration {lone.config} defines:" in done.stderr
    done = add("cpu", "--broker-config", str(lone.config))
    assert done.returncode == 0 and "'Test CPU kernel'" in done.stdout
    done = add("cpu", "--broker-config", str(tmp_path / "nowhere.py"))
    assert done.returncode == 2 and "no such configuration file" in done.stderr


def test_pull_by_the_broker_with_progress(lone):
    done = lone.cli("alice", "pull", "gpu", "--broker")
    assert done.returncode == 0 and "is already on the GPU broker's Docker engine" in done.stdout, done.stderr
    done = lone.cli("alice", "pull", "nope", "--broker")
    assert done.returncode == 2 and "no environment 'nope' on this host" in done.stderr
    done = lone.cli("bob", "pull", "pair", "--broker")  # bob's own rule: gpu and cpu only
    assert done.returncode == 2 and "not one this host's administrator lets you use" in done.stderr
    for bad in ({}, {"environment": 5}, {"environment": "../gpu"}):  # bad input is a 4xx, never a 500
        error = lone.ask("alice", "pull", **bad)["error"]
        assert error["status"] == 400 and "see its log" not in error["message"], (bad, error)
    catalog = {e["name"]: e for e in lone.ask("alice", "catalog")["result"]}
    assert catalog["gpu"]["yours"] and not catalog["power"]["yours"]
    assert catalog["gpu"]["display_name"] == "Test GPU kernel" and "definition" not in catalog["gpu"]
    done = lone.cli("carol", "pull", "layered", "--broker", timeout=300)  # gpu-power: every environment
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"The GPU broker pulls {lone.layered} for 'layered'" in done.stdout
    assert f"Pulled {lone.layered}" in done.stdout
    assert "carol pulls" in lone.output()


def test_a_users_namespace_holder_goes_with_their_last_kernel(lone):
    """The broker's kernels without network share their user's gpuenv-netns-* holder; it does not outlive them."""
    import docker

    client = docker.from_env(timeout=30)
    home = lone.root / "home-dave"
    home.mkdir(mode=0o700)
    shutil.chown(home, "dave", "dave")
    started = []
    with lone.client("dave") as ask:  # the kernels' client: they end with it
        for _ in range(2):
            kernel_id = f"setup-{secrets.token_hex(6)}"
            folder = ask("socket_folder", kernel_id=kernel_id)["result"]["path"]
            answer = ask("start_kernel", kernel_id=kernel_id, environment="cpu", root_dir=str(home), cwd=str(home),
                         socket_dir=folder, connection_file=f"{folder}/kernel.json", terminal=True)  # fmt: skip
            assert "result" in answer, answer
            started.append(answer["result"]["container_id"])
        (mode,) = {client.api.inspect_container(c)["HostConfig"]["NetworkMode"] for c in started}
        holder = mode.removeprefix("container:")
        assert client.api.inspect_container(holder)["Name"].startswith(f"/gpuenv-netns-{pwd.getpwnam('dave').pw_uid}-")
        assert ask("remove", container_id=started[0])["result"] is not None
        assert client.api.inspect_container(holder)["State"]["Running"]  # dave's other kernel still joins it
        assert ask("remove", container_id=started[1])["result"] is not None
    joined = {c["HostConfig"]["NetworkMode"] for c in client.api.containers(all=True)}
    if mode not in joined:  # (a kernel of dave's from another broker on this engine would keep it, rightly)
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_container(holder)


def test_the_broker_writes_its_ledger_soon_after_start_not_a_flush_interval_later(tmp_path, monkeypatch):
    from jupyter_gpuenv.broker import metrics as broker_metrics
    from jupyter_gpuenv.broker.leases import RUNNING, KernelLease
    from jupyter_gpuenv.broker.settings import Broker
    from jupyter_gpuenv.gpus.nvml import GpuSample, Snapshot
    from jupyter_gpuenv.usage.ledger import Ledger

    monkeypatch.setattr(broker_metrics, "FIRST_FLUSH", 0.0)  # 5 s in the broker: no test waits that long
    settings = Broker(metrics_port=0, usage_dir=str(tmp_path / "usage"), usage_flush_interval=60.0)
    sampler = type("Sampler", (), {"interval": 3600.0, "latest": Snapshot(available=False)})()
    book = [KernelLease("k-alice", 1000, "alice", "gpu", "/run/x", RUNNING, "a" * 64, ["GPU-0"])]
    metrics = broker_metrics.BrokerMetrics(settings, book, sampler)

    async def run():
        await metrics.start()
        assert (tmp_path / "usage").is_dir()  # made at start, before anything is written
        now = time.time()
        for at in (now, now + 3.0):
            sampler.latest = Snapshot(available=True, sampled_at=at, gpus=[GpuSample(0, "GPU-0")])
            await metrics.usage.tick()
        if metrics.usage._flushing is not None:
            await metrics.usage._flushing
        written = Ledger(tmp_path / "usage").read(now - 60, now + 60)
        await metrics.stop()
        return written

    (record,) = asyncio.run(run())
    assert (record.user, record.gpu_seconds) == ("alice", 3.0)
