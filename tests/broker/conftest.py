"""A shared GPU host for the broker tests: real Unix users, a real JupyterHub spawning their servers as them,
the GPU broker as a hub-managed service, the real Docker engine, NVML replayed (two GPUs).

    users      alice, bob, carol, dave: Unix accounts (`useradd -m`, once; kept); carol is in "gpu-power"
    hub        127.0.0.1, free ports, state in a temporary folder; LocalProcessSpawner (the hub runs as root)
    broker     the hub service "gpuenv-broker" (broker_fake_nvml.py), socket under /run/gpuenv-test-<random>/;
               its metrics on a free loopback port, its token and usage ledger in that folder too
    servers    one per user, `--GpuEnv.broker=unix://...`, kernelspecs from `jupyter gpuenv add --broker`

One site serves the whole session (users, hub, four servers: most of the cost). Everything it starts carries
a marker in its environment; the teardown shuts every kernel down through the servers, stops the hub, and
checks that no process, container or folder of the test is left.

Needs root (useradd, setuid spawning), Docker with the test image, configurable-http-proxy: skipped with the
reason outside CI when one is missing, failed in CI (env CI set).
"""

from __future__ import annotations

import contextlib
import functools
import grp
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until as _wait_until
from hub.conftest import free_port, hub_request, page, processes_with_marker  # noqa: F401 - page: a fixture, the hub tests' own

HERE = Path(__file__).resolve().parent
WIRE = HERE / "wire.py"
IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")
USERS = ("alice", "bob", "carol", "dave")
POWER_GROUP, POWER_USERS = "gpu-power", ("carol",)
DOCKER_SOCKET = "/var/run/docker.sock"
KERNEL_LABEL = "io.jupyter.gpuenv.kernel-id"
UID_LABEL = "io.jupyter.gpuenv.uid"
START_TIMEOUT = 60  # the hub's API answers
SPAWN_TIMEOUT = 150  # four servers ready, spawned side by side on a busy 2-core machine
BROKER_TIMEOUT = 30  # the broker answers hello
STOP_TIMEOUT = 45
SOCKET_FOLDER_GRACE = 3.0  # seconds the broker keeps a socket folder that no lease names (c.Broker.socket_folder_grace)
PENDING_SOCKET_FOLDERS = 8  # such folders one user may hold at once (c.Broker.max_pending_socket_folders)

# The host's environments and who may use what (c.Broker.environments, c.Broker.policy). No GPU device can be
# attached in CI (gpu_mode none); the broker's choice of GPUs and its leases are the real thing.
ENVIRONMENTS = {
    "gpu": {"display_name": "Test GPU kernel", "image": IMAGE, "gpus": "exclusive:1", "gpu_mode": "none"},
    "pair": {"display_name": "Two GPUs", "image": IMAGE, "gpus": "exclusive:2", "gpu_mode": "none"},
    "cpu": {"display_name": "Test CPU kernel", "image": IMAGE, "gpus": "none"},
    "power": {"display_name": "Power users only", "image": IMAGE, "gpus": "exclusive:1", "gpu_mode": "none"},
}
POLICY = {
    "default": {"environments": ["gpu", "pair", "cpu"], "max_gpus": 1, "max_kernels": 4},
    "groups": {POWER_GROUP: {"environments": "*", "max_gpus": 2, "max_kernels": 8}},
    "users": {"bob": {"environments": ["gpu", "cpu"], "max_gpus": 1, "max_kernels": 4}},
}


# each look is an HTTP request through the hub, or an engine call: five a second, not fifty
wait_until = functools.partial(_wait_until, interval=0.2)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def cannot_run(reason: str):
    """Fail in CI, where everything must be there; skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def broker_available() -> bool:
    return importlib.util.find_spec("jupyter_gpuenv.broker.daemon") is not None


# -- Unix users --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnixUser:
    name: str
    uid: int
    gid: int
    home: str


def ensure_user(name: str) -> UnixUser:
    """The account ``name`` with a home of its own, made if missing (idempotent)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", name], check=True)
        entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return UnixUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def ensure_group(group: str, members: tuple[str, ...]) -> None:
    subprocess.run(["groupadd", "--force", group], check=True)
    for name in members:
        if name not in grp.getgrnam(group).gr_mem:
            subprocess.run(["usermod", "--append", "--groups", group, name], check=True)


