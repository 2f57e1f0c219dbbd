"""A broker in hub-token mode (servers in containers, DockerSpawner): it knows a server by the hub token it
presents, never by its uid, and asks the hub whose the token is.

The site's own broker runs in peer mode and ignores any token (its callers are Unix accounts, known from the
socket). This module starts a second broker beside it, ``c.Broker.identify = "hub-token"``, on its own
root-owned folder under the site's /run/gpuenv-test-*/, asking the site's hub, with NVML replayed and the same
environments and policy. Every request comes from one Unix account (dave's), as every DockerSpawner server
runs as one uid: only the token says who asks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from jupyter_gpuenv.containers import labels

from .conftest import BROKER_TIMEOUT, HERE, Site, write_broker_config

PEER = "dave"  # the Unix account of every request: in hub-token mode the uid says nothing
HUB_UID, HUB_GID = 61000, 100  # c.Broker.hub_uid / hub_gid: an id no account of this host has
WORK_DIR = "/home/jovyan/work"  # c.Broker.hub_work_dir (DockerSpawner's and docker-stacks' default)


@dataclass
class HubTokenBroker:
    site: Site
    folder: Path  # root-owned: the socket, leases.json, sockets/hub-<name>/<kernel id>
    socket: str
    config: Path
    volume_prefix: str  # c.Broker.hub_volume is "<prefix>{username}": unique to this run, removed afterwards
    log_path: Path
    proc: subprocess.Popen | None = None

    def volume(self, user: str) -> str:
        return f"{self.volume_prefix}{user}"

    def ask(self, op: str, token: str | None, /, **args) -> dict[str, Any]:
        """One operation from dave's process, presenting ``token`` (none: no hub_token key at all)."""
        request: dict[str, Any] = {"op": op, "args": args}
        if token is not None:
            request["hub_token"] = token
        answers = self.site.wire(PEER, request, socket=self.socket)
        assert answers, f"no answer to {op}"
        final = answers[-1]
        assert "result" in final or "error" in final, answers
        return final

    def start(self) -> None:
        """Run the broker (``jupyter gpuenv broker`` with NVML replayed) until it answers alice's hello."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JUPYTER", "CUDA_VISIBLE", "NVIDIA_VISIBLE", "GPUENV_"))
        }
        env.update(GPUENV_TEST_RECORDING="h100x2", GPUENV_HUB_TEST_MARKER=self.site.marker, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "broker_fake_nvml.py"), "--run", "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + BROKER_TIMEOUT
        while True:
            assert self.proc.poll() is None, (
                f"the hub-token broker exited with {self.proc.returncode}\n{self.log_tail()}"
            )
            hello = {"op": "hello", "args": {}, "hub_token": self.site.tokens["alice"]}
            if os.path.exists(self.socket) and "result" in self.site.wire(PEER, hello, socket=self.socket)[-1]:
                return  # (a killed broker's socket file stays: nobody listens until the new one serves it)
            assert time.monotonic() < deadline, f"no hello within {BROKER_TIMEOUT} s\n{self.log_tail()}"
            time.sleep(0.2)

    def restart(self) -> None:
        """SIGKILL (nothing cleaned up, the socket file stays), then start again: what a crash and systemd do."""
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.proc.kill()
        self.proc.wait(30)
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def hub_broker(clean_site, tmp_path_factory):
    site = clean_site
    folder = site.root / "hub-token"  # made by the broker itself, as its socket's folder
    socket_path = str(folder / "broker.sock")
    volume_prefix = f"gpuenv-test-{secrets.token_hex(4)}-user-"
    config = site.root / "hub_token_broker_config.py"
    write_broker_config(
        config,
        socket_path,
        extra=(
            'c.Broker.identify = "hub-token"\n'
            f"c.Broker.hub_api_url = {site.hub_api!r}\n"
            f"c.Broker.hub_uid = {HUB_UID}\n"
            f"c.Broker.hub_gid = {HUB_GID}\n"
            f"c.Broker.hub_work_dir = {WORK_DIR!r}\n"
            f'c.Broker.hub_volume = "{volume_prefix}{{username}}"\n'
            # the requests' processes (wire.py) end at once: no sweep for kernels whose server is gone
            "c.Broker.orphan_interval = 3600.0\n"
        ),
    )
    log_path = tmp_path_factory.mktemp("hub-token-broker") / "broker.log"
    broker = HubTokenBroker(site, folder, socket_path, config, volume_prefix, log_path)
    try:
        broker.start()
        yield broker
    finally:
        leftovers = _stop(broker)
        config.unlink(missing_ok=True)
    assert not any(leftovers.values()), (
        f"left behind by the hub-token broker (removed now): {leftovers}\n{broker.log_tail()}"
    )


def _stop(broker: HubTokenBroker) -> dict[str, list]:
    """Stop the broker (SIGTERM), then remove what it made: containers, namespace holders, volumes, its folder.
    The leftovers, for the fixture to fail on: what should have gone before (a holder is only warned about)."""
    leftovers: dict[str, list] = {"processes": [], "containers": [], "socket_folders": []}
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.send_signal(signal.SIGTERM)
        try:
            broker.proc.wait(20)
        except subprocess.TimeoutExpired:
            leftovers["processes"].append(broker.proc.pid)  # did not stop on SIGTERM
            broker.proc.kill()
            broker.proc.wait(10)
    client = docker.from_env(timeout=30)
    with contextlib.suppress(docker.errors.APIError):
        for c in client.api.containers(all=True, filters={"label": f"{labels.BROKER}={broker.socket}"}):
            leftovers["containers"].append((c["Names"][0], c["State"]))
            client.api.remove_container(c["Id"], force=True)
        for c in client.api.containers(all=True, filters={"label": [labels.NETNS, f"{labels.UID}={HUB_UID}"]}):
            client.api.remove_container(c["Id"], force=True)
            warnings.warn(f"the hub-token broker left {c['Names'][0]} ({c['Labels']}) after it stopped", stacklevel=1)
        # the users' volumes are their files (DockerSpawner keeps them): not a leftover, but this run's alone
        for volume in client.api.volumes(filters={"name": broker.volume_prefix}).get("Volumes") or []:
            client.api.remove_volume(volume["Name"], force=True)
    sockets = broker.folder / "sockets"
    if sockets.is_dir():
        leftovers["socket_folders"] = sorted(f"{d.name}/{k.name}" for d in sockets.iterdir() for k in d.iterdir())
    shutil.rmtree(broker.folder, ignore_errors=True)
    return leftovers


def sentence(answer: dict, status: int) -> str:
    """The refusal's message, once its status is ``status`` and it is a sentence."""
    assert answer.get("error", {}).get("status") == status, answer
    message = answer["error"]["message"]
    assert len(message.split()) >= 5, f"not a sentence: {message!r}"
    return message


