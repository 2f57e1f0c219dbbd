"""Container kernels under faults and hostile input: a stalled engine, racing restarts, out of memory, bad ids
and paths. Each answer is a 4xx/503 with a sentence, and nothing is left behind: no container, no folder.

The engine is real; a stall is a real SIGSTOP of dockerd (timed at the SDK call where it matters).
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import time

import docker
import pytest
from conftest import wait_until
from container_harness import IMAGE, execute, install_spec, our_containers, provisioner, start, start_error
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv.containers import labels

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def jp_server_config(jp_server_config):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.1, "driver_retry_interval": 0.1, "pull_missing_images": False},
    }


def dockerd_pid() -> int:
    with open("/var/run/docker.pid") as f:
        return int(f.read())


@contextlib.contextmanager
def stalled_engine(seconds: float):
    """dockerd stopped (SIGSTOP) from now until ``seconds`` later, always resumed: a real stall."""
    pid = dockerd_pid()
    os.kill(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    handle = loop.call_later(seconds, os.kill, pid, signal.SIGCONT)
    try:
        yield
    finally:
        handle.cancel()
        os.kill(pid, signal.SIGCONT)


def stall_before(monkeypatch, method: str, seconds: float):
    """Stop dockerd just before the SDK's ``APIClient.<method>`` sends its request, for ``seconds``."""
    original = getattr(docker.APIClient, method)
    pid = dockerd_pid()

    def stalled(self, *args, **kwargs):
        os.kill(pid, signal.SIGSTOP)
        threading_timer = __import__("threading").Timer(seconds, os.kill, (pid, signal.SIGCONT))
        threading_timer.start()
        monkeypatch.setattr(docker.APIClient, method, original)  # once
        return original(self, *args, **kwargs)

    monkeypatch.setattr(docker.APIClient, method, stalled)


def probes(client):
    return client.containers.list(all=True, filters={"label": labels.PROBE})


def socket_folders():
    root = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"gpuenv-{os.getuid()}")
    return {n for n in os.listdir(root) if not n.endswith(".lock")} if os.path.isdir(root) else set()


@pytest.fixture
def quick_engine(jp_serverapp):
    jp_serverapp.config.GpuEnv.docker_timeout = 2.0  # a new engine for this setting: stalls show in seconds


@pytest.mark.parametrize("where", ["start", "create_container", "logs"])
async def test_an_engine_stalled_mid_start_answers_503_and_leaves_nothing(
    where, quick_engine, jp_fetch, jp_data_dir, docker_client, monkeypatch
):
    """``logs``: the stall hits the probe that asks the image about its Python; the others, the kernel's own."""
    name = install_spec(jp_data_dir, "stall", {"env": {"STALL_TEST": where}})  # a probe of its own
    before = socket_folders()
    stall_before(monkeypatch, where, 6.0)
    started = time.monotonic()
    code, message = await start_error(jp_fetch, name)
    assert code == 503 and "did not answer" in message, message
    assert time.monotonic() - started < 20  # the engine's budget, not a hang
    # once the engine answers again, what the stall interrupted is removed
    await asyncio.sleep(6.5)
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: wait_until(lambda: not our_containers(docker_client) and not probes(docker_client), 45)
    )
    assert socket_folders() == before


async def test_a_stalled_engine_holds_no_start_forever(quick_engine, jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "stall", {})
    with stalled_engine(8.0):
        started = time.monotonic()
        code, message = await start_error(jp_fetch, name)
        assert time.monotonic() - started < 8
    assert code == 503 and "did not answer" in message


@pytest.mark.parametrize("restarts", [2, 10])
async def test_concurrent_restarts_end_with_one_working_kernel(
    restarts, jp_fetch, jp_serverapp, kernelspec, docker_client
):
    kernel_id = await start(jp_fetch, kernelspec)
    socket_dir = provisioner(jp_serverapp, kernel_id).socket_dir
    answers = await asyncio.gather(
        *(jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="") for _ in range(restarts)),
        return_exceptions=True,
    )
    assert [getattr(a, "code", a) for a in answers] == [200] * restarts
    out, error = await execute(jp_serverapp, kernel_id, "print('one kernel')")
    assert (out.strip(), error) == ("one kernel", None)
    running = our_containers(docker_client, kernel_id)
    assert [c.id for c in running] == [provisioner(jp_serverapp, kernel_id).placement.container_id]
    assert os.path.isdir(socket_dir)
    kernels = json.loads((await jp_fetch("api", "kernels")).body)
    assert [k["id"] for k in kernels] == [kernel_id]


