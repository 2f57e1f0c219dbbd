"""Terminals inside an environment: the session rules with a scripted shell, the REST answers of a real server,
and the broker's shell operation over its real socket with a real container.

The browser test (tests/browser/test_terminal.py) drives the whole thing as a person does; these check what
it cannot see: the replay and sizes shared by several tabs, the grace period, the refusals, another user's
container through the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from container_harness import IMAGE, start
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv.broker import daemon as broker_module
from jupyter_gpuenv.broker.daemon import BrokerDaemon
from jupyter_gpuenv.broker.leases import RUNNING, KernelLease
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.engines.broker import BrokerClient
from jupyter_gpuenv.server.terminals import Target, Terminal

pytestmark = pytest.mark.timeout(120)
log = logging.getLogger("test_terminals")


# -- the session rules, with a scripted shell --------------------------------------------------------------
class ScriptedShell:
    """An ``engine.Shell`` whose output the test writes; records what was typed, sized and whether it was closed."""

    def __init__(self) -> None:
        self.output: asyncio.Queue[bytes] = asyncio.Queue()
        self.typed, self.sizes, self.closed = [], [], False

    async def read(self) -> bytes:
        return await self.output.get()

    async def write(self, data: bytes) -> None:
        self.typed.append(data)

    async def resize(self, rows: int, cols: int) -> None:
        self.sizes.append((rows, cols))

    async def close(self) -> None:
        self.closed = True


class Tab:
    def __init__(self) -> None:
        self.messages, self.closed = [], False

    def send(self, message) -> None:
        self.messages.append(message)

    def close(self) -> None:
        self.closed = True

    @property
    def text(self) -> str:
        return "".join(m[1] for m in self.messages if m[0] == "stdout")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_tabs_share_one_shell_and_a_reload_sees_what_came_before():
    shell, ended = ScriptedShell(), []

    async def on_end(terminal):
        ended.append(terminal.name)

    terminal = Terminal("t1", shell, Target("c" * 64, "test", kernel_id="k1"), on_end, grace=60, log=log)
    first = Tab()
    terminal.attach(first)
    shell.output.put_nowait(b"prompt $ ")
    shell.output.put_nowait("é".encode()[:1])  # a character split between two reads is not garbled
    shell.output.put_nowait("é".encode()[1:] + b"\r\n")
    await settle()
    assert first.messages[0] == ["setup", {}] and first.text == "prompt $ é\r\n"

    await terminal.set_size(first, 40, 120)
    second = Tab()  # another tab, or the same after a reload: it sees what the shell wrote before
    terminal.attach(second)
    assert second.messages == [["setup", {}], ["stdout", "prompt $ é\r\n"]]
    await terminal.set_size(second, 30, 200)
    assert shell.sizes == [(40, 120), (30, 120)]  # the smallest, so that every tab shows all of it
    await terminal.type("ls\r")
    assert shell.typed == [b"ls\r"]

    terminal.detach(second)
    await settle()
    assert shell.sizes[-1] == (40, 120)  # the tab left has its room back
    shell.output.put_nowait(b"")  # the shell exits
    await asyncio.wait_for(terminal.ended.wait(), 5)
    assert first.messages[-1] == ["disconnect", 1] and first.closed and shell.closed
    assert ended == ["t1"] and "t1" not in second.text


async def test_a_terminal_nobody_shows_ends_after_the_grace_period():
    shell, ended = ScriptedShell(), []

    async def on_end(terminal):
        ended.append(terminal.name)

    terminal = Terminal("t2", shell, Target("c" * 64, "test"), on_end, grace=0.3, log=log)
    tab = Tab()
    terminal.attach(tab)  # attached within the grace period: it lives on
    await asyncio.sleep(0.5)
    assert not terminal.ended.is_set()
    terminal.detach(tab)  # the page reloads ... and does not come back
    await asyncio.wait_for(terminal.ended.wait(), 5)
    assert shell.closed and ended == ["t2"]


# -- the server's answers -----------------------------------------------------------------------------------
@pytest.fixture
def jp_server_config(jp_server_config):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.1, "driver_retry_interval": 0.1, "pull_missing_images": False},
    }


async def post_terminal(jp_fetch, body) -> tuple[int, dict]:
    try:
        response = await jp_fetch("gpuenv", "api", "terminals", method="POST", body=json.dumps(body))
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body)


async def test_what_cannot_have_a_terminal_is_told_why(
    jp_fetch, jp_serverapp, jp_base_url, http_server_client, kernelspec, docker_client
):
    socket_path = f"{jp_base_url}gpuenv/api/terminals/0123456789ab/websocket"
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x"}
    anonymous = await http_server_client.fetch(socket_path, headers=upgrade, raise_error=False)
    assert anonymous.code == 403  # who asks is known before anything else is said
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "terminals", "0123456789ab", "websocket", headers=upgrade)
    assert err.value.code == 404
    assert (await post_terminal(jp_fetch, {"kernel_id": "nope", "environment": "test"}))[0] == 400
    code, answer = await post_terminal(jp_fetch, {"kernel_id": "no-such-kernel"})
    assert code == 404 and "no kernel" in answer["message"]
    code, answer = await post_terminal(jp_fetch, {"environment": "no-such-environment"})
    assert code == 400 and "no environment 'no-such-environment'" in answer["message"]
    for method in ("GET", "DELETE"):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("gpuenv", "api", "terminals", "0123456789ab", method=method)
        assert err.value.code == 404

    # this test server runs as root, so its container kernels do: a terminal never opens a root shell
    kernel_id = await start(jp_fetch, kernelspec)
    code, answer = await post_terminal(jp_fetch, {"kernel_id": kernel_id})
    assert code == 403 and "never opens a root shell" in answer["message"], answer
    code, answer = await post_terminal(jp_fetch, {"environment": "test"})
    assert code == 403 and "never opens a root shell" in answer["message"], answer
    assert docker_client.containers.list(all=True, filters={"label": "io.jupyter.gpuenv.terminal"}) == []
    assert (await jp_fetch("gpuenv", "api", "terminals")).body == b'{"terminals": []}'
    # and the panel is told up front, with the fix first, so it offers no button that would be refused
    terminals = json.loads((await jp_fetch("gpuenv", "api", "environments")).body)["terminals"]
    assert terminals["available"] is False
    assert terminals["reason"].startswith("run the Jupyter server as a normal user to open terminals")


# -- the broker: shells in the caller's own containers only -----------------------------------------------
NOBODY = (65534, 65534)


@pytest.fixture
def sleeper(docker_client):
    """Start containers of the test image that only wait, as a kernel container of ``uid:gid``; removed after."""
    made = []

    def run(uid: int, gid: int) -> str:
        c = docker_client.containers.run(
            IMAGE, ["sh", "-c", "while :; do sleep 3600; done"], user=f"{uid}:{gid}", init=True, detach=True,
            network_mode="none", labels={"io.jupyter.gpuenv.test": "terminals"},
        )  # fmt: skip
        made.append(c)
        return c.id

    yield run
    for c in made:
        c.remove(force=True)


async def test_the_broker_opens_shells_in_the_callers_own_containers_only(
    tmp_path, monkeypatch, sleeper, docker_client
):
    """nobody (the peer, as SO_PEERCRED would say) gets a shell in its kernel's container, as itself; the
    container of a kernel of another user ("daemon") is unknown to it, as is one the broker has no lease for."""
    daemon = BrokerDaemon(Broker(socket=str(tmp_path / "broker.sock"), docker_timeout=15.0))
    monkeypatch.setattr(broker_module, "peer", lambda sock: (1, *NOBODY))
    mine, theirs, stray = sleeper(*NOBODY), sleeper(1, 1), sleeper(*NOBODY)
    daemon.book.put(KernelLease("k-nobody", NOBODY[0], "nobody", "cpu", str(tmp_path), RUNNING, mine))
    daemon.book.put(KernelLease("k-daemon", 1, "daemon", "cpu", str(tmp_path), RUNNING, theirs))
    server = await asyncio.start_unix_server(daemon.handle, path=daemon.settings.socket)
    client = BrokerClient(f"unix://{daemon.settings.socket}", 15.0)
    try:
        for container_id in (theirs, stray, "not-a-container"):
            with pytest.raises(broker_module.UnknownKernel, match="no such kernel container of yours"):
                await client.exec_shell(container_id, "1:1")
        assert daemon.shells == {}

        shell = await client.exec_shell(mine, "0:0")  # the broker runs it as its caller, whatever is asked
        await shell.resize(20, 70)
        await shell.write(b"echo uid=$(id -u) size=$(stty size) host=$(hostname)\r")
        seen = b""
        while b"host=" + mine[:12].encode() not in seen:
            seen += await asyncio.wait_for(shell.read(), 10)
        assert b"uid=65534 size=20 70" in seen
        monkeypatch.setattr(broker_module, "peer", lambda sock: (1, 1, 1))  # now "daemon" asks
        with pytest.raises(broker_module.UnknownKernel):  # a shell's id is no use to another user
            await client.call("shell_resize", {"shell": next(iter(daemon.shells)), "rows": 5, "cols": 5})
        await shell.close()  # the tab closes: the broker hangs the shell up
        for _ in range(100):
            if not daemon.shells and len(docker_client.api.top(mine)["Processes"]) == 3:
                break
            await asyncio.sleep(0.05)
        assert daemon.shells == {}
        assert "bash" not in json.dumps(docker_client.api.top(mine)["Processes"])  # init, sh, sleep: no shell
    finally:
        server.close()
        daemon.docker.close()
