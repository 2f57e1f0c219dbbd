"""A hostile local user against the broker (issue 20): the broker runs as root for every user of the host, so
whatever a user can put in its way is an attack on root, or on everyone else.

alice is the attacker, with nothing but her Unix account: she races the broker's folders with links
(tests/broker/hostile.py does what she does, as her), plants files where root reads, holds connections, floods.
bob is everyone else: what he relies on (an answer within seconds, a kernel that starts) must hold meanwhile.

The races: the site's broker has the test seam GPUENV_BROKER_RACE_DELAY (broker_fake_nvml.py): for kernel ids
starting with "race-" it waits that long between checking what a user controls and using it, so a swap lands in
that window every time; each race also has a plain version (no seam, bounded) that must never win either. The
broker runs with a systemd unit's file limit (1024) and, where the host allows, Debian's fs.protected_* sysctls
(.ci/test.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from .conftest import HERE, PENDING_SOCKET_FOLDERS, SOCKET_FOLDER_GRACE, USERS, as_user, wait_until, write_broker_config

HOSTILE = HERE / "hostile.py"
PREFIXES = ("race-", "hostile-")  # every kernel id this module makes: "race-" ones are delayed by the seam
PLAIN_RACE = 20  # seconds a plain race runs
ANSWER_WITHIN = 15.0  # "still answers": within a server's silence budget (4 x 5 s), on a loaded 2-core machine
MIB = 1 << 20
MOUNTS = "--mountinfo--"


# -- alice's tools ---------------------------------------------------------------------------------------------------
class Helper:
    """``hostile.py ARGS`` as ``user``, in the background: its JSON lines as they come; lines to its stdin."""

    def __init__(self, user: str, *args: str) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env"]
            + ["/usr/bin/python3", str(HOSTILE), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"hostile.py said nothing within {timeout} s\n{self.errors()}")
            if self.selector.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"hostile.py ended ({self.proc.wait()}) without a line\n{self.errors()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def tell(self, text: str = "\n") -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> None:
        """Close its stdin (what holds it) and wait for it to end."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # this one process, by its id
            self.proc.wait(10)
        self.stderr.close()

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]


@pytest.fixture
def helpers():
    """Start hostile.py as a user: ``helpers(user, *args)``; every one still running is killed afterwards."""
    started: list[Helper] = []

    def start(user: str, *args: str) -> Helper:
        started.append(Helper(user, *args))
        return started[-1]

    yield start
    for helper in started:
        helper.stop()


def send_raw(site, user: str, data: bytes, timeout: float = 60) -> list[dict[str, Any]]:
    """``data`` as it is on the broker's socket, as ``user``; the lines answered, then {"end": how it ended}."""
    done = as_user(user, ["/usr/bin/python3", str(HOSTILE), "send", site.socket], timeout=timeout, input=data.hex())
    assert done.returncode == 0, (done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def status_of(answer: dict[str, Any] | None) -> int | None:
    return ((answer or {}).get("error") or {}).get("status")


def refused_4xx(answer: dict[str, Any] | None) -> bool:
    status = status_of(answer)
    return status is not None and 400 <= status < 500


def new_id(kind: str = "hostile") -> str:
    return f"{kind}-{secrets.token_hex(6)}"


# -- the host as root sees it ----------------------------------------------------------------------------------------
def sockets(site) -> Path:
    return Path(site.socket).parent / "sockets"


def kernel_folder(site, user: str, kernel_id: str) -> Path:
    return sockets(site) / str(site.users[user].uid) / kernel_id


def race_delay(site) -> float:
    """The seam's delay in the running broker's environment (broker_fake_nvml.py gives it)."""
    items = Path(f"/proc/{site.broker_pid()}/environ").read_bytes().split(b"\0")
    environ = dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)
    delay = float(environ.get("GPUENV_BROKER_RACE_DELAY") or 0)
    assert delay > 0, "the broker runs without GPUENV_BROKER_RACE_DELAY: the race tests need the seam"
    return delay


def rss(pid: int) -> int:
    """A process's resident memory in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def log_size(site) -> int:
    return site.log_path.stat().st_size


def log_since(site, offset: int) -> list[str]:
    with open(site.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def timed_ask(site, user: str, op: str, **args) -> tuple[float, dict[str, Any] | None]:
    """Seconds ``user``'s request took, and its final line (None: no answer within 3 * ANSWER_WITHIN)."""
    started = time.monotonic()
    try:
        done = as_user(
            user,
            ["/usr/bin/python3", str(HERE / "wire.py"), site.socket, json.dumps({"op": op, "args": args})],
            timeout=3 * ANSWER_WITHIN,
        )
    except subprocess.TimeoutExpired:
        return time.monotonic() - started, None
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return time.monotonic() - started, (lines[-1] if lines else None)


