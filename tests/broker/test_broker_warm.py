"""Warm kernels on a shared host (issue 23): each person's, made as their kernel would be, handed only to them.

The site's broker is restarted for this module with ``c.Broker.warm_kernels = {"cpu": 1, "gpu": 1}`` and a policy
that lets only alice and bob use "gpu" (the host has two GPUs: one warm exclusive kernel each); its configuration is
put back afterwards. Every user's server runs and announces itself, so each has a warm "cpu" kernel. The tests run
in order, on one story: alice's starts take her warm kernels, bob's his own, carol's exclusive start takes a GPU that
bob's warm kernel only soft-claimed, a killed broker leaves no warm container while alice's kernels keep running,
a policy change replaces warm kernels. The pure rules (who is eligible, the host's cap) are tested at the end.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import requests

from jupyter_gpuenv.broker import setup as broker_setup
from jupyter_gpuenv.broker import warm
from jupyter_gpuenv.broker.policy import Policy

from .conftest import ENVIRONMENTS, POLICY, wait_until

NOTEBOOK = "warm-analysis.ipynb"
WARM_POLICY = {
    **POLICY,
    "users": {
        **POLICY["users"],
        "carol": {"environments": ["cpu", "pair", "power"], "max_gpus": 2, "max_kernels": 8},
        "dave": {"environments": ["cpu"], "max_kernels": 4},
    },
}
WARM = (
    'c.Broker.warm_kernels = {"cpu": 1, "gpu": 1}\nc.Broker.max_warm_kernels = 6\n'
    'c.Broker.warm_imports = {"cpu": ["wave"]}\n'  # a module ipykernel never imports
)
STORY: dict[str, str] = {}  # what one test leaves the next: kernel and container ids


def restart_broker(site, config: str, signum: int = signal.SIGTERM) -> None:
    path = site.root / "broker_config.py"
    path.write_text(config)
    site.kill_broker(signum)
    site.wait_broker()


@pytest.fixture(scope="module")
def warm_site(clean_site):
    site = clean_site
    path = site.root / "broker_config.py"
    original = path.read_text()
    restart_broker(site, original + WARM + f"c.Broker.policy = {WARM_POLICY!r}\n")
    try:
        yield site
    finally:
        for user in site.users:  # their kernels, while the broker that knows their folders still runs
            for kernel in site.kernels(user):
                site.shutdown_kernel(user, kernel["id"])
        restart_broker(site, original)  # its stop removes every warm container


def warm_containers(site, user: str | None = None, environment: str | None = None) -> list[dict]:
    """Warm containers no start took (one that was taken keeps its warm name in its labels; its lease names it)."""
    uid = str(site.users[user].uid) if user else None
    leased = site.lease_text()
    return [
        c
        for c in site.containers()
        if c["kernel_id"].startswith("warm-")
        and c["id"] not in leased
        and c["status"] == "running"
        and (uid is None or c["uid"] == uid)
        and (environment is None or c["labels"].get("io.jupyter.gpuenv.environment") == environment)
    ]


def environment_row(site, user: str, name: str) -> dict:
    r = site.server(user, "GET", "gpuenv/api/environments")
    assert r.status_code == 200, r.text[:300]
    return next(row for row in r.json()["environments"] if row["name"] == name)


def ready(site, user: str, name: str) -> list[dict] | None:
    """``user``'s warm containers of ``name``, once the panel's row says a start would take one."""
    found = warm_containers(site, user, name)
    return found if found and environment_row(site, user, name)["warm"] >= 1 else None


def metrics(site) -> str:
    token = Path(site.metrics_token).read_text().strip()
    r = requests.get(site.metrics_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.text


def ledger_records(site) -> list[dict]:
    out = []
    for path in Path(site.usage_dir).glob("usage-*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a torn last line
                continue
    return out


def test_each_running_server_gets_warm_kernels_within_its_policy(warm_site):
    site = warm_site
    for user in site.users:
        wait_until(lambda user=user: ready(site, user, "cpu"), 120, f"{user}'s warm cpu kernel")
    for user in ("alice", "bob"):
        wait_until(lambda user=user: ready(site, user, "gpu"), 60, f"{user}'s warm gpu kernel")
    assert not warm_containers(site, "carol", "gpu") and not warm_containers(site, "dave", "gpu")  # their policy
    assert environment_row(site, "dave", "cpu")["warm"] == 1
    (mine,) = warm_containers(site, "alice", "cpu")
    folder = Path(mine["labels"]["io.jupyter.gpuenv.socket-dir"])
    info = os.stat(folder)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (site.users["alice"].uid, 0o700)
    assert folder.parent == Path(site.socket).parent / "sockets" / str(site.users["alice"].uid)
    # not anyone's kernel: no lease, nothing in the metrics' kernel series, a gauge of its own
    assert "warm-" not in site.lease_text()
    text = metrics(site)
    assert 'jupyter_gpuenv_warm_kernels{environment="cpu"} 4.0' in text
    assert "warm-" not in text


def test_a_start_takes_the_persons_warm_kernel_and_the_pool_refills(warm_site):
    site = warm_site
    (before,) = warm_containers(site, "alice", "cpu")
    r = site.start_kernel("alice", "cpu")
    assert r.status_code == 201, r.text[:500]
    kernel_id = r.json()["id"]
    (row,) = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel_id]
    assert row["container_id"] == before["id"]  # the warm container, now this kernel
    out = site.execute("alice", kernel_id, "import os, sys; print(os.getuid(), os.getcwd(), 'wave' in sys.modules)")
    assert out.split() == [str(site.users["alice"].uid), site.users["alice"].home, "True"]  # imported while warm
    (lease,) = [k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == kernel_id]
    assert (
        lease["container_id"] == before["id"]
        and lease["socket_dir"] == before["labels"]["io.jupyter.gpuenv.socket-dir"]
    )
    refilled = wait_until(lambda: ready(site, "alice", "cpu"), 60, "alice's warm cpu kernel made again")
    assert refilled[0]["id"] != before["id"]
    STORY["alice_cpu"] = kernel_id


def test_a_kernel_that_took_a_warm_one_restarts_in_the_same_folder(warm_site):
    site, kernel_id = warm_site, STORY["alice_cpu"]
    site.execute("alice", kernel_id, "x = 1")
    (before,) = [k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == kernel_id]
    r = site.server("alice", "POST", f"api/kernels/{kernel_id}/restart", timeout=90)
    assert r.status_code == 200, r.text[:500]
    (after,) = [k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == kernel_id]
    assert after["socket_dir"] == before["socket_dir"] and after["container_id"] != before["container_id"]
    assert site.execute("alice", kernel_id, "print('x' in dir())").strip() == "False"  # a fresh kernel, working


def test_a_notebook_on_a_warm_gpu_kernel_is_attributed_in_kernels_metrics_and_ledger(warm_site):
    site = warm_site
    (before,) = warm_containers(site, "alice", "gpu")
    session = {"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "gpuenv-gpu"}}
    r = site.server("alice", "POST", "api/sessions", json=session, timeout=90)
    assert r.status_code == 201, r.text[:500]
    kernel_id = r.json()["kernel"]["id"]
    (row,) = [k for k in site.gpuenv_kernels("alice") if k["kernel_id"] == kernel_id]
    assert row["container_id"] == before["id"] and len(row["gpus"]) == 1
    notebook = f"{site.users['alice'].home}/{NOTEBOOK}"  # the session's path, as the kernel's server says it
    (lease,) = [k for k in site.ask("alice", "kernels")["result"] if k["kernel_id"] == kernel_id]
    assert lease["notebook"] == notebook and len(lease["gpus"]) == 1
    assert site.execute("alice", kernel_id, "print(6 * 7)").strip() == "42"
    wait_until(lambda: f'kernel_id="{kernel_id}"' in metrics(site), 30, "alice's kernel in the broker's metrics")
    series = [line for line in metrics(site).splitlines() if f'kernel_id="{kernel_id}"' in line]
    assert series and all(f'notebook="{notebook}"' in line and 'user="alice"' in line for line in series), series

    def charged():
        mine = [r for r in ledger_records(site) if r["kernel_id"] == kernel_id]
        return mine if sum(r["gpu_seconds"] for r in mine) > 0 else None

    records = wait_until(charged, 30, "alice's GPU-seconds in the ledger under her kernel id")
    assert {r["notebook"] for r in records} == {notebook}
    assert not [r for r in ledger_records(site) if r["kernel_id"].startswith("warm-")]  # warm costs nothing
    STORY["alice_gpu"] = kernel_id


def test_bob_never_gets_alices_warm_kernel(warm_site):
    site = warm_site
    alices = {c["id"] for c in warm_containers(site, "alice")}
    # asked for from bob's own process, with alice's root folder: nothing of hers
    answer = site.ask("bob", "take_warm", kernel_id="bob-asks-for-alices", environment="cpu",
                      root_dir=site.users["alice"].home)  # fmt: skip
    assert answer == {"result": None}
    (his,) = warm_containers(site, "bob", "cpu")
    r = site.start_kernel("bob", "cpu")
    assert r.status_code == 201, r.text[:500]
    (row,) = [k for k in site.gpuenv_kernels("bob") if k["kernel_id"] == r.json()["id"]]
    assert row["container_id"] == his["id"] and row["container_id"] not in alices
    assert site.execute("bob", r.json()["id"], "import os; print(os.getuid())").strip() == str(site.users["bob"].uid)
    site.shutdown_kernel("bob", r.json()["id"])


def test_an_exclusive_start_takes_the_gpu_of_a_warm_kernel(warm_site):
    """GPU 0 is alice's kernel's; GPU 1 only bob's warm kernel's soft claim: carol's start takes it."""
    site = warm_site
    (bobs,) = warm_containers(site, "bob", "gpu")
    r = site.start_kernel("carol", "power")
    assert r.status_code == 201, r.text[:500]
    carols = r.json()["id"]
    wait_until(lambda: not warm_containers(site, "bob", "gpu"), 30, "bob's warm gpu kernel discarded")
    assert bobs["id"] not in {c["id"] for c in site.containers()}
    site.shutdown_kernel("carol", carols)
    wait_until(lambda: ready(site, "bob", "gpu"), 60, "bob's warm gpu kernel made again on the freed GPU")


