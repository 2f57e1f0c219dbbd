"""Two people, two GPUs, one broker: each gets a GPU of their own, a third is told who holds them, nobody can
reach the Docker engine or another person's kernel, and a restarted broker forgets none of it.

alice and bob each start an ``exclusive:1`` kernel through their own server (their hub token, the hub's
proxy), as Lab does; the kernels stay up for the whole module.
"""

from __future__ import annotations

import contextlib
import grp
import json
import signal
from pathlib import Path

import docker
import pytest

from .conftest import DOCKER_SOCKET, KERNEL_LABEL, USERS, as_user


@pytest.fixture(scope="module")
def kernels(clean_site):
    """alice's and bob's ``exclusive:1`` kernels: {user: kernel id}."""
    started = {}
    for user in ("alice", "bob"):
        r = clean_site.start_kernel(user, "gpu")
        assert r.status_code == 201, (user, r.status_code, r.text[:500])
        started[user] = r.json()["id"]
    return started


def container_of(kernel_id: str) -> dict:
    found = docker.from_env(timeout=30).api.containers(filters={"label": f"{KERNEL_LABEL}={kernel_id}"})
    assert len(found) == 1, f"kernel {kernel_id}: {len(found)} running containers"
    return docker.from_env(timeout=30).api.inspect_container(found[0]["Id"])


def assigned_gpus(site, user: str, kernel_id: str) -> list[int]:
    """The GPUs ``user``'s server says the kernel has (GET gpuenv/api/kernels): NVML indices."""
    rows = [k for k in site.gpuenv_kernels(user) if k["kernel_id"] == kernel_id]
    assert len(rows) == 1, site.gpuenv_kernels(user)
    return rows[0]["gpus"]


def test_alice_and_bob_get_a_gpu_each_and_carol_is_told_who_holds_them(clean_site, kernels):
    site = clean_site
    alice, bob = assigned_gpus(site, "alice", kernels["alice"]), assigned_gpus(site, "bob", kernels["bob"])
    assert len(alice) == 1 and len(bob) == 1, (alice, bob)
    assert alice != bob, f"the same GPU for both: {alice}"
    assert set(alice + bob) == {0, 1}
    # each sees only their own kernel
    assert [k["id"] for k in site.kernels("alice")] == [kernels["alice"]]
    assert [k["id"] for k in site.kernels("bob")] == [kernels["bob"]]

    # what carol's panel shows before she tries: her environments (the gpu-power group's: all of them), live
    rows = {row["name"]: row for row in site.server("carol", "GET", "gpuenv/api/environments").json()["environments"]}
    assert set(rows) == {"gpu", "pair", "cpu", "power"}, sorted(rows)
    assert "0 of 2 GPUs free" in (rows["gpu"].get("availability") or ""), rows["gpu"]

    before = site.leftovers()
    r = site.start_kernel("carol", "gpu")
    assert r.status_code == 409, (r.status_code, r.text[:500])
    message = r.json()["message"]
    assert "alice" in message and "bob" in message, message  # show_other_users = "name"
    assert site.kernels("carol") == []
    assert site.leftovers() == before, "carol's refused start left something behind"


def test_kernels_run_as_their_users(clean_site, kernels):
    for user, kernel_id in kernels.items():
        account = clean_site.users[user]
        config = container_of(kernel_id)["Config"]
        assert config["User"] == f"{account.uid}:{account.gid}", config["User"]
        out = clean_site.execute(user, kernel_id, "import os; print(os.getuid(), os.getgid(), os.getcwd())")
        uid, gid, cwd = out.split()
        assert (int(uid), int(gid)) == (account.uid, account.gid), out
        assert cwd == account.home, out  # the server's root folder: the user's home