def bob_is_served(site) -> list[str]:
    """bob's hello and environments, each answered within ANSWER_WITHIN seconds: what went wrong, if anything."""
    wrong = []
    for op in ("hello", "environments"):
        took, answer = timed_ask(site, "bob", op)
        if answer is None or "result" not in answer or took > ANSWER_WITHIN:
            wrong.append(f"bob's {op}: {answer!r} after {took:.1f} s")
    return wrong


def look_inside(container_id: str, path: str) -> str | None:
    """What root inside the container sees at ``path`` (ls -a) and its mount table; None if it does not run."""
    client = docker.from_env(timeout=30)
    if not client.api.inspect_container(container_id)["State"]["Running"]:
        return None
    script = f"ls -a '{path}'; echo {MOUNTS}; cat /proc/self/mountinfo"
    run = client.api.exec_create(container_id, ["sh", "-c", script], user="0")
    return client.api.exec_start(run).decode(errors="replace")


def container_logs(container_id: str) -> str:
    with contextlib.suppress(Exception):
        return docker.from_env(timeout=30).api.logs(container_id, tail=30).decode(errors="replace")
    return "(no logs)"


def kernel_traces(site, kernel_id: str) -> dict[str, Any]:
    """What the host holds for one kernel id: its containers, its socket folders, whether the lease book names it."""
    return {
        "containers": [c["id"][:12] for c in site.containers() if c["kernel_id"] == kernel_id],
        "socket_folders": [f for f in site.socket_folders() if f.endswith(f"/{kernel_id}")],
        "leased": kernel_id in site.lease_text(),
    }


NO_TRACES = {"containers": [], "socket_folders": [], "leased": False}


def ours(kernel_id: str | None) -> bool:
    return bool(kernel_id) and kernel_id.startswith(PREFIXES)


def remove_ours(site) -> None:
    """Every kernel, container and socket folder this module made: through the broker, then by force."""
    for user in USERS:
        answer = site.ask(user, "kernels")
        for lease in answer.get("result") or []:
            if ours(lease.get("kernel_id")) and lease.get("container_id"):
                site.ask(user, "remove", container_id=lease["container_id"])
    client = docker.from_env(timeout=30)
    for c in site.containers():
        if ours(c["kernel_id"]):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(c["id"], force=True)
    names = {str(site.users[user].uid): user for user in USERS}
    forced = False
    for folder in site.socket_folders():
        uid, kernel_id = folder.split("/", 1)
        if ours(kernel_id) and uid in names:
            forced |= drop_folder(site, names[uid], kernel_id)
    if forced:  # the broker counts a folder it made as a start under way until its grace is over
        time.sleep(SOCKET_FOLDER_GRACE + 2)