def test_a_killed_broker_leaves_no_warm_container_and_taken_kernels_keep_running(warm_site):
    site = warm_site
    old = {c["id"] for c in warm_containers(site)}
    assert old
    site.kill_broker(signal.SIGKILL)  # no stop of its own: the warm kernels end with its lock, recover removes them
    site.wait_broker()
    wait_until(lambda: not old & {c["id"] for c in site.containers()}, 30, "the old broker's warm containers gone")
    for kernel_id in (STORY["alice_cpu"], STORY["alice_gpu"]):  # their lock is alice's server's, not the broker's
        assert site.execute("alice", kernel_id, "print('still here')").strip() == "still here"
        assert kernel_id in {k["kernel_id"] for k in site.ask("alice", "kernels")["result"]}
    wait_until(lambda: ready(site, "dave", "cpu"), 120, "warm kernels made again by the new broker")


def test_a_policy_change_replaces_warm_kernels(warm_site):
    site = warm_site
    wait_until(lambda: ready(site, "bob", "cpu"), 120, "bob's warm cpu kernel")
    old = {c["id"] for c in warm_containers(site)}
    policy = {**WARM_POLICY, "users": {**WARM_POLICY["users"], "bob": {"environments": ["gpu"], "max_kernels": 4}}}
    path = site.root / "broker_config.py"
    restart_broker(site, path.read_text() + f"c.Broker.policy = {policy!r}\n")
    wait_until(lambda: ready(site, "alice", "cpu"), 120, "alice's warm cpu kernel under the new policy")
    assert not old & {c["id"] for c in site.containers()}
    assert not warm_containers(site, "bob", "cpu") and environment_row(site, "bob", "gpu")["warm"] in (0, 1)