async def test_out_of_memory_is_told_not_silent(jp_fetch, jp_serverapp, jp_data_dir, docker_client, caplog):
    name = install_spec(jp_data_dir, "small", {"memory": "64m"})
    kernel_id = await start(jp_fetch, name)
    first = provisioner(jp_serverapp, kernel_id).placement.container_id
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    await client.wait_for_ready(timeout=30)
    client.execute("x = bytearray(400 * 1024 * 1024)")
    client.stop_channels()

    async def restarted():
        for _ in range(300):
            p = provisioner(jp_serverapp, kernel_id).placement
            if p is not None and p.container_id != first:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the kernel killed by its memory limit was not restarted")

    await restarted()
    rows = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    row = next(r for r in rows if r["kernel_id"] == kernel_id)
    assert row["last_exit"]["oom_killed"] is True
    assert row["last_exit"]["message"] == "the kernel ran out of its 64m memory limit and was restarted"
    # the new container's memory, read from its cgroup, against the same limit: a fresh kernel is far below it
    memory = row["host_memory"]
    assert memory["limit"] == 64 * 1024**2 and 0 < memory["used"] < memory["limit"] and not memory["warning"], memory
    assert any("ran out of its 64m memory limit" in r.getMessage() for r in caplog.records)
    out, error = await execute(jp_serverapp, kernel_id, "print('after')")
    assert (out.strip(), error) == ("after", None)


@pytest.mark.parametrize("kernel_id", ["../../escape", "k;rm -rf x", "kérnel", "a/b", "x" * 80, ".hidden"])
async def test_a_client_chosen_kernel_id_that_is_no_safe_name_is_400(
    kernel_id, jp_fetch, kernelspec, docker_client, tmp_path
):
    before = socket_folders()
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": kernelspec, "kernel_id": kernel_id}))
    assert err.value.code == 400
    assert "is not allowed" in json.loads(err.value.response.body)["message"]
    assert our_containers(docker_client) == [] and socket_folders() == before


async def test_a_notebook_outside_the_root_is_400(jp_fetch, jp_serverapp, kernelspec, docker_client, tmp_path):
    (tmp_path / "outside").mkdir()
    before = socket_folders()
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch(
            "api", "kernels", method="POST", body=json.dumps({"name": kernelspec, "path": "../outside/n.ipynb"})
        )
    assert err.value.code == 400
    assert "outside the server's root" in json.loads(err.value.response.body)["message"]
    assert our_containers(docker_client) == [] and socket_folders() == before


async def test_reserved_keys_in_a_kernelspec_config_are_400(jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "evil", {"raw": {"environment": "evil", "image": IMAGE, "kernel_id": "../x"}})
    before = socket_folders()
    code, message = await start_error(jp_fetch, name)
    assert code == 400 and "'kernel_id' may not be set" in message
    assert our_containers(docker_client) == [] and socket_folders() == before


@pytest.fixture
def jp_root_dir(tmp_path):
    """A root folder whose name holds what docker's bind text would split on."""
    root = tmp_path / "work:2024,final"
    root.mkdir()
    return root


async def test_a_root_folder_with_a_colon_works(jp_fetch, jp_serverapp, jp_root_dir, kernelspec, docker_client):
    kernel_id = await start(jp_fetch, kernelspec)
    out, error = await execute(jp_serverapp, kernel_id, "import os; print(os.getcwd())")
    assert (out.strip(), error) == (str(jp_root_dir), None)


async def test_a_refused_start_logs_one_line_and_no_traceback(jp_fetch, jp_data_dir, docker_client, caplog):
    name = install_spec(jp_data_dir, "missing", {"image": "gpuenv-does-not-exist:1.0"})
    caplog.set_level(logging.DEBUG)
    code, message = await start_error(jp_fetch, name)
    assert code == 409
    mentions = [r for r in caplog.records if message in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(mentions) == 1 and mentions[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_a_refused_start_leaves_no_pending_kernel(jp_fetch, jp_serverapp, jp_data_dir, docker_client):
    """jupyter_client kept failed starts pending: the server's shutdown then waited on them."""
    name = install_spec(jp_data_dir, "missing", {"image": "gpuenv-does-not-exist:1.0"})
    await start_error(jp_fetch, name)
    assert dict(jp_serverapp.kernel_manager._pending_kernels) == {}
    assert json.loads((await jp_fetch("api", "kernels")).body) == []


async def test_a_percent_sign_reaches_the_person_as_one(jp_fetch, jp_data_dir, docker_client, caplog):
    name = install_spec(jp_data_dir, "pct", {"raw": {"environment": "pct", "image": IMAGE, "shm_size": "100%"}})
    code, message = await start_error(jp_fetch, name)
    assert code == 400 and "got '100%'" in message and "%%" not in message, message
    assert any("got '100%'" in r.getMessage() for r in caplog.records)  # and the log line formats


async def test_interrupt_does_not_wait_behind_starts(jp_fetch, jp_serverapp, kernelspec, docker_client):
    kernel_id = await start(jp_fetch, kernelspec)
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    await client.wait_for_ready(timeout=30)
    msg_id = client.execute("import time; time.sleep(60)")
    await asyncio.sleep(0.5)
    starts = asyncio.gather(*(start(jp_fetch, kernelspec) for _ in range(12)))  # the engine's work pool is full
    await asyncio.sleep(0.3)
    begun = time.monotonic()
    await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
    reply = await client.get_shell_msg(timeout=20)
    waited = time.monotonic() - begun
    client.stop_channels()
    await starts
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
    assert waited < 5, f"the interrupt waited {waited:.1f} s behind kernel starts"