def test_servers_run_as_their_users_and_the_broker_as_the_hubs_service(clean_site):
    servers = {}
    for pid in clean_site.processes():
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            environ = _environ(pid)
            if environ.get("JUPYTERHUB_USER") and "singleuser" in Path(f"/proc/{pid}/cmdline").read_text():
                servers[environ["JUPYTERHUB_USER"]] = {int(v) for v in _field(_status(pid), "Uid")}
    assert servers == {u: {clean_site.users[u].uid} for u in USERS}, servers
    # the broker: started by the hub as its service (its supervisor is the hub's child), with the hub's API
    broker = clean_site.broker_pid()
    environ = _environ(broker)
    assert environ.get("JUPYTERHUB_SERVICE_NAME") == "gpuenv-broker", sorted(environ)
    assert environ.get("JUPYTERHUB_API_URL") and environ.get("JUPYTERHUB_API_TOKEN"), sorted(environ)
    supervisor = int(_field(_status(broker), "PPid")[0])
    assert int(_field(_status(supervisor), "PPid")[0]) == clean_site.proc.pid


def test_no_user_process_can_open_the_docker_socket(clean_site, kernels):
    connect = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({DOCKER_SOCKET!r})\n"
        "except PermissionError:\n"
        "    print('PermissionError')\n"
        "else:\n"
        "    print('connected')\n"
    )
    for user in USERS:
        done = as_user(user, ["/usr/bin/python3", "-c", connect])
        assert done.stdout.strip() == "PermissionError", (user, done.stdout, done.stderr)
    # the servers' own processes: not in the docker group (their groups are their account's)
    docker_gid = grp.getgrnam("docker").gr_gid if "docker" in {g.gr_name for g in grp.getgrall()} else None
    for pid in clean_site.processes():
        try:
            status = _status(pid)
        except OSError:  # a process that ended meanwhile
            continue
        if 0 not in {int(v) for v in _field(status, "Uid")}:
            assert docker_gid not in {int(g) for g in _field(status, "Groups")}, status
    # and the kernels: the socket is not in their containers
    out = clean_site.execute("alice", kernels["alice"], f"import os; print(os.path.exists({DOCKER_SOCKET!r}))")
    assert out.strip() == "False"


def test_a_forged_peer_cannot_touch_another_users_kernel(clean_site, kernels):
    site = clean_site
    victim = container_of(kernels["alice"])
    for op, extra in (("signal", {"signum": int(signal.SIGKILL)}), ("remove", {}), ("state", {})):
        answer = site.ask("bob", op, container_id=victim["Id"], **extra)
        assert answer.get("error", {}).get("status") == 404, (op, answer)
        short = site.ask("bob", op, container_id=victim["Id"][:12], **extra)
        assert short.get("error", {}).get("status") == 404, (op, short)
    # who bob is comes from the socket, not from what he says
    hello = site.ask("bob", "hello", user="alice", uid=site.users["alice"].uid)
    assert hello["result"]["user"] == "bob" and hello["result"]["uid"] == site.users["bob"].uid, hello
    mine = site.ask("bob", "kernels")["result"]
    assert {k["kernel_id"] for k in mine} == {kernels["bob"]}, mine
    assert victim["Id"] not in json.dumps(mine)
    # alice's kernel did not notice
    assert container_of(kernels["alice"])["State"]["Running"]
    assert site.execute("alice", kernels["alice"], "print(6 * 7)").strip() == "42"
    # nor can bob look into her kernel's socket folder (her connection key is there)
    folders = [f for f in site.socket_folders() if f.endswith(kernels["alice"])]
    assert len(folders) == 1, site.socket_folders()
    folder = Path(site.socket).parent / "sockets" / folders[0]
    peek = as_user("bob", ["/usr/bin/python3", "-c", f"import os; print(os.listdir({str(folder)!r}))"])
    assert peek.returncode != 0 and "PermissionError" in peek.stderr, (peek.stdout, peek.stderr)


# -- helpers --------------------------------------------------------------------------------------------------------
def _status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def _field(status: str, name: str) -> list[str]:
    for line in status.splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1:]
    return []