def as_user(user: str, argv: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user``: their uid, gid and groups, a clean environment (what their processes have)."""
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(scope="session")
def unix_users() -> dict[str, UnixUser]:
    if sys.platform != "linux":
        pytest.skip("real Unix users and SO_PEERCRED: Linux only")
    if os.geteuid() != 0:
        cannot_run("the broker tests make Unix users and spawn servers as them: run them as root (CI does)")
    for tool in ("useradd", "groupadd", "usermod", "setpriv"):
        if shutil.which(tool) is None:
            cannot_run(f"{tool} is missing (Debian: passwd, util-linux)")
    users = {name: ensure_user(name) for name in USERS}
    ensure_group(POWER_GROUP, POWER_USERS)
    with contextlib.suppress(KeyError):
        docker_group = grp.getgrnam("docker")
        members = set(docker_group.gr_mem) & set(USERS)
        assert not members, f"test users in the docker group (root on the host): {members}; remove them"
    # the servers run this Python as these users: it must be reachable (a pyenv Python under /root is not)
    probe = as_user("alice", [sys.executable, "-c", "import jupyterhub, jupyter_gpuenv"])
    if probe.returncode != 0:
        cannot_run(
            f"the users' servers cannot run {sys.executable} as another user ({probe.stderr.strip()[-300:]}): "
            "make the venv from a Python every user can run (.ci/test.sh uses /usr/bin/python3)"
        )
    return users


# -- the site: hub, broker, servers -------------------------------------------------------------------------------
class HubDied(Exception):
    pass


@dataclass
class Site:
    """The shared host as a test sees it."""

    url: str  # the hub's proxy, what a browser opens
    hub_api: str  # the hub's own API (http://127.0.0.1:PORT/hub/api), what its services are given
    password: str
    service_token: str
    root: Path  # /run/gpuenv-test-<random>: root-owned, 0755
    socket: str  # the broker's socket
    hold: Path  # while it exists, the broker is not started again
    pidfile: Path  # the running broker's pid
    log_path: Path
    users: dict[str, UnixUser]
    marker: str  # in the environment of every process the hub starts
    metrics_url: str = ""  # the broker's Prometheus endpoint (c.Broker.metrics_port)
    metrics_token: Path | None = None  # c.Broker.metrics_token_file
    usage_dir: Path | None = None  # c.Broker.usage_dir
    gpu_processes: Path | None = None  # while it exists, the broker's NVML has these processes (broker_fake_nvml.py)
    proc: subprocess.Popen | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    # -- HTTP through the hub's proxy ------------------------------------------------------------------------
    def request(self, method: str, path: str, token: str | None = None, **kwargs):
        kwargs.setdefault("timeout", 60)  # four servers and a broker on two cores
        return hub_request(self.url, method, path, token, **kwargs)

    def api(self, method: str, path: str, **kwargs):
        """The hub's REST API with the test service's admin token."""
        return self.request(method, "/hub/api" + path, token=self.service_token, **kwargs)

    def server(self, user: str, method: str, path: str, **kwargs):
        """``user``'s single-user server, with their own hub token: ``/user/<user>/<path>``."""
        return self.request(method, f"/user/{user}/{path}", token=self.tokens[user], **kwargs)

    def start_kernel(self, user: str, environment: str, timeout: float = 90):
        """POST api/kernels for the kernelspec of ``environment``, as Lab does; the response."""
        return self.server(user, "POST", "api/kernels", json={"name": f"gpuenv-{environment}"}, timeout=timeout)

    def kernels(self, user: str) -> list[dict[str, Any]]:
        r = self.server(user, "GET", "api/kernels")
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()

    def gpuenv_kernels(self, user: str) -> list[dict[str, Any]]:
        r = self.server(user, "GET", "gpuenv/api/kernels")
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()["kernels"]

    def shutdown_kernel(self, user: str, kernel_id: str) -> None:
        r = self.server(user, "DELETE", f"api/kernels/{kernel_id}", timeout=60)
        assert r.status_code in (204, 404), (r.status_code, r.text[:300])

    def shutdown_all_kernels(self) -> None:
        for user in self.users:
            for kernel in self.kernels(user):
                self.shutdown_kernel(user, kernel["id"])

    def execute(self, user: str, kernel_id: str, code: str, timeout: float = 60) -> str:
        """Run ``code`` in the kernel over its websocket, through the hub's proxy and the user's server; stdout."""
        import websocket

        ws = websocket.create_connection(
            f"ws{self.url[4:]}/user/{user}/api/kernels/{kernel_id}/channels",
            header=[f"Authorization: token {self.tokens[user]}"],
            timeout=timeout,
        )
        try:
            msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "session": session,
                            "username": user,
                            "msg_type": "execute_request",
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": False,
                            "user_expressions": {},
                            "allow_stdin": False,
                            "stop_on_error": True,
                        },
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            out, deadline, replied, idle = [], time.monotonic() + timeout, None, False
            while not (replied and idle):
                assert time.monotonic() < deadline, f"no answer from kernel {kernel_id} in {timeout} s"
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    raise AssertionError(f"kernel {kernel_id}: {msg['content']['ename']}: {msg['content']['evalue']}")
                elif kind == "execute_reply":
                    replied = msg["content"]
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            return "".join(out)
        finally:
            ws.close()

    # -- the broker, directly ---------------------------------------------------------------------------------
    def wire(
        self, user: str, request: dict | str, timeout: float = 60, socket: str | None = None
    ) -> list[dict[str, Any]]:
        """Talk to the broker's socket (or ``socket``) as a process of ``user`` (a peer the broker cannot be told
        lies about)."""
        raw = ["--raw"] if isinstance(request, str) else []
        text = request if isinstance(request, str) else json.dumps(request)
        done = as_user(user, ["/usr/bin/python3", str(WIRE), *raw, socket or self.socket, text], timeout=timeout)
        assert done.returncode in (0, 3), (done.returncode, done.stdout, done.stderr)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def ask(self, who: str, op: str, /, **args) -> dict[str, Any]:
        """One operation as the user ``who``: the final ``{"result": ...}`` or ``{"error": {...}}`` line."""
        answers = self.wire(who, {"op": op, "args": args})
        assert answers, f"no answer to {op} as {who}"
        final = answers[-1]
        assert "result" in final or "error" in final, answers
        return final

    def broker_pid(self) -> int:
        return int(self.pidfile.read_text())

    def broker_answers(self) -> bool:
        """Whether the broker answers alice's hello (not: nobody listens, or the socket is not there)."""
        answers = self.wire("alice", {"op": "hello", "args": {}})
        return bool(answers) and "result" in answers[-1]

    def wait_broker(self, timeout: float = BROKER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_hub()
            if self.pidfile.exists() and os.path.exists(self.socket) and self.broker_answers():
                return
            time.sleep(0.2)
        raise AssertionError(f"the broker does not answer hello within {timeout} s\n{self.log_tail()}")

    def kill_broker(self, signum: int = signal.SIGKILL) -> int:
        """Signal the running broker and wait until it is gone; the supervisor starts it again unless held."""
        pid = self.broker_pid()
        os.kill(pid, signum)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert time.monotonic() < deadline, f"broker {pid} still runs 30 s after signal {signum}"
        return pid

    @contextlib.contextmanager
    def broker_down(self):
        """The broker stopped (SIGKILL: its socket file stays, nobody listens) for the block; then back."""
        self.hold.touch()
        try:
            self.kill_broker(signal.SIGKILL)
            yield
        finally:
            self.hold.unlink()
            self.wait_broker()

    # -- what exists on the host -------------------------------------------------------------------------------
    def containers(self) -> list[dict[str, Any]]:
        """Every kernel container of the test users: [{id, kernel_id, uid, status, labels}]."""
        import docker

        uids = {str(u.uid) for u in self.users.values()}
        found = docker.from_env(timeout=30).api.containers(all=True, filters={"label": KERNEL_LABEL})
        return [
            {
                "id": c["Id"],
                "kernel_id": c["Labels"].get(KERNEL_LABEL),
                "uid": c["Labels"].get(UID_LABEL),
                "status": c["State"],
                "labels": c["Labels"],
            }
            for c in found
            if c["Labels"].get(UID_LABEL) in uids
        ]

    def socket_folders(self) -> set[str]:
        """``sockets/<uid>/<kernel id>`` under the broker's folder, as "uid/kernel id"."""
        base = Path(self.socket).parent / "sockets"
        if not base.is_dir():
            return set()
        return {f"{d.name}/{k.name}" for d in base.iterdir() if d.is_dir() for k in d.iterdir()}

    def lease_text(self) -> str:
        path = Path(self.socket).parent / "leases.json"
        return path.read_text() if path.exists() else ""

    def leased_kernels(self) -> set[str]:
        """Kernel ids (uuids, not GPU-uuids) named anywhere in the lease book."""
        return set(KERNEL_UUID.findall(self.lease_text()))

    def leftovers(self) -> dict[str, Any]:
        """What the host holds for kernels: containers, socket folders, leases. Empty when no kernel runs."""
        return {
            "containers": sorted((c["kernel_id"], c["status"]) for c in self.containers()),
            "socket_folders": sorted(self.socket_folders()),
            "leases": sorted(self.leased_kernels()),
        }

    # -- the hub ---------------------------------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Every live process the hub started (servers, broker, proxy), by the marker in its environment."""
        return processes_with_marker(self.marker)

    def server_token(self, user: str) -> str:
        """The JUPYTERHUB_API_TOKEN the hub gave ``user``'s server: what its broker client presents."""
        for pid in self.processes():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                if "singleuser" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    continue
                items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
                environ = dict(item.split("=", 1) for item in items if "=" in item)
                if environ.get("JUPYTERHUB_USER") == user and environ.get("JUPYTERHUB_API_TOKEN"):
                    return environ["JUPYTERHUB_API_TOKEN"]
        raise AssertionError(f"no server of {user} with a hub token among {self.processes()}")

    def check_hub(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise HubDied(f"JupyterHub exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no hub log)"


KERNEL_UUID = re.compile(r"(?<![\w-])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![\w-])")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2]


def write_broker_config(path: Path, socket_path: str, extra: str = "") -> None:
    """The broker's configuration; its metrics endpoint and usage ledger are off unless ``extra`` turns them on."""
    path.write_text(
        "# c.Broker settings of the broker tests (written by tests/broker/conftest.py)\n"
        f"c.Broker.socket = {socket_path!r}\n"
        f"c.Broker.environments = {ENVIRONMENTS!r}\n"
        f"c.Broker.policy = {POLICY!r}\n"
        'c.Broker.show_other_users = "name"\n'
        "c.Broker.docker_timeout = 15.0\n"  # a busy 2-core machine: creates can take seconds
        "c.Broker.sample_interval = 0.5\n"
        "c.Broker.metrics_port = 0\n"
        'c.Broker.usage_dir = ""\n' + extra
    )
    path.chmod(0o600)


def install_kernelspecs(prefix: Path) -> Path:
    """The broker kernelspecs every user's server reads: `jupyter gpuenv add NAME --broker` under ``prefix``."""
    for name, env in ENVIRONMENTS.items():
        subprocess.run(
            [sys.executable, "-m", "jupyter_gpuenv.cli.main", "add", name, "--broker"]
            + ["--display-name", env["display_name"], "--prefix", str(prefix)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    kernels = prefix / "share" / "jupyter" / "kernels"
    # a kernelspec written by hand that says more than the environment's name: refused in broker mode
    sneaky = kernels / "gpuenv-sneaky"
    sneaky.mkdir(mode=0o755)
    spec = json.loads((kernels / "gpuenv-gpu" / "kernel.json").read_text())
    spec["display_name"] = "Sneaky (mounts the Docker socket)"
    spec["metadata"]["kernel_provisioner"]["config"] = {
        "environment": "gpu",
        "image": IMAGE,
        "mounts": [f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"],
    }
    (sneaky / "kernel.json").write_text(json.dumps(spec, indent=1))
    (sneaky / "kernel.json").chmod(0o644)
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="session")
def docker_image():
    try:
        import docker

        docker.from_env(timeout=10).images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means the same: no container kernels here
        cannot_run(f"needs a Docker engine with {IMAGE} (bash .ci/test.sh sets both up): {exc}")
    return IMAGE


@pytest.fixture(scope="session")
def site(unix_users, docker_image, tmp_path_factory):
    """The shared host, once per session; every kernel is shut down after each module (``clean_site``)."""
    if not broker_available():
        cannot_run("jupyter_gpuenv.broker.daemon is not there yet (the shared-host broker, issue 11)")
    pytest.importorskip("requests")
    pytest.importorskip("websocket")
    if shutil.which("configurable-http-proxy") is None:
        cannot_run("configurable-http-proxy is not on PATH: npm install -g configurable-http-proxy")

    work = tmp_path_factory.mktemp("broker-hub")  # the hub's own state: root's alone
    root = Path(f"/run/gpuenv-test-{secrets.token_hex(4)}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    socket_path = str(root / "broker" / "broker.sock")
    marker = secrets.token_hex(8)
    hub_port, metrics_port = free_port(), free_port()
    s = Site(
        url=f"http://127.0.0.1:{free_port()}",
        hub_api=f"http://127.0.0.1:{hub_port}/hub/api",
        password=secrets.token_urlsafe(12),
        service_token=secrets.token_hex(32),
        root=root,
        socket=socket_path,
        hold=root / "broker.hold",
        pidfile=root / "broker.pid",
        log_path=work / "jupyterhub.log",
        users=unix_users,
        marker=marker,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        metrics_token=root / "metrics.token",
        usage_dir=root / "usage",
        gpu_processes=root / "gpu-processes.json",
    )
    try:
        write_broker_config(
            root / "broker_config.py",
            socket_path,
            extra=(
                f"c.Broker.metrics_port = {metrics_port}\n"
                f"c.Broker.metrics_token_file = {str(s.metrics_token)!r}\n"
                f"c.Broker.usage_dir = {str(s.usage_dir)!r}\n"
                "c.Broker.usage_flush_interval = 1.0\n"
                # socket folders no lease names are swept this long after they were made (issue 20)
                f"c.Broker.socket_folder_grace = {SOCKET_FOLDER_GRACE}\n"
                f"c.Broker.max_pending_socket_folders = {PENDING_SOCKET_FOLDERS}\n"
            ),
        )
        jupyter_path = install_kernelspecs(root / "prefix")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JUPYTER", "CUDA_VISIBLE", "NVIDIA_VISIBLE", "CONFIGPROXY", "GPUENV_"))
        }
        env.update(
            GPUENV_BROKER_HUB_DIR=str(work),
            GPUENV_BROKER_USERS=",".join(USERS),
            GPUENV_BROKER_PROXY_PORT=s.url.rsplit(":", 1)[1],
            GPUENV_BROKER_HUB_PORT=str(hub_port),
            GPUENV_BROKER_PROXY_API_PORT=str(free_port()),
            GPUENV_BROKER_PASSWORD=s.password,
            GPUENV_BROKER_SERVICE_TOKEN=s.service_token,
            GPUENV_BROKER_CONFIG=str(root / "broker_config.py"),
            GPUENV_BROKER_SOCKET=socket_path,
            GPUENV_BROKER_HOLD=str(s.hold),
            GPUENV_BROKER_PIDFILE=str(s.pidfile),
            GPUENV_BROKER_GPU_PROCESSES=str(s.gpu_processes),
            GPUENV_BROKER_JUPYTER_PATH=str(jupyter_path),
            GPUENV_HUB_TEST_MARKER=marker,
            PYTHONUNBUFFERED="1",
        )
        with open(s.log_path, "wb") as log:
            s.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "jupyterhub_config.py")],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _start(s)
        yield s
    finally:
        leftovers = _teardown(s, marker)
    assert not any(leftovers.values()), f"left behind by the broker tests (removed now): {leftovers}\n{s.log_tail()}"


def _start(s: Site) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        s.check_hub()
        with contextlib.suppress(OSError):
            if s.api("GET", "/").status_code == 200:
                break
        assert time.monotonic() < deadline, f"the hub's API does not answer within {START_TIMEOUT} s\n{s.log_tail()}"
        time.sleep(0.25)
    for name in USERS:
        r = s.api("POST", f"/users/{name}/tokens", json={"note": "gpuenv broker test", "expires_in": 7200})
        assert r.status_code == 201, (r.status_code, r.text)
        s.tokens[name] = r.json()["token"]
        r = s.api("POST", f"/users/{name}/server")
        assert r.status_code in (201, 202), (r.status_code, r.text)

    def ready():
        s.check_hub()
        return all(s.api("GET", f"/users/{n}").json()["servers"].get("", {}).get("ready") for n in USERS)

    wait_until(ready, SPAWN_TIMEOUT, "the four users' servers", interval=0.5)
    s.wait_broker()


def _teardown(s: Site, marker: str) -> dict[str, Any]:
    """Shut every kernel down (through the servers, while the broker runs), stop the hub, remove what is left."""
    if s.hold.exists():
        s.hold.unlink()
    if s.proc is not None and s.proc.poll() is None:
        try:
            s.wait_broker(10)
            s.shutdown_all_kernels()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the hub still has to stop
            print(f"broker tests: kernels not shut down through the servers: {exc}", file=sys.stderr)
    # the hub stops its services first (the broker), then the servers
    if s.proc is not None and s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(10)
    processes: list[int] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        processes = processes_with_marker(marker)
        if not processes:
            break
        time.sleep(0.25)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    leftovers: dict[str, Any] = {"processes": processes, "containers": [], "folders": []}
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(timeout=30)
        for c in s.containers():
            if c["labels"].get("io.jupyter.gpuenv.socket-dir", "").startswith(str(s.root)):
                leftovers["containers"].append((c["kernel_id"], c["status"]))
                client.api.remove_container(c["id"], force=True)
        # other containers the broker made for the test users and left when it stopped (not kernels: e.g. the
        # holder of a user's network namespace): removed, and said, without failing the kernel tests
        uids = [str(u.uid) for u in s.users.values()]
        for c in client.api.containers(all=True, filters={"label": UID_LABEL}):
            labels = c.get("Labels") or {}
            if labels.get(UID_LABEL) in uids and KERNEL_LABEL not in labels:
                client.api.remove_container(c["Id"], force=True)
                warnings.warn(f"the broker left container {c['Names'][0]} ({labels}) after it stopped", stacklevel=1)
    leftovers["folders"] = sorted(s.socket_folders())
    shutil.rmtree(s.root, ignore_errors=True)
    return leftovers


@pytest.fixture(scope="module")
def clean_site(site):
    """The site, with nothing running before this module and every kernel shut down after it."""
    site.wait_broker()
    site.shutdown_all_kernels()
    assert site.leftovers() == {"containers": [], "socket_folders": [], "leases": []}
    yield site
    site.wait_broker()
    site.shutdown_all_kernels()
    wait_until(
        lambda: site.leftovers() == {"containers": [], "socket_folders": [], "leases": []},
        15,
        "nothing left once every kernel was shut down",
    )


# -- the browser, for test_broker_lab.py: the panel tests' Chromium set-up --------------------------------------------
from browser.conftest import (  # noqa: E402,F401
    browser_type_launch_args,
    jp_asyncio_loop,
    jp_server_cleanup,
    pytest_collection_modifyitems,
)