# -- who asks ---------------------------------------------------------------------------------------------------------
def test_a_valid_hub_token_names_its_owner_whatever_the_uid(hub_broker, site):
    expected = {"uid": HUB_UID, "mode": "hub-token"}
    # a token the hub made for alice, and the one her server was given: both hers, from dave's process
    assert hub_broker.ask("hello", site.tokens["alice"])["result"] == {"user": "alice", **expected}
    assert hub_broker.ask("hello", site.server_token("alice"))["result"] == {"user": "alice", **expected}
    assert hub_broker.ask("hello", site.tokens["bob"])["result"] == {"user": "bob", **expected}
    # what a request says of itself counts for nothing
    forged = hub_broker.ask("hello", site.tokens["bob"], user="alice", uid=site.users["alice"].uid)
    assert forged["result"]["user"] == "bob", forged


def test_a_wrong_revoked_expired_service_or_missing_token_is_refused(hub_broker, site):
    r = site.api("POST", "/users/bob/tokens", json={"note": "gpuenv broker test: expires at once", "expires_in": 1})
    assert r.status_code == 201, (r.status_code, r.text)
    expired, made = r.json()["token"], time.monotonic()
    r = site.api("POST", "/users/bob/tokens", json={"note": "gpuenv broker test: revoked"})
    assert r.status_code == 201, (r.status_code, r.text)
    revoked = r.json()["token"]
    r = site.api("DELETE", f"/users/bob/tokens/{r.json()['id']}")
    assert r.status_code == 204, (r.status_code, r.text)

    wrong = sentence(hub_broker.ask("hello", secrets.token_hex(16)), 403)
    assert "token" in wrong, wrong
    sentence(hub_broker.ask("hello", revoked), 403)
    assert "token" in sentence(hub_broker.ask("hello", None), 403)
    assert "token" in sentence(hub_broker.ask("hello", ""), 403)
    assert "service" in sentence(hub_broker.ask("hello", site.service_token), 403)
    time.sleep(max(0.0, 2.5 - (time.monotonic() - made)))
    answer = hub_broker.ask("hello", expired)
    sentence(answer, 403)
    assert "bob" not in json.dumps(answer), answer
    # and a refused token gets nothing else either
    kernels = hub_broker.ask("kernels", revoked)
    sentence(kernels, 403)