# -- the rules, without the site ---------------------------------------------------------------------------------
def test_a_person_is_eligible_while_the_server_that_announced_runs():
    starts = {100: 5000, 200: 6000}
    start_of = lambda pid: starts.get(pid, 0)  # noqa: E731 - /proc's start time, as the broker reads it
    presences: dict[str, warm.Presence] = {}

    def announce(user: str, pid: int, root: str, now: float) -> bool:
        return warm.announce(presences, warm.Presence(user, pid, start_of(pid), root, None), start_of, now)

    assert announce("alice", 100, "/home/alice", 0.0) and announce("bob", 200, "/home/bob", 0.0)
    # a second server of alice's while the first runs: the first keeps the pool
    starts[300] = 7000
    assert not announce("alice", 300, "/srv/alice", 60.0)
    assert set(warm.live(presences, start_of)) == {"alice", "bob"}
    starts[100] = 9999  # alice's server ended and its pid was reused by another process
    assert set(warm.live(presences, start_of)) == {"bob"}
    del starts[200]  # bob's server is gone
    assert warm.live(presences, start_of) == {}
    assert announce("alice", 300, "/srv/alice", 60.0)  # alice's second server now keeps hers
    assert set(warm.live(presences, start_of)) == {"alice"} and presences["alice"].root_dir == "/srv/alice"
    # processes that announce and end, one after another: heard at most every QUIET seconds
    del starts[300]
    starts[400] = 8000
    assert not announce("alice", 400, "/home/alice", 60.0 + warm.QUIET / 2)
    assert announce("alice", 400, "/home/alice", 60.0 + warm.QUIET)
    assert announce("alice", 400, "/home/alice", 500.0) and presences["alice"].at == 60.0 + warm.QUIET  # the same


