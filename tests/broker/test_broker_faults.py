"""Bad input and faults: what a person asks outside their policy, what a peer sends malformed, and the broker
going away (down, killed in the middle of a start). Each refusal is a status and a sentence, and leaves
nothing behind: no container, no socket folder, no lease."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import docker
import pytest

from .conftest import as_user, wait_until

NOTHING = {"containers": [], "socket_folders": [], "leases": []}


def refused(site, user: str, environment: str, status: int) -> str:
    """Start ``environment`` as ``user``; assert the status and that nothing was created; the sentence."""
    assert site.leftovers() == NOTHING
    r = site.start_kernel(user, environment)
    assert r.status_code == status, (user, environment, r.status_code, r.text[:500])
    message = r.json()["message"]
    assert len(message.split()) >= 5, f"not a sentence: {message!r}"
    assert site.kernels(user) == []
    assert site.leftovers() == NOTHING, f"{user}'s refused start of {environment} left something behind"
    return message


# -- bad input ------------------------------------------------------------------------------------------------------
def test_an_environment_outside_the_users_policy_is_refused(clean_site):
    message = refused(clean_site, "bob", "power", 403)  # "power" is for the gpu-power group only
    assert "power" in message, message
    rows = clean_site.server("bob", "GET", "gpuenv/api/environments").json()["environments"]
    assert "power" not in {row["name"] for row in rows}, "bob's panel offers what he may not use"


def test_more_gpus_than_the_policy_allows_are_refused(clean_site):
    message = refused(clean_site, "dave", "pair", 403)  # exclusive:2, and dave may hold 1 GPU
    assert "GPU" in message, message


def test_a_kernelspec_that_says_more_than_the_environment_is_refused(clean_site):
    # gpuenv-sneaky: {"environment": "gpu", "image": ..., "mounts": ["/var/run/docker.sock:..."]}
    message = refused(clean_site, "alice", "sneaky", 400)
    assert "mounts" in message or "image" in message, message


@pytest.mark.parametrize(
    "where",
    [
        pytest.param({"root_dir": "/home/bob", "cwd": "/home/bob"}, id="another-users-home"),
        pytest.param({"root_dir": "/root", "cwd": "/root"}, id="root-home"),
        pytest.param({"cwd": "/root"}, id="cwd-outside"),
        pytest.param({"root_dir": "/", "cwd": "/"}, id="the-whole-disk"),
        pytest.param({"cwd": "/home/alice/escape"}, id="cwd-through-a-link"),
        pytest.param({"root_dir": "/home/alice/escape", "cwd": "/home/alice/escape"}, id="root-through-a-link"),
    ],
)
def test_folders_the_user_does_not_own_are_refused(clean_site, where):
    """A peer that skips its server and asks the broker itself, for folders that are not alice's."""
    site, alice = clean_site, clean_site.users["alice"]
    # alice's own link to bob's home: the broker must judge where it leads, not where it sits
    as_user("alice", ["ln", "-sfn", site.users["bob"].home, f"{alice.home}/escape"])
    kernel_id = str(uuid.uuid4())
    folder = f"{site.socket.rsplit('/', 1)[0]}/sockets/{alice.uid}/{kernel_id}"
    args = {
        "kernel_id": kernel_id,
        "environment": "cpu",
        "root_dir": alice.home,
        "cwd": alice.home,
        "socket_dir": folder,
        "connection_file": f"{folder}/connection.json",
        "keep_gpus": [],
        "server_env": {},
        **where,
    }
    answer = site.ask("alice", "start_kernel", **args)
    assert answer.get("error", {}).get("status") in (400, 403), answer
    assert len(answer["error"]["message"].split()) >= 5, answer
    assert site.leftovers() == NOTHING


@pytest.mark.parametrize(
    "request_text",
    [
        pytest.param("this is not json", id="not-json"),
        pytest.param('["start_kernel"]', id="not-an-object"),
        pytest.param('{"op": "start_kernel", "args": "cpu"}', id="args-not-an-object"),
        pytest.param('{"op": "start_kernel", "args": {"kernel_id": "../../etc", "environment": "cpu"}}', id="path-id"),
        pytest.param('{"op": "rm -rf", "args": {}}', id="unknown-op"),
    ],
)
def test_a_malformed_request_is_answered_400(clean_site, request_text):
    answers = clean_site.wire("alice", request_text)
    assert answers and answers[-1].get("error", {}).get("status") == 400, answers
    assert clean_site.leftovers() == NOTHING
    assert clean_site.broker_answers()  # and the broker still serves