def test_the_sites_peer_mode_broker_ignores_any_hub_token(clean_site):
    """Every server's broker client sends its JUPYTERHUB_API_TOKEN: a broker in peer mode goes by the socket."""
    site = clean_site
    for token in (site.tokens["bob"], secrets.token_hex(16), site.service_token):
        answers = site.wire("alice", {"op": "hello", "args": {}, "hub_token": token})
        assert answers[-1].get("result") == {"user": "alice", "uid": site.users["alice"].uid, "mode": "peer"}, answers


# -- a kernel --------------------------------------------------------------------------------------------------------
@dataclass
class HubKernel:
    kernel_id: str
    folder: str
    container_id: str


def start_hub_kernel(broker: HubTokenBroker, token: str, user: str) -> HubKernel:
    """What a server's provisioner does: the socket folder from the broker, the connection file into it, the start."""
    kernel_id = str(uuid.uuid4())
    folder = f"{broker.folder}/sockets/hub-{user}/{kernel_id}"
    assert broker.ask("socket_folder", token, kernel_id=kernel_id)["result"] == {"path": folder}
    _write_connection_file(folder)
    answer = broker.ask("start_kernel", token, **start_args(kernel_id, folder))
    assert "result" in answer, (answer, broker.log_tail())
    return HubKernel(kernel_id, folder, answer["result"]["container_id"])


def remove_hub_kernel(broker: HubTokenBroker, token: str, kernel: HubKernel) -> None:
    removed = broker.ask("remove", token, container_id=kernel.container_id)
    shutil.rmtree(kernel.folder, ignore_errors=True)  # the server's provisioner removes its socket folder
    assert "result" in removed, removed
    with pytest.raises(docker.errors.NotFound):
        docker.from_env(timeout=30).api.inspect_container(kernel.container_id)


def start_args(kernel_id: str, folder: str) -> dict[str, Any]:
    return {
        "kernel_id": kernel_id,
        "environment": "cpu",
        "root_dir": WORK_DIR,
        "cwd": WORK_DIR,
        "socket_dir": folder,
        "connection_file": f"{folder}/connection.json",
        "keep_gpus": [],
        "server_env": {},
    }


def running(container_id: str) -> bool:
    try:
        return docker.from_env(timeout=30).api.inspect_container(container_id)["State"]["Running"]
    except docker.errors.NotFound:
        return False


