"""jupyter_client's lifecycle tests, our own equivalents, for its four managers and two kernels side by side.

They follow what the installed jupyter_client's own suite checks (8.10: ``tests/test_kernelmanager.py``
``test_lifecycle``, ``test_restart_check`` and ``test_subclass_callables``' order of calls;
``tests/test_multikernelmanager.py`` ``test_tcp_lifecycle`` and ``test_shutdown_all``), which the wheel does not
ship: start, alive, interrupt, restart (also with new ports), shutdown, for the synchronous and asynchronous
``KernelManager`` and ``MultiKernelManager``, with the local ``python3`` kernel as the control. Not mirrored:
jupyter_client's ``ipc``/``tcp`` variants of each test - a container kernel always uses ``ipc`` in its own folder,
whatever the manager asks (docs/kernel-clients.md), which the container column asserts instead.
"""

import asyncio
import inspect

import pytest
from container_harness import install_spec, our_containers
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager, MultiKernelManager

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["local", "container"])
def kernel(request, tmp_path, monkeypatch, jp_environ, jp_data_dir):
    monkeypatch.chdir(tmp_path)
    if request.param == "local":
        return "python3", None
    client = request.getfixturevalue("docker_client")
    return install_spec(jp_data_dir, "lifecycle", {}), client


async def call(result):
    """A manager method's result, awaited when the manager is asynchronous."""
    return await result if inspect.isawaitable(result) else result


def check_transport(km, docker_client):
    if docker_client is not None:  # by design: ipc in the kernel's own folder, whatever was asked
        assert km.transport == "ipc" and km.connection_file.endswith("/connection.json")
        assert [c.id for c in our_containers(docker_client, km.kernel_id)] == [km.provisioner.placement.container_id]


async def ask(km, code="print(6 * 7)"):
    client = km.client()
    client.start_channels()
    try:
        await call(client.wait_for_ready(timeout=60))
        reply = await call(client.execute_interactive(code, timeout=60))
        return reply["content"]["status"]
    finally:
        client.stop_channels()


@pytest.mark.parametrize("manager", [KernelManager, AsyncKernelManager])
async def test_kernel_manager_lifecycle(kernel, manager):
    name, docker_client = kernel
    km = manager(kernel_name=name)
    if manager is KernelManager:  # jupyter_client's synchronous API, called as a script does (no running loop)
        await asyncio.get_running_loop().run_in_executor(None, sync_lifecycle, km, docker_client)
        return
    await km.start_kernel(stdout=None, stderr=None)
    try:
        assert await km.is_alive() and km.has_kernel
        check_transport(km, docker_client)
        assert await ask(km, "state = 1") == "ok"
        await km.interrupt_kernel()
        await km.restart_kernel(now=True)
        assert await km.is_alive() and await ask(km, "state") == "error"  # a new kernel: the state is gone
        check_transport(km, docker_client)
        await km.restart_kernel(now=True, newports=True)
        assert await km.is_alive() and await ask(km) == "ok"
    finally:
        await km.shutdown_kernel(now=True)
    assert not await km.is_alive()
    assert docker_client is None or our_containers(docker_client, km.kernel_id) == []


def sync_lifecycle(km, docker_client):
    km.start_kernel(stdout=None, stderr=None)
    try:
        assert km.is_alive() and km.has_kernel
        check_transport(km, docker_client)
        assert asyncio.run(ask(km, "state = 1")) == "ok"
        km.interrupt_kernel()
        km.restart_kernel(now=True)
        assert km.is_alive() and asyncio.run(ask(km, "state")) == "error"  # a new kernel: the state is gone
        check_transport(km, docker_client)
        km.restart_kernel(now=True, newports=True)
        assert km.is_alive() and asyncio.run(ask(km)) == "ok"
    finally:
        km.shutdown_kernel(now=True)
    assert not km.is_alive()
    assert docker_client is None or our_containers(docker_client, km.kernel_id) == []


@pytest.mark.parametrize("manager", [MultiKernelManager, AsyncMultiKernelManager])
async def test_multi_kernel_manager_lifecycle(kernel, manager):
    name, docker_client = kernel
    mkm = manager()
    if manager is MultiKernelManager:
        await asyncio.get_running_loop().run_in_executor(None, sync_multi_lifecycle, mkm, name, docker_client)
        return
    first = await mkm.start_kernel(kernel_name=name)
    second = await mkm.start_kernel(kernel_name=name)
    try:
        assert sorted(mkm.list_kernel_ids()) == sorted([first, second]) and first in mkm
        assert await mkm.is_alive(first) and await ask(mkm.get_kernel(first), "state = 1") == "ok"
        await mkm.interrupt_kernel(first)
        await mkm.restart_kernel(first, now=True)
        assert await mkm.is_alive(first) and await ask(mkm.get_kernel(first), "state") == "error"
        check_transport(mkm.get_kernel(first), docker_client)
        await mkm.shutdown_kernel(second, now=True)
        assert second not in mkm and mkm.list_kernel_ids() == [first]
    finally:
        await mkm.shutdown_all(now=True)
    assert mkm.list_kernel_ids() == []
    assert docker_client is None or (our_containers(docker_client, first), our_containers(docker_client, second)) == (
        [],
        [],
    )


def sync_multi_lifecycle(mkm, name, docker_client):
    first = mkm.start_kernel(kernel_name=name)
    second = mkm.start_kernel(kernel_name=name)
    try:
        assert sorted(mkm.list_kernel_ids()) == sorted([first, second]) and first in mkm
        assert mkm.is_alive(first) and asyncio.run(ask(mkm.get_kernel(first), "state = 1")) == "ok"
        mkm.interrupt_kernel(first)
        mkm.restart_kernel(first, now=True)
        assert mkm.is_alive(first) and asyncio.run(ask(mkm.get_kernel(first), "state")) == "error"
        check_transport(mkm.get_kernel(first), docker_client)
        mkm.shutdown_kernel(second, now=True)
        assert second not in mkm and mkm.list_kernel_ids() == [first]
    finally:
        mkm.shutdown_all(now=True)
    assert mkm.list_kernel_ids() == []
    assert docker_client is None or (our_containers(docker_client, first), our_containers(docker_client, second)) == (
        [],
        [],
    )