def test_a_start_with_an_extra_key_is_answered_400(clean_site):
    """start_kernel takes the environment's name only: an image or a mount beside it is refused, not ignored."""
    site, alice = clean_site, clean_site.users["alice"]
    kernel_id = str(uuid.uuid4())
    folder = f"{site.socket.rsplit('/', 1)[0]}/sockets/{alice.uid}/{kernel_id}"
    answer = site.ask(
        "alice",
        "start_kernel",
        kernel_id=kernel_id,
        environment="cpu",
        root_dir=alice.home,
        cwd=alice.home,
        socket_dir=folder,
        connection_file=f"{folder}/connection.json",
        keep_gpus=[],
        server_env={},
        mounts=["/var/run/docker.sock:/var/run/docker.sock"],
    )
    if "result" in answer:  # started anyway: it goes again, and the test says what the mount did
        mounts = docker.from_env(timeout=30).api.inspect_container(answer["result"]["container_id"])["Mounts"]
        site.ask("alice", "remove", container_id=answer["result"]["container_id"])
        as_user("alice", ["/usr/bin/python3", "-c", f"import shutil; shutil.rmtree({folder!r})"])
        pytest.fail(f"a start with 'mounts' was not refused (its mounts: {mounts})")
    assert answer.get("error", {}).get("status") == 400, answer
    message = answer["error"]["message"]
    assert "mounts" in message and len(message.split()) >= 5, message
    assert site.leftovers() == NOTHING


# -- faults ---------------------------------------------------------------------------------------------------------
def test_broker_down_a_start_says_so_within_5_s_and_the_panel_shows_it(clean_site):
    site = clean_site
    with site.broker_down():
        started = time.monotonic()
        r = site.start_kernel("dave", "cpu", timeout=30)
        took = time.monotonic() - started
        assert r.status_code == 503, (r.status_code, r.text[:500])
        assert took <= 5, f"the refusal took {took:.1f} s"
        assert "broker" in r.json()["message"].lower(), r.json()["message"]
        assert site.kernels("dave") == []

        r = site.server("dave", "GET", "gpuenv/api/environments", timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:500])
        body = r.json()
        engine = body.get("broker") or body["docker"]
        assert engine["available"] is False, body
        assert "broker" in (engine.get("reason") or "").lower(), engine
    # back: the same start works again
    r = site.start_kernel("dave", "cpu")
    assert r.status_code == 201, (r.status_code, r.text[:500])
    site.shutdown_kernel("dave", r.json()["id"])
    wait_until(lambda: site.leftovers() == NOTHING, 15, "nothing left after dave's kernel shut down")


def test_broker_killed_mid_start_leaves_nothing_once_it_is_back(clean_site):
    """SIGKILL the broker once the kernel's container exists but before the start is answered."""
    site = clean_site
    dave = str(site.users["dave"].uid)

    def start(answer: dict) -> None:
        r = site.start_kernel("dave", "gpu", timeout=60)
        answer.update(status=r.status_code, body=r.text)

    for _attempt in range(3):
        answer: dict = {}
        thread = threading.Thread(target=start, args=(answer,))
        thread.start()
        deadline, seen = time.monotonic() + 60, None
        while seen is None and thread.is_alive() and time.monotonic() < deadline:
            seen = next((c for c in site.containers() if c["uid"] == dave), None)
        if seen is not None:
            site.kill_broker(signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive(), "the kernel start did not answer within 60 s of the broker's death"
        if answer.get("status") == 201:  # the start was answered before the kill landed: nothing to prove
            site.shutdown_kernel("dave", json.loads(answer["body"])["id"])
            wait_until(lambda: site.leftovers() == NOTHING, 15, "a clean slate before the next attempt")
            continue
        assert seen is not None, f"no container appeared for dave's start: {answer}"
        assert answer["status"] == 503, answer
        site.wait_broker()  # started again by its supervisor (the hub service)
        wait_until(lambda: site.leftovers() == NOTHING, 15, f"nothing left of kernel {seen['kernel_id']}")
        assert site.kernels("dave") == []
        # and the GPU it was getting is free again
        r = site.start_kernel("dave", "gpu")
        assert r.status_code == 201, (r.status_code, r.text[:500])
        site.shutdown_kernel("dave", r.json()["id"])
        return
    pytest.fail("three starts in a row were answered before the broker could be killed mid-start")