def test_the_hosts_cap_gives_everyone_one_before_anyone_two():
    wants = {"alice": [("cpu", 2), ("gpu", 1)], "bob": [("cpu", 1)], "carol": [("gpu", 3)]}
    assert warm.shares(wants, 3) == {("alice", "cpu"): 1, ("bob", "cpu"): 1, ("carol", "gpu"): 1}
    assert warm.shares(wants, 5) == {("alice", "cpu"): 2, ("bob", "cpu"): 1, ("carol", "gpu"): 2}
    assert warm.shares(wants, 100) == {("alice", "cpu"): 2, ("alice", "gpu"): 1, ("bob", "cpu"): 1, ("carol", "gpu"): 3}
    assert warm.shares(wants, 0) == {}


def test_only_what_the_policy_allows_is_kept_warm():
    envs = {name: object() for name in ENVIRONMENTS}
    policy = Policy.parse(WARM_POLICY)
    asked = {"cpu": 1, "gpu": 2, "power": 1, "gone": 1}
    assert warm.wanted(asked, envs, policy.rule_for("dave", [])) == [("cpu", 1)]
    assert warm.wanted(asked, envs, policy.rule_for("alice", [])) == [("cpu", 1), ("gpu", 2)]
    assert warm.wanted(asked, envs, Policy.parse({"default": {"max_kernels": 0}}).rule_for("eve", [])) == []


def test_warm_settings_are_checked_with_the_configuration(tmp_path):
    from traitlets.config import Config

    config = Config({"Broker": {"environments": {"cpu": ENVIRONMENTS["cpu"]},
                                "warm_kernels": {"cpu": 1, "gpu": 1, "bad": -1},
                                "warm_imports": {"cpu": ["torch", "os; rm"]}, "max_warm_kernels": -2}})  # fmt: skip
    problems = broker_setup.check(config)
    assert any("c.Broker.warm_kernels names the environment 'gpu'" in p for p in problems), problems
    assert any("warm_kernels['bad'] must be a whole number" in p for p in problems), problems
    assert any("warm_imports['cpu'] must be a list of module names" in p for p in problems), problems
    assert any("c.Broker.max_warm_kernels must be 0 or more" in p for p in problems), problems