def test_a_start_runs_as_the_hub_uid_with_the_users_volume_and_is_theirs_alone(hub_broker, site):
    alice, bob = site.tokens["alice"], site.tokens["bob"]
    # the host's folders are nobody's here: only the user's volume is
    kernel_id = str(uuid.uuid4())
    folder = f"{hub_broker.folder}/sockets/hub-alice/{kernel_id}"
    outside = {**start_args(kernel_id, folder), "root_dir": "/home/alice", "cwd": "/home/alice"}
    assert WORK_DIR in sentence(hub_broker.ask("start_kernel", alice, **outside), 403)
    assert not os.path.exists(folder)

    kernel = start_hub_kernel(hub_broker, alice, "alice")
    try:
        info = os.stat(kernel.folder)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (HUB_UID, HUB_GID, 0o700), oct(info.st_mode)
        inspected = docker.from_env(timeout=30).api.inspect_container(kernel.container_id)
        assert inspected["Config"]["User"] == f"{HUB_UID}:{HUB_GID}", inspected["Config"]["User"]
        assert inspected["Config"]["Labels"].get(labels.BROKER) == hub_broker.socket, inspected["Config"]["Labels"]
        volumes = [(m["Name"], m["Destination"]) for m in inspected["Mounts"] if m["Type"] == "volume"]
        assert volumes == [(hub_broker.volume("alice"), WORK_DIR)], inspected["Mounts"]
        binds = [m["Source"] for m in inspected["Mounts"] if m["Type"] == "bind"]
        assert kernel.folder in binds and not [b for b in binds if b.startswith("/home")], binds
        state = hub_broker.ask("state", alice, container_id=kernel.container_id)
        assert state["result"]["running"], (state, hub_broker.log_tail())
        assert [k["kernel_id"] for k in hub_broker.ask("kernels", alice)["result"]] == [kernel.kernel_id]

        # bob (another token, from the same uid) can neither see nor touch it
        for op, extra in (("state", {}), ("signal", {"signum": int(signal.SIGKILL)}), ("remove", {})):
            sentence(hub_broker.ask(op, bob, container_id=kernel.container_id, **extra), 404)
        assert hub_broker.ask("kernels", bob)["result"] == []
        assert hub_broker.ask("state", alice, container_id=kernel.container_id)["result"]["running"]
        # nor take her kernel id
        taken = hub_broker.ask("socket_folder", bob, kernel_id=kernel.kernel_id)
        assert 400 <= taken.get("error", {}).get("status", 0) < 500, taken
        # the site's peer-mode broker does not know it either: another broker's kernel
        assert site.ask("alice", "state", container_id=kernel.container_id).get("error", {}).get("status") == 404
    finally:
        remove_hub_kernel(hub_broker, alice, kernel)
    assert hub_broker.ask("kernels", alice)["result"] == []


def test_two_brokers_on_one_engine_keep_each_others_kernels_across_restarts(hub_broker, clean_site):
    """Each broker recovers and removes only the containers it labelled: a restart of one leaves the other's."""
    site, alice = clean_site, clean_site.tokens["alice"]
    theirs = start_hub_kernel(hub_broker, alice, "alice")
    r = site.start_kernel("alice", "cpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    mine = r.json()["id"]
    try:
        site.kill_broker(signal.SIGKILL)  # the site's broker; its supervisor starts it again
        site.wait_broker()
        assert running(theirs.container_id), "the site's broker removed the hub-token broker's kernel"
        hub_broker.restart()
        assert site.execute("alice", mine, "print('still here')").strip() == "still here"
        assert {k["kernel_id"] for k in site.ask("alice", "kernels")["result"]} == {mine}
        # and each still knows its own
        assert running(theirs.container_id)
        assert [k["kernel_id"] for k in hub_broker.ask("kernels", alice)["result"]] == [theirs.kernel_id]
    finally:
        site.shutdown_kernel("alice", mine)
        remove_hub_kernel(hub_broker, alice, theirs)


def _write_connection_file(folder: str) -> None:
    """A connection file over ipc in the socket folder, the hub uid's, as a server in a container writes it."""
    from jupyter_client.connect import write_connection_file

    path = f"{folder}/connection.json"
    write_connection_file(path, transport="ipc", ip=f"{folder}/k", key=secrets.token_hex(16).encode())
    os.chown(path, HUB_UID, HUB_GID)
    os.chmod(path, 0o600)