def test_the_brokers_folder_is_roots_and_each_kernels_folder_its_users(clean_site, kernels):
    site = clean_site
    folder = Path(site.socket).parent
    info = folder.stat()
    assert info.st_uid == 0 and info.st_mode & 0o022 == 0, oct(info.st_mode)
    leases = folder / "leases.json"
    assert leases.stat().st_uid == 0 and leases.stat().st_mode & 0o077 == 0, oct(leases.stat().st_mode)
    for user, kernel_id in kernels.items():
        account = site.users[user]
        mine = folder / "sockets" / str(account.uid) / kernel_id
        assert (mine.stat().st_uid, mine.stat().st_mode & 0o777) == (account.uid, 0o700), oct(mine.stat().st_mode)
    # bob can neither read the lease book nor put anything into the broker's folder
    probe = (
        "import sys\n"
        "for what, call in (('read', lambda: open(sys.argv[1]).read()), ('write', lambda: open(sys.argv[2], 'w'))):\n"
        "    try:\n"
        "        call()\n"
        "        print(what, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(what, 'refused')\n"
    )
    done = as_user("bob", ["/usr/bin/python3", "-c", probe, str(leases), str(folder / "planted")])
    assert done.stdout.split("\n")[:2] == ["read refused", "write refused"], (done.stdout, done.stderr)


def test_a_broker_restarted_with_kernels_running_keeps_their_leases(clean_site, kernels):
    site = clean_site
    before = {user: assigned_gpus(site, user, k) for user, k in kernels.items()}
    killed = site.kill_broker(signal.SIGKILL)
    site.wait_broker()
    assert site.broker_pid() != killed
    # both GPUs are still held: a new exclusive start is refused, naming the holders
    r = site.start_kernel("carol", "gpu")
    assert r.status_code == 409, (r.status_code, r.text[:500])
    assert "alice" in r.json()["message"] and "bob" in r.json()["message"], r.json()["message"]
    # the kernels still run, with the same GPUs, and the broker still knows them as theirs
    for user, kernel_id in kernels.items():
        assert site.execute(user, kernel_id, "print('still here')").strip() == "still here"
        assert assigned_gpus(site, user, kernel_id) == before[user]
        assert {k["kernel_id"] for k in site.ask(user, "kernels")["result"]} == {kernel_id}
    assert site.leased_kernels() == set(kernels.values())
    holders = site.ask("carol", "gpus")["result"]
    assert "alice" in json.dumps(holders) and "bob" in json.dumps(holders), holders


def test_a_peer_reusing_another_users_kernel_id_cannot_replace_their_kernel(clean_site, kernels):
    """Kernel ids are chosen by the client: bob asks for a kernel under alice's kernel id (and container name)."""
    site, bob = clean_site, clean_site.users["bob"]
    victim = container_of(kernels["alice"])
    folder = f"{Path(site.socket).parent}/sockets/{bob.uid}/{kernels['alice']}"
    # the socket folder first, as a server does; then the start itself, with a folder bob could have made
    taken = site.ask("bob", "socket_folder", kernel_id=kernels["alice"])
    answer = site.ask(
        "bob",
        "start_kernel",
        kernel_id=kernels["alice"],
        environment="cpu",
        root_dir=bob.home,
        cwd=bob.home,
        socket_dir=folder,
        connection_file=f"{folder}/connection.json",
        keep_gpus=[],
        server_env={},
    )
    if "result" in answer:  # bob got a kernel: it goes again, and the test says so
        site.ask("bob", "remove", container_id=answer["result"]["container_id"])
    as_user("bob", ["/usr/bin/python3", "-c", f"import shutil; shutil.rmtree({folder!r}, ignore_errors=True)"])
    for what in (taken, answer):
        status, message = what.get("error", {}).get("status", 0), what.get("error", {}).get("message", "")
        assert 400 <= status < 500, (what, answer)
        assert len(message.split()) >= 5, f"not a sentence: {message!r}"
    # alice's kernel did not notice: the same container, running, hers, answering
    after = container_of(kernels["alice"])
    assert after["Id"] == victim["Id"] and after["State"]["Running"], "alice's kernel container was replaced"
    assert after["State"]["StartedAt"] == victim["State"]["StartedAt"], "alice's kernel container was restarted"
    assert site.execute("alice", kernels["alice"], "print('mine')").strip() == "mine"
    assert {k["kernel_id"] for k in site.ask("alice", "kernels")["result"]} == {kernels["alice"]}
    assert {k["kernel_id"] for k in site.ask("bob", "kernels")["result"]} == {kernels["bob"]}
    assert site.leased_kernels() == set(kernels.values())