def drop_folder(site, user: str, kernel_id: str) -> bool:
    """A kernel's socket folder gone, as its server removes it (remove_socket_folder), else by force: whether
    force was needed."""
    site.ask(user, "remove_socket_folder", kernel_id=kernel_id)
    folder = kernel_folder(site, user, kernel_id)
    if os.path.lexists(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return True
    return False


def our_leftovers(site) -> dict[str, Any]:
    return {
        "containers": [c["kernel_id"] for c in site.containers() if ours(c["kernel_id"])],
        "socket_folders": [f for f in site.socket_folders() if ours(f.split("/", 1)[1])],
        "leases": re.findall(r"(?:race|hostile)-[0-9a-z-]+", site.lease_text()),
    }


@pytest.fixture(autouse=True)
def tidy(clean_site):
    """After each test: nothing of this module's kernels left (a failed test included)."""
    yield
    clean_site.wait_broker()
    remove_ours(clean_site)
    wait_until(lambda: not any(our_leftovers(clean_site).values()), 30, "this module's kernels all gone")


@pytest.fixture
def root_file(clean_site):
    """A file only root may read or change (0600), in a root-owned folder: what alice tries to make hers."""
    path = clean_site.root / f"victim-{secrets.token_hex(4)}"
    path.write_text("root's own\n")
    path.chmod(0o600)
    yield path
    path.unlink(missing_ok=True)


def roots_alone(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISREG(info.st_mode) and (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)


@pytest.fixture
def secret(clean_site):
    """A root-only folder (0700) with a marker file in it: what alice tries to get mounted into her kernel."""
    folder = clean_site.root / f"hostile-secret-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    marker = folder / f"marker-{secrets.token_hex(4)}"
    marker.write_text("root's secret\n")
    yield folder, marker.name
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def alice_root(clean_site):
    """A folder of alice's in her home (what her server's root folder is): she may rename it and link it away."""
    alice = clean_site.users["alice"]
    root = Path(alice.home) / f"hostile-root-{secrets.token_hex(4)}"
    done = as_user("alice", ["mkdir", "-m", "0755", str(root)])
    assert done.returncode == 0, done.stderr
    yield root
    if root.is_symlink():
        root.unlink()
    for path in (root, Path(f"{root}.moved")):
        shutil.rmtree(path, ignore_errors=True)


def saw_secret(seen: str, secret_folder: Path, marker: str) -> bool:
    """Whether the secret's contents are in the container: its marker listed at the root folder's path, or a mount
    whose source (mountinfo's 4th field) is the secret folder. Where a mount point is does not count: Docker
    resolves a mount's destination inside the container, through the user's own links, onto the user's own
    folder."""
    listing, _, mountinfo = seen.partition(MOUNTS)
    sources = [line.split()[3] for line in mountinfo.splitlines() if len(line.split()) > 4]
    return marker in listing or any(secret_folder.name in source for source in sources)


# -- 1. socket folders: root's down to the user's own kernel folder ---------------------------------------------------
def test_socket_folders_are_roots_except_the_users_own_kernel_folder(clean_site):
    site, alice = clean_site, clean_site.users["alice"]
    kernel_id = new_id()
    answer = site.ask("alice", "socket_folder", kernel_id=kernel_id)
    assert "result" in answer, answer
    folder = kernel_folder(site, "alice", kernel_id)
    assert answer["result"]["path"] == str(folder), answer
    for path, owner, mode in ((sockets(site), 0, 0o711), (folder.parent, 0, 0o711), (folder, alice.uid, 0o700)):
        info = os.lstat(path)
        assert stat.S_ISDIR(info.st_mode), path
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (owner, mode), (str(path), info.st_uid, oct(info.st_mode))
    # alice uses her kernel folder, and can neither list who has kernels nor move her kernel folder away
    probe = (
        "import os, sys\n"
        "folder = sys.argv[1]\n"
        "for what, call in (\n"
        "    ('list sockets', lambda: os.listdir(os.path.dirname(os.path.dirname(folder)))),\n"
        "    ('list her folder', lambda: os.listdir(os.path.dirname(folder))),\n"
        "    ('rename', lambda: os.rename(folder, folder + '-moved')),\n"
        "    ('rmdir', lambda: os.rmdir(folder)),\n"
        "    ('write inside', lambda: open(os.path.join(folder, 'x'), 'w').close()),\n"
        "):\n"
        "    try:\n"
        "        call()\n"
        "        print(what, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(what, 'refused')\n"
    )
    done = as_user("alice", ["/usr/bin/python3", "-c", probe, str(folder)])
    assert done.stdout.splitlines() == [
        "list sockets refused",
        "list her folder refused",
        "rename refused",
        "rmdir refused",
        "write inside allowed",
    ], (done.stdout, done.stderr)


def test_a_folder_swapped_for_a_link_while_the_broker_makes_it_gives_no_file_away(clean_site, helpers, root_file):
    """alice replaces her fresh kernel folder with a link to a root-only file while the broker is between making
    the folder and giving it to her (the seam holds it there)."""
    site = clean_site
    delay = race_delay(site)
    folder = kernel_folder(site, "alice", new_id("race"))
    out = helpers("alice", "swap-folder", site.socket, str(folder), str(root_file)).line(timeout=delay + 60)
    assert roots_alone(root_file), f"alice's swap made root's file hers: {out}"
    assert out["rmdir"] != "done", f"alice could remove the kernel folder the broker was making: {out}"
    if "result" in (out["answer"] or {}):  # she lost the race: her folder is a plain folder of hers
        info = os.lstat(folder)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == site.users["alice"].uid, out
    else:
        assert refused_4xx(out["answer"]), out


def test_racing_socket_folder_with_links_never_wins(clean_site, helpers, root_file):
    site = clean_site
    folder = kernel_folder(site, "alice", new_id())
    out = helpers("alice", "race-folder", site.socket, str(folder), str(root_file), str(PLAIN_RACE))
    result = out.line(timeout=PLAIN_RACE + 60)
    assert not result["won"] and roots_alone(root_file), f"a plain race made root's file alice's: {result}"
    assert "500" not in result["answers"], result
    wrong = bob_is_served(site)
    assert not wrong, wrong


# -- 2. the folders a kernel mounts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("swap_at", [0.5, 1.5])
def test_a_root_folder_swapped_for_a_link_during_a_start_is_not_mounted(
    clean_site, helpers, secret, alice_root, swap_at
):
    """alice starts a kernel with her folder as its root and, while the broker is between checking it and creating
    the container, renames the folder away and links a root-only folder in its place. When exactly the broker
    checks within the start is its own business: the swap comes half-way through the seam's delay, and once more
    one and a half delays in (where the socket folder's own delay comes first)."""
    site, (secret_folder, marker) = clean_site, secret
    delay = race_delay(site)
    kernel_id = new_id("race")
    spec = {
        "socket": site.socket,
        "kernel_id": kernel_id,
        "environment": "cpu",
        "root_dir": str(alice_root),
        "cwd": site.users["alice"].home,  # a kernel that still runs if the race is won: its mounts can be looked at
        "swap": {"after": swap_at * delay, "secret": str(secret_folder)},
    }
    helper = helpers("alice", "kernel", json.dumps(spec))
    out = helper.line(timeout=3 * delay + 120)
    assert out["folder"] and out["swapped"], out
    answer = out["answer"] or {}
    if "result" in answer:
        container_id = answer["result"]["container_id"]
        seen = look_inside(container_id, str(alice_root))
        assert seen is not None, f"alice's kernel does not run: {container_logs(container_id)}"
        assert not saw_secret(seen, secret_folder, marker), f"the root-only folder is in alice's kernel:\n{seen}"
        site.ask("alice", "remove", container_id=container_id)
    else:  # refused: by the broker (4xx), or by Docker meeting alice's link where the mount goes (503)
        assert status_of(answer) in range(400, 500) or status_of(answer) == 503, out
        traces = kernel_traces(site, kernel_id)
        assert not traces["containers"] and not traces["leased"], f"the refused start left {traces}"
    helper.finish()


def test_racing_a_start_with_links_never_mounts_a_root_folder(clean_site, helpers, secret, alice_root):
    site, (secret_folder, marker) = clean_site, secret
    spec = {
        "socket": site.socket,
        "root_dir": str(alice_root),
        "cwd": site.users["alice"].home,
        "secret": str(secret_folder),
        "seconds": PLAIN_RACE,
        "prefix": new_id(),
        "environment": "cpu",
    }
    helper = helpers("alice", "race-start", json.dumps(spec))
    started, refused, won = 0, 0, []
    deadline = time.monotonic() + PLAIN_RACE + 180
    while True:
        out = helper.line(timeout=max(1.0, deadline - time.monotonic()))
        if "done" in out:
            break
        answer = out["answer"] or {}
        if "result" in answer:
            started += 1
            container_id = answer["result"]["container_id"]
            seen = look_inside(container_id, str(alice_root))
            if seen is not None and saw_secret(seen, secret_folder, marker):
                won.append(out["kernel_id"])
            site.ask("alice", "remove", container_id=container_id)
        else:
            refused += 1  # by the broker, or by Docker meeting alice's link where the mount goes (503)
            assert status_of(answer) != 500, out
        if out["folder"]:
            drop_folder(site, "alice", out["kernel_id"])
        helper.tell()
    assert not won, f"{len(won)} of {started} kernels started in the race had the root-only folder mounted"
    assert started + refused > 0


# -- 3. files of the user's that root reads ---------------------------------------------------------------------------
HOSTILE_FILES = {
    "fifo": "os.mkfifo(path, 0o600)",
    "sparse-1GiB": "f = open(path, 'w'); f.truncate(1 << 30); f.close()",
    "link-to-dev-zero": "os.symlink('/dev/zero', path)",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_FILES))
def test_a_hostile_connection_file_does_not_stall_the_broker(clean_site, kind):
    """alice's GPU kernel's connection.json replaced by something that never ends, or is huge; the broker (restarted,
    so that it reads every GPU kernel's file again) goes on serving bob, in bounded memory."""
    site = clean_site
    alice = site.users["alice"]
    r = site.start_kernel("alice", "gpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    kernel_id = r.json()["id"]
    path = kernel_folder(site, "alice", kernel_id) / "connection.json"
    saved = path.read_bytes()
    baseline = rss(site.broker_pid())
    limit = baseline + 100 * MIB
    peak, broken, stop = [0], threading.Event(), threading.Event()

    def restore() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.write_bytes(saved)
        os.chown(path, alice.uid, alice.gid)
        path.chmod(0o600)

    def watch(pid: int) -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss(pid))
            if peak[0] > baseline + 1024 * MIB and not broken.is_set():  # the host's memory: stop it here
                broken.set()
                restore()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    watcher = None
    try:
        code = f"import os, sys\npath = sys.argv[1]\nos.unlink(path)\n{HOSTILE_FILES[kind]}\n"
        done = as_user("alice", ["/usr/bin/python3", "-c", code, str(path)])
        assert done.returncode == 0, done.stderr
        old = site.kill_broker(signal.SIGKILL)
        pid = wait_until(lambda: (p := site.broker_pid()) != old and Path(f"/proc/{p}").exists() and p, 30, "restart")
        watcher = threading.Thread(target=watch, args=(pid,), daemon=True)
        watcher.start()
        # once the new broker serves (it reads the connection files from then on), and has looked at its images once
        for op in ("hello", "environments"):
            wait_until(lambda op=op: "result" in (timed_ask(site, "bob", op)[1] or {}), 30, f"the new broker's {op}")
        wrong: list[str] = []
        watch_until = time.monotonic() + 8
        while time.monotonic() < watch_until and not wrong and not broken.is_set():
            wrong = bob_is_served(site)
        stop.set()
        watcher.join(5)
        assert not wrong, f"with a {kind} as alice's connection.json: {wrong}"
        grew = f"from {baseline / MIB:.0f} to {peak[0] / MIB:.0f} MB"
        assert peak[0] <= limit, f"with a {kind} as alice's connection.json, the broker's memory went {grew}"
        assert not broken.is_set()
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(5)
        restore()
        if broken.is_set() or "result" not in (timed_ask(site, "alice", "hello")[1] or {}):
            site.kill_broker(signal.SIGKILL)
        site.wait_broker()
        site.shutdown_kernel("alice", kernel_id)


# -- 4. keep_gpus: never the caller's word alone -----------------------------------------------------------------------
def gpu_uuids(site) -> list[str]:
    uuids = [g["uuid"] for g in site.ask("alice", "gpus")["result"]]
    assert len(uuids) == 2, uuids
    return uuids


def start_as(helpers, site, user: str, environment: str, **args) -> tuple[Helper, dict[str, Any]]:
    """A kernel started on the wire as ``user``'s server would (the helper stays as its server); the answer."""
    spec = {
        "socket": site.socket,
        "kernel_id": args.pop("kernel_id", new_id()),
        "environment": environment,
        "root_dir": site.users[user].home,
        "args": args,
    }
    helper = helpers(user, "kernel", json.dumps(spec))
    out = helper.line(timeout=120)
    return helper, out["answer"] or {}


@pytest.mark.parametrize("environment", ["gpu", "pair"])
def test_keep_gpus_gives_no_more_gpus_than_the_policy(clean_site, helpers, environment):
    """alice may hold one GPU; naming both in keep_gpus does not get her two."""
    site = clean_site
    _, answer = start_as(helpers, site, "alice", environment, keep_gpus=gpu_uuids(site))
    if "result" in answer:
        gpus = answer["result"]["gpus"]
        assert len(gpus) <= 1, f"alice (max_gpus 1) got {len(gpus)} GPUs by naming them: {gpus}"
    else:
        assert refused_4xx(answer), answer
    held = [g for k in site.ask("alice", "kernels")["result"] for g in k["gpus"]]
    assert len(held) <= 1, held


def test_keep_gpus_cannot_take_another_users_gpu(clean_site, helpers):
    site = clean_site
    r = site.start_kernel("bob", "gpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    bobs = r.json()["id"]
    try:
        (lease,) = [k for k in site.ask("bob", "kernels")["result"] if k["kernel_id"] == bobs]
        (gpu,) = lease["gpus"]
        _, answer = start_as(helpers, site, "alice", "gpu", keep_gpus=[gpu])
        assert refused_4xx(answer), f"alice named bob's GPU and got: {answer}"
        # nor by restarting under bob's kernel id
        _, answer = start_as(helpers, site, "alice", "gpu", kernel_id=bobs, keep_gpus=[gpu])
        assert refused_4xx(answer), f"alice used bob's kernel id and GPU and got: {answer}"
        (after,) = [k for k in site.ask("bob", "kernels")["result"] if k["kernel_id"] == bobs]
        assert after["gpus"] == [gpu] and after["container_id"] == lease["container_id"], (lease, after)
    finally:
        site.shutdown_kernel("bob", bobs)


def test_a_restarted_kernel_keeps_its_gpu_and_another_kernel_cannot_name_it(clean_site, helpers):
    """keep is honoured for what it is for: the caller's own kernel, restarted, gets the GPU it had."""
    site = clean_site
    r = site.start_kernel("alice", "gpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    kernel_id = r.json()["id"]
    try:
        (before,) = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel_id]
        (lease,) = [k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == kernel_id]
        r = site.server("alice", "POST", f"api/kernels/{kernel_id}/restart", json={}, timeout=90)
        assert r.status_code == 200, (r.status_code, r.text[:500])
        (after,) = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel_id]
        assert after["gpus"] == before["gpus"], (before, after)
        assert site.execute("alice", kernel_id, "print('back')").strip() == "back"
        # her second kernel naming that GPU: refused (her first holds it, and she may hold one)
        _, answer = start_as(helpers, site, "alice", "gpu", keep_gpus=lease["gpus"])
        assert refused_4xx(answer), answer
    finally:
        site.shutdown_kernel("alice", kernel_id)


# -- 5. connections to the broker's socket ----------------------------------------------------------------------------
def test_a_user_holding_connections_does_not_lock_everyone_else_out(clean_site, helpers):
    """alice holds more idle connections than the broker has files (its limit: 1024), reopening each one closed."""
    site, held = clean_site, 1200
    offset, pid = log_size(site), site.broker_pid()
    helper = helpers("alice", "hold-unix", site.socket, str(held), "20")
    ready = helper.line(timeout=60)
    most_files, wrong = 0, []
    while helper.proc.poll() is None and not helper.buffer:
        most_files = max(most_files, open_files(pid))
        wrong += bob_is_served(site)
        if helper.selector.select(0.5):
            break
    summary = helper.line(timeout=60)
    lines = log_since(site, offset)
    emfile = [line for line in lines if "EMFILE" in line or "Too many open files" in line]
    assert not wrong, f"while alice held {ready['ready']} connections: {wrong[:5]}"
    assert len(emfile) <= 3, f"{len(emfile)} EMFILE lines in the log, e.g. {emfile[:3]}"
    assert not [s for s in summary["answered"] if s.startswith("5")], summary
    assert summary["first_refusal"] is not None, f"the broker kept all of alice's {held} idle connections: {summary}"
    assert most_files < 1000, f"the broker had {most_files} files open (its limit: 1024)"
    assert site.broker_pid() == pid and site.broker_answers()


# -- 6. and 7. the metrics port ----------------------------------------------------------------------------------------
def metrics_port(site) -> int:
    return int(site.metrics_url.split("/")[2].rsplit(":", 1)[1])


def scrape(site) -> int | None:
    try:
        token = site.metrics_token.read_text().strip()
        return requests.get(site.metrics_url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code
    except (OSError, requests.RequestException):
        return None


def test_idle_connections_to_the_metrics_port_are_closed_and_kernels_still_start(clean_site, helpers):
    site, held = clean_site, 300
    helper = helpers("alice", "hold-tcp", "127.0.0.1", str(metrics_port(site)), str(held), "30")
    ready = helper.line(timeout=60)
    assert ready["ready"] == held, ready
    r = site.start_kernel("bob", "cpu", timeout=60)
    assert r.status_code == 201, (r.status_code, r.text[:500])
    site.shutdown_kernel("bob", r.json()["id"])
    summary = helper.line(timeout=60)
    assert summary["still_open"] == 0, f"idle metrics connections still open after 30 s: {summary}"
    assert summary["latest_close"] <= 20, f"idle metrics connections were closed only after {summary} s"
    assert scrape(site) == 200


def test_a_user_on_the_metrics_port_does_not_stop_the_broker(clean_site, helpers):
    """alice listens on the metrics port while the broker is down; it starts anyway, and takes the port once free."""
    site, port = clean_site, metrics_port(clean_site)
    offset = log_size(site)
    listener = None
    site.hold.touch()
    try:
        site.kill_broker(signal.SIGKILL)
        listener = helpers("alice", "listen", "127.0.0.1", str(port))
        assert listener.line(timeout=30)["ready"] is True
        site.hold.unlink()
        site.wait_broker(60)  # serving kernels, whoever listens on its metrics port
        pid = site.broker_pid()
        assert not bob_is_served(site)
        time.sleep(3)
        assert site.broker_pid() == pid and site.broker_answers(), "the broker did not stay up"
        said = [line for line in log_since(site, offset) if str(port) in line]
        assert said, f"the broker's log does not say that port {port} is taken"
        listener.finish()
        wait_until(lambda: scrape(site) == 200, 60, "/metrics answered on its port once alice's listener went")
        assert site.broker_pid() == pid
    finally:
        site.hold.unlink(missing_ok=True)
        if listener is not None:
            listener.stop()
        site.wait_broker(60)


# -- 8. malformed requests: 4xx, never 500 ----------------------------------------------------------------------------
def start_line(site, **override) -> bytes:
    alice = site.users["alice"]
    kernel_id = new_id()
    folder = kernel_folder(site, "alice", kernel_id)
    args = {
        "kernel_id": kernel_id,
        "environment": "cpu",
        "root_dir": alice.home,
        "cwd": alice.home,
        "socket_dir": str(folder),
        "connection_file": f"{folder}/connection.json",
        "keep_gpus": [],
        "server_env": {},
    }
    args.update(override)
    return json.dumps({"op": "start_kernel", "args": args}).encode() + b"\n"


MALFORMED = {
    "deep-nesting-100000": lambda site: b"[" * 100_000 + b"\n",
    "deep-nesting-under-64KiB": lambda site: b"[" * 60_000 + b"\n",
    "deep-args": lambda site: b'{"op": "hello", "args": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001 + b"\n",
    "nul-in-root-dir": lambda site: start_line(site, root_dir=site.users["alice"].home + "\0/x"),
    "nul-in-cwd": lambda site: start_line(site, cwd=site.users["alice"].home + "\0/x"),
    "nul-in-connection-file": lambda site: start_line(site, connection_file="/x\0/connection.json"),
    "server-env-list": lambda site: start_line(site, server_env=["JPY_SESSION_NAME=x"]),
    "server-env-string": lambda site: start_line(site, server_env="JPY_SESSION_NAME=x"),
    "keep-gpus-int": lambda site: start_line(site, keep_gpus=1),
    "args-a-string": lambda site: b'{"op": "hello", "args": "cpu"}\n',
    "args-a-list": lambda site: b'{"op": "hello", "args": []}\n',
    "op-a-number": lambda site: b'{"op": 1, "args": {}}\n',
    "op-null": lambda site: b'{"op": null, "args": {}}\n',
    "line-over-64KiB": lambda site: b'{"op": "hello", "args": {"x": "' + b"a" * 70_000 + b'"}}\n',
    "not-utf-8": lambda site: b'{"op": "hello", "args": {"x": "\xff\xfe"}}\n',
    "kernel-id-with-newline": lambda site: b'{"op": "socket_folder", "args": {"kernel_id": "hostile-x\\n"}}\n',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_request_is_answered_4xx(clean_site, case):
    site = clean_site
    answers = send_raw(site, "alice", MALFORMED[case](site))
    final = next((a for a in reversed(answers) if "error" in a or "result" in a), None)
    assert refused_4xx(final), f"{case}: {answers[-3:]}"
    assert site.broker_answers()


# -- 9. a refused start makes nothing ---------------------------------------------------------------------------------
REFUSED_STARTS = {
    "connection-file-outside": lambda site: {"connection_file": f"{site.users['alice'].home}/connection.json"},
    "environment-outside-policy": lambda site: {"environment": "power"},
    "unknown-environment": lambda site: {"environment": "no-such-environment"},
    "root-not-hers": lambda site: {"root_dir": "/root", "cwd": "/root"},
}


@pytest.mark.parametrize("case", sorted(REFUSED_STARTS))
def test_a_refused_start_leaves_no_folder_container_or_lease(clean_site, case):
    site, alice = clean_site, clean_site.users["alice"]
    kernel_id = new_id()
    folder = kernel_folder(site, "alice", kernel_id)
    args = {
        "kernel_id": kernel_id,
        "environment": "cpu",
        "root_dir": alice.home,
        "cwd": alice.home,
        "socket_dir": str(folder),
        "connection_file": f"{folder}/connection.json",
        "keep_gpus": [],
        "server_env": {},
        **REFUSED_STARTS[case](site),
    }
    answer = site.ask("alice", "start_kernel", **args)
    assert refused_4xx(answer), answer
    assert not os.path.lexists(folder), f"the refused start made {folder}"
    assert kernel_traces(site, kernel_id) == NO_TRACES


# -- 10. the log is not the user's to fill -----------------------------------------------------------------------------
def test_a_flood_of_failing_requests_adds_a_few_lines_to_the_log(clean_site):
    site = clean_site
    offset = log_size(site)
    done = as_user("alice", ["/usr/bin/python3", str(HOSTILE), "flood", site.socket, "500"], timeout=300)
    assert done.returncode == 0, done.stderr
    statuses = json.loads(done.stdout.splitlines()[-1])["statuses"]
    assert not [s for s in statuses if not s.isdigit() or not 400 <= int(s) < 500], statuses
    time.sleep(1)  # what the broker wrote last
    lines = log_since(site, offset)
    broker = [line for line in lines if re.match(r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)]
    tracebacks = [line for line in lines if "Traceback" in line]
    assert not tracebacks, f"{len(tracebacks)} tracebacks in the log for alice's 500 refusals"
    assert len(broker) <= 40, f"alice's 500 refusals wrote {len(broker)} broker log lines, e.g. {broker[:5]}"
    assert not bob_is_served(site)


# -- 12. socket folders without a lease: bounded, and swept ------------------------------------------------------------
def test_socket_folders_without_a_lease_are_bounded_and_swept(clean_site):
    site = clean_site
    r = site.start_kernel("alice", "cpu")  # a running kernel's folder: never swept
    assert r.status_code == 201, (r.status_code, r.text[:500])
    running = r.json()["id"]
    try:
        cap = PENDING_SOCKET_FOLDERS
        ids = [new_id() for _ in range(cap + 1)]
        answers = [site.ask("alice", "socket_folder", kernel_id=kernel_id) for kernel_id in ids]
        assert all("result" in a for a in answers[:cap]), answers[:cap]
        assert status_of(answers[cap]) == 429, answers[cap]
        assert not os.path.lexists(kernel_folder(site, "alice", ids[cap]))
        made = [kernel_folder(site, "alice", kernel_id) for kernel_id in ids[:cap]]
        wait_until(
            lambda: not any(os.path.lexists(p) for p in made),
            SOCKET_FOLDER_GRACE + 40,
            "alice's folders without a kernel swept",
        )
        assert "result" in site.ask("alice", "socket_folder", kernel_id=new_id())  # room again
        assert kernel_folder(site, "alice", running).is_dir(), "the running kernel's socket folder was swept"
        assert site.execute("alice", running, "print('here')").strip() == "here"
    finally:
        site.shutdown_kernel("alice", running)


# -- 13. what one user can learn of the others -------------------------------------------------------------------------
@contextlib.contextmanager
def second_broker(site, tmp_path: Path, extra: str):
    """A broker of this test's own (NVML replayed as for the site's), on a socket under the site's folder."""
    folder = site.root / f"hostile-broker-{secrets.token_hex(4)}"
    socket_path = str(folder / "broker.sock")
    config = tmp_path / "broker_config.py"
    write_broker_config(config, socket_path, extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GPUENV_"))}
    env.update(GPUENV_TEST_RECORDING="h100x2", PYTHONUNBUFFERED="1")
    log = tmp_path / "broker.log"
    servers: list[int] = []  # the pids the test's kernels name as their server: their network holders go too
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "broker_fake_nvml.py"), "--run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            answers = site.wire("alice", {"op": "hello", "args": {}}, socket=socket_path)
            return bool(answers) and "result" in answers[-1]

        wait_until(up, 60, "the second broker's hello")
        yield socket_path, servers
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        client = docker.from_env(timeout=30)
        for c in client.api.containers(all=True, filters={"label": "io.jupyter.gpuenv.broker"}):
            if (c.get("Labels") or {}).get("io.jupyter.gpuenv.broker") == socket_path:
                client.api.remove_container(c["Id"], force=True)
        for c in client.api.containers(all=True, filters={"label": "io.jupyter.gpuenv.netns"}):
            if (c.get("Labels") or {}).get("io.jupyter.gpuenv.server-pid") in {str(pid) for pid in servers}:
                client.api.remove_container(c["Id"], force=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_with_anonymous_other_users_holders_shows_only_the_callers_containers(clean_site, helpers, tmp_path):
    site = clean_site
    with second_broker(site, tmp_path, 'c.Broker.show_other_users = "anonymous"\n') as (socket_path, servers):
        started = {}
        for user in ("alice", "bob"):
            home = site.users[user].home
            spec = {"socket": socket_path, "kernel_id": new_id(), "environment": "cpu", "root_dir": home}
            helper = helpers(user, "kernel", json.dumps(spec))
            servers.append(helper.proc.pid)
            out = helper.line(timeout=120)
            assert "result" in (out["answer"] or {}), out
            started[user] = out["answer"]["result"]["container_id"]
        answers = site.wire("alice", {"op": "holders", "args": {}}, socket=socket_path)
        holders = json.dumps(answers[-1])
        assert "result" in answers[-1], answers
        assert started["alice"][:12] in holders, holders
        assert started["bob"][:12] not in holders, f"alice sees bob's container: {holders}"
        assert "bob" not in holders, holders
        for user, container_id in started.items():
            site.wire(user, {"op": "remove", "args": {"container_id": container_id}}, socket=socket_path)
    # and no user can list who has kernels on the site's broker
    probe = "import os, sys\ntry:\n    print(os.listdir(sys.argv[1]))\nexcept PermissionError:\n    print('refused')\n"
    done = as_user("bob", ["/usr/bin/python3", "-c", probe, str(sockets(site))])
    assert done.stdout.strip() == "refused", (done.stdout, done.stderr)


# -- 14. a server behind the broker keeps nothing in /tmp --------------------------------------------------------------
def restart_server(site, user: str, between=None) -> None:
    r = site.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), (r.status_code, r.text[:300])
    try:
        wait_until(lambda: not site.api("GET", f"/users/{user}").json()["servers"], 90, f"{user}'s server stopped")
        if between is not None:
            between()
    finally:  # whatever happened, the server runs again for the tests after this one
        r = site.api("POST", f"/users/{user}/server")
        assert r.status_code in (201, 202, 400), (r.status_code, r.text[:300])  # 400: it still runs
        wait_until(
            lambda: site.api("GET", f"/users/{user}").json()["servers"].get("", {}).get("ready"),
            150,
            f"{user}'s server ready again",
        )


def test_a_server_behind_the_broker_makes_nothing_in_tmp(clean_site):
    site, alice = clean_site, clean_site.users["alice"]
    private = Path("/tmp") / f"gpuenv-{alice.uid}"
    restart_server(site, "alice", between=lambda: shutil.rmtree(private, ignore_errors=True))
    r = site.start_kernel("alice", "gpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    kernel_id = r.json()["id"]
    try:
        for _ in range(3):
            (row,) = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel_id]
            assert row.get("park"), row  # the panel's park row for a container kernel
            assert site.server("alice", "GET", "gpuenv/api/gpus").status_code == 200
            time.sleep(1)
        assert not os.path.lexists(private), f"alice's server made {private} ({os.listdir(private)})"
    finally:
        site.shutdown_kernel("alice", kernel_id)