def test_the_client_lock_passes_to_the_server_without_a_moment_free(tmp_path):
    """The broker's answer to take_warm carries the open lock (SCM_RIGHTS); the kernel's watcher (a shared lock
    request) must find it held before, during and after, until the server closes it."""
    import asyncio
    import fcntl

    from jupyter_gpuenv.broker.daemon import BrokerDaemon
    from jupyter_gpuenv.engines.broker import BrokerClient

    lock_path, socket_path = tmp_path / "client.lock", str(tmp_path / "b.sock")
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    sent: list[bool] = []
    answer = {"name": "warm-1", "socket_dir": str(tmp_path), "container_id": "c1", "gpu_mode": "none", "gpus": []}

    def free() -> bool:  # what the watcher in the container would get
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    async def main():
        async def handle(reader, writer):
            await reader.readline()
            writer.write(b'{"progress": {"working": "take_warm"}}\n')
            await BrokerDaemon._send_lock(None, writer, warm.HandedLock(answer, held))
            sent.append(free())  # the broker's descriptor closed, the server's not received yet: in flight
            writer.close()

        server = await asyncio.start_unix_server(handle, socket_path)
        async with server:
            client = BrokerClient(socket_path, 5.0)
            return await asyncio.get_running_loop().run_in_executor(None, client._take_warm, {})

    got, fd = asyncio.run(main())
    assert got == answer and fd is not None and sent == [False]
    assert not free()  # held by the server's descriptor now
    os.close(fd)
    assert free()  # and by nothing else: the broker's own descriptor was closed after sending


def test_a_changed_image_definition_or_policy_replaces_warm_kernels():
    """One round of the pool against a fake engine: what changed goes, what is missing is made."""
    import asyncio
    import types

    from jupyter_gpuenv.broker.leases import LeaseBook
    from jupyter_gpuenv.containers.warm import definition
    from jupyter_gpuenv.environments.definition import parse_environment
    from jupyter_gpuenv.environments.preflight import ImageFacts

    removed: list[str] = []

    class Engine:
        image_id = "sha256:one"

        async def image_facts(self, image, python=None, env=None):
            return ImageFacts(True, self.image_id)

        async def state(self, container_id):
            return types.SimpleNamespace(running=True)

        async def remove(self, container_id):
            removed.append(container_id)

    envs = {name: parse_environment(name, raw, "test") for name, raw in ENVIRONMENTS.items()}
    daemon = types.SimpleNamespace(
        settings=types.SimpleNamespace(warm_kernels={"cpu": 1}, max_warm_kernels=4, identify="peer"),
        environments=envs,
        policy=Policy.parse(WARM_POLICY),
        book=LeaseBook("/nonexistent/leases.json"),
        docker=Engine(),
        gpus_wanted=lambda env: 0,
    )
    pool = warm.BrokerWarm(daemon)
    made: list[tuple[str, str]] = []

    async def make(presence, env, image_id):
        made.append((presence.user, env.name))
        return warm.WarmContainer(f"warm-{len(made)}", presence.user, env.name, definition(env), image_id,
                                  presence.root_dir, f"/nonexistent/{len(made)}", f"c{len(made)}", "none")  # fmt: skip

    pool._make = make
    caller = types.SimpleNamespace(groups=())
    pool.presences["alice"] = warm.Presence("alice", 1, 10, "/home/alice", caller)
    pool.presences["bob"] = warm.Presence("bob", 2, 20, "/home/bob", caller)
    alive = {1: 10, 2: 20}.get

    def round_of() -> None:
        made.clear()
        removed.clear()
        asyncio.run(pool.refill(lambda pid: alive(pid, 0)))

    round_of()
    assert sorted(made) == [("alice", "cpu"), ("bob", "cpu")] and removed == []
    round_of()
    assert made == [] and removed == []  # nothing changed: nothing made, nothing removed
    daemon.docker.image_id = "sha256:two"  # the image was pulled again under its tag
    round_of()
    assert sorted(removed) == ["c1", "c2"] and sorted(made) == [("alice", "cpu"), ("bob", "cpu")]
    daemon.policy = Policy.parse({**WARM_POLICY, "users": {"bob": {"environments": ["gpu"]}}})  # bob: no cpu now
    round_of()
    assert [w.user for w in pool.kernels] == ["alice"] and made == [] and len(removed) == 1
    daemon.environments = {**envs, "cpu": parse_environment("cpu", {**ENVIRONMENTS["cpu"], "memory": "1g"}, "test")}
    round_of()
    assert len(removed) == 1 and made == [("alice", "cpu")]  # a changed definition: made again as it is now
    alive = {2: 20}.get  # alice's server is gone
    round_of()
    assert pool.kernels == [] and len(removed) == 1 and made == []
