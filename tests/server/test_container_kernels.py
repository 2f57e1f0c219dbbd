"""Container kernels end to end: a real Jupyter server, a real Docker engine, real kernels in containers.

The image is the small local one that .ci/test.sh builds (tests/images/build-kernel-image.sh). NVML is fed
recorded values where a test is about GPUs, since CI has none; everything else is the real thing.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import docker
import pytest
from conftest import wait_until
from container_harness import (
    IMAGE,
    execute,
    install_spec,
    our_containers,
    provisioner,
    start,
    start_error,
)
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv.containers.labels import KERNEL as L_KERNEL
from jupyter_gpuenv.containers.labels import SERVER_HOST as L_SERVER_HOST
from jupyter_gpuenv.containers.labels import SERVER_PID as L_SERVER_PID
from jupyter_gpuenv.containers.labels import SOCKETS as L_SOCKETS
from jupyter_gpuenv.containers.labels import UID as L_UID
from jupyter_gpuenv.gpus.visibility import parse as parse_visibility

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def jp_server_config(jp_server_config):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.1, "driver_retry_interval": 0.1, "pull_missing_images": False},
    }


async def test_code_runs_in_a_container_with_the_users_files(
    jp_fetch, jp_serverapp, jp_root_dir, kernelspec, docker_client
):
    (jp_root_dir / "project").mkdir()
    kernel_id = await start(jp_fetch, kernelspec, path="project/notebook.ipynb")
    container_id = provisioner(jp_serverapp, kernel_id).placement.container_id
    container = docker_client.containers.get(container_id)
    assert container.status == "running" and container.labels[L_KERNEL] == kernel_id
    out, error = await execute(
        jp_serverapp,
        kernel_id,
        f"""
import os, socket
print(socket.gethostname(), os.getcwd(), os.getuid(), os.getgid(), bool(os.environ.get('HOME')))
open('written-in-the-container.txt', 'w').write('hello')
open('/tmp/only-in-{kernel_id}', 'w').write('here')
""",
    )
    assert error is None
    hostname, cwd, uid, gid, has_home = out.split()
    container.get_archive(f"/tmp/only-in-{kernel_id}")  # the kernel runs inside that container (its own /tmp)
    # it joined its user's no-network namespace, whose holder gave it its hostname: not the host's
    holder = docker_client.containers.get(container.attrs["HostConfig"]["NetworkMode"].removeprefix("container:"))
    assert holder.id.startswith(hostname) and hostname != socket.gethostname()
    assert cwd == str(jp_root_dir / "project")  # working directory as a local kernel would have it
    assert (int(uid), int(gid)) == (os.getuid(), os.getgid()) and has_home == "True"
    written = jp_root_dir / "project" / "written-in-the-container.txt"
    assert written.read_text() == "hello" and written.stat().st_uid == os.getuid()


async def test_no_tcp_port_no_network_no_secrets(jp_fetch, jp_serverapp, kernelspec, docker_client, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    kernel_id = await start(jp_fetch, kernelspec)
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    attrs = docker_client.api.inspect_container(provisioner(jp_serverapp, kernel_id).placement.container_id)
    holder = docker_client.api.inspect_container(attrs["HostConfig"]["NetworkMode"].removeprefix("container:"))
    assert km.transport == "ipc" and holder["HostConfig"]["NetworkMode"] == "none"  # the namespace it joined
    assert holder["Config"]["Labels"][L_UID] == str(os.getuid()) and not holder["HostConfig"]["CapAdd"]
    assert not attrs["NetworkSettings"]["Ports"] and not attrs["HostConfig"]["PortBindings"]
    assert attrs["HostConfig"]["Init"] is True and attrs["HostConfig"]["ShmSize"] == 2 * 1024**3
    everything = json.dumps(attrs)
    key = km.session.key.decode()
    assert key and key not in everything  # not in labels, environment or command line
    assert "do-not-leak" not in everything
    out, _ = await execute(jp_serverapp, kernel_id, "import os; print(sorted(os.environ))")
    assert "AWS_SECRET_ACCESS_KEY" not in out and "'HOME'" in out
    connection_file = km.connection_file
    assert os.stat(connection_file).st_mode & 0o077 == 0  # the key's file is the user's alone


async def test_interrupt_restart_and_shutdown(jp_fetch, jp_serverapp, kernelspec, docker_client):
    kernel_id = await start(jp_fetch, kernelspec)
    prov = provisioner(jp_serverapp, kernel_id)
    socket_dir = prov.socket_dir
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    await client.wait_for_ready(timeout=30)
    msg_id = client.execute("import time; time.sleep(60)")
    await asyncio.sleep(1.0)
    started = time.monotonic()
    await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
    reply = await client.get_shell_msg(timeout=10)
    client.stop_channels()
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 5

    first_container = prov.placement.container_id
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    prov = provisioner(jp_serverapp, kernel_id)
    assert (
        prov.placement.container_id and prov.placement.container_id != first_container and prov.socket_dir == socket_dir
    )
    out, error = await execute(jp_serverapp, kernel_id, "print(6 * 7)")
    assert (out.strip(), error) == ("42", None)
    assert our_containers(docker_client, kernel_id) and [c.id for c in our_containers(docker_client, kernel_id)] == [
        prov.placement.container_id
    ]

    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    assert our_containers(docker_client, kernel_id) == []
    assert not os.path.exists(socket_dir)


async def test_a_container_killed_from_outside_comes_back(jp_fetch, jp_serverapp, kernelspec, docker_client):
    kernel_id = await start(jp_fetch, kernelspec)
    old = provisioner(jp_serverapp, kernel_id).placement.container_id
    docker_client.containers.get(old).kill()

    async def replaced():
        for _ in range(300):
            placement = provisioner(jp_serverapp, kernel_id).placement
            current = placement and placement.container_id
            if current and current != old:
                return current
            await asyncio.sleep(0.1)
        raise AssertionError("the restarter did not bring the kernel back within 30 s")

    await replaced()
    out, error = await execute(jp_serverapp, kernel_id, "print('back')")
    assert (out.strip(), error) == ("back", None)


@pytest.fixture
def orphan(docker_client, tmp_path):
    """A kernel container left by a server process that no longer exists, made before the server starts."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    socket_dir = tmp_path / "orphan-kernel"
    socket_dir.mkdir()
    import socket as socket_module

    container = docker_client.containers.run(
        IMAGE,
        ["sleep", "600"],
        detach=True,
        network_mode="none",
        labels={
            L_KERNEL: "orphan-kernel",
            L_SERVER_HOST: socket_module.gethostname(),
            L_SERVER_PID: str(dead.pid),
            L_UID: str(os.getuid()),
            L_SOCKETS: str(socket_dir),
        },
    )
    yield container, socket_dir
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


async def test_a_starting_server_removes_what_a_dead_one_left(orphan, jp_serverapp, docker_client):
    container, socket_dir = orphan
    wait_until(lambda: not our_containers(docker_client, "orphan-kernel"), timeout=20)
    assert not socket_dir.exists()


def socket_folders():
    root = f"/tmp/gpuenv-{os.getuid()}"
    return set(os.listdir(root)) if os.path.isdir(root) else set()


async def test_missing_image_is_refused_and_leaves_nothing(jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "missing", {"image": "gpuenv-does-not-exist:1.0"})
    before = socket_folders()
    code, message = await start_error(jp_fetch, name)
    assert code == 409 and "gpuenv-does-not-exist:1.0 is not on the Docker engine and pulling is off" in message
    assert our_containers(docker_client) == [] and socket_folders() == before


async def test_engine_down_answers_within_seconds(jp_fetch, jp_data_dir, jp_serverapp, tmp_path):
    name = install_spec(jp_data_dir, "test", {})
    jp_serverapp.config.GpuEnv.docker_url = f"unix://{tmp_path}/no-engine.sock"
    started = time.monotonic()
    code, message = await start_error(jp_fetch, name)
    assert time.monotonic() - started < 6
    assert code == 503 and "Docker engine not reachable" in message and "no-engine.sock" in message


async def test_bad_kernelspec_config_names_the_key(jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "bad", {"raw": {"environment": "bad", "image": IMAGE, "shm": "1g"}})
    code, message = await start_error(jp_fetch, name)
    assert code == 400 and "unknown key(s) 'shm'" in message
    assert our_containers(docker_client) == []


@pytest.fixture
def two_gpus(fake_nvml):
    return fake_nvml


async def test_image_needing_a_newer_cuda_is_refused_before_start(two_gpus, jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "future", {"gpus": "all", "cuda_version": "99.0"})
    code, message = await start_error(jp_fetch, name)
    assert code == 409 and "needs CUDA 99.0" in message and "up to 13.0" in message
    assert our_containers(docker_client) == []


@pytest.mark.parametrize("recording", ["no-driver"])
async def test_gpus_asked_where_there_are_none(fake_nvml, jp_fetch, jp_data_dir, docker_client):
    name = install_spec(jp_data_dir, "wants", {"gpus": "1"})
    code, message = await start_error(jp_fetch, name)
    assert "asks for GPUs (1) but this server sees none" in message and "no NVIDIA driver" in message
    assert our_containers(docker_client) == []


async def test_exclusive_kernels_started_at_once_never_share_a_gpu(
    two_gpus, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    # CI has no GPU device to attach (gpu_mode none); the choice and its record in the engine are real
    name = install_spec(jp_data_dir, "excl", {"gpus": "exclusive:1", "gpu_mode": "none"})
    results = await asyncio.gather(*(start(jp_fetch, name) for _ in range(3)), return_exceptions=True)
    started = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if not isinstance(r, str)]
    assert len(started) == 2 and len(refused) == 1
    assert "no 1 free GPU(s) for an exclusive kernel" in json.loads(refused[0].response.body)["message"]
    held = [provisioner(jp_serverapp, k).placement.gpus[0].uuid for k in started]
    assert sorted(held) == sorted(g["nvmlDeviceGetUUID"] for g in two_gpus.recording["devices"])
    kernels = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    assert sorted(k["gpus"][0] for k in kernels) == [0, 1]
    assert {k["environment"] for k in kernels} == {"excl"}


async def test_ten_kernels_started_at_once_all_come_up(jp_fetch, jp_serverapp, kernelspec, docker_client):
    ids = await asyncio.gather(*(start(jp_fetch, kernelspec) for _ in range(10)))
    assert len(set(ids)) == 10
    outputs = await asyncio.gather(*(execute(jp_serverapp, k, f"print({i})", timeout=60) for i, k in enumerate(ids)))
    assert [o[0].strip() for o in outputs] == [str(i) for i in range(10)]
    assert len(our_containers(docker_client)) == 10


async def test_environments_api(two_gpus, jp_fetch, jp_data_dir, docker_client):
    install_spec(jp_data_dir, "test", {"display_name": "Test kernel"})
    install_spec(jp_data_dir, "future", {"gpus": "all", "cuda_version": "99.0"})
    install_spec(jp_data_dir, "missing", {"image": "gpuenv-does-not-exist:1.0"})
    install_spec(jp_data_dir, "bad", {"raw": {"environment": "bad", "image": IMAGE, "shm": "1g"}})
    body = json.loads((await jp_fetch("gpuenv", "api", "environments")).body)
    assert body["docker"] == {"available": True, "reason": None}
    rows = {e["name"]: e for e in body["environments"]}
    assert rows["test"]["state"] == "ready" and rows["test"]["image_present"] is True
    assert rows["test"]["kernelspec"] == "gpuenv-test" and rows["test"]["display_name"] == "Test kernel"
    assert rows["future"]["state"] == "incompatible" and "needs CUDA 99.0" in rows["future"]["reason"]
    assert rows["missing"]["state"] == "image-missing" and rows["missing"]["image_present"] is False
    assert rows["bad"]["state"] == "invalid" and "unknown key(s) 'shm'" in rows["bad"]["reason"]


async def test_gpu_memory_of_a_container_kernel_is_attributed_to_it(
    two_gpus, jp_fetch, jp_serverapp, kernelspec, docker_client
):
    """NVML names host PIDs; /proc/<pid>/cgroup names the container; its label names the kernel."""
    kernel_id = await start(jp_fetch, kernelspec)
    container_id = provisioner(jp_serverapp, kernel_id).placement.container_id
    host_pid = docker_client.api.inspect_container(container_id)["State"]["Pid"]  # a process in the container
    two_gpus.recording["devices"][1]["nvmlDeviceGetComputeRunningProcesses"] = [
        {"pid": host_pid, "usedGpuMemory": 3 * 1024**3}
    ]
    sampler = jp_serverapp.web_app.settings["gpuenv_sampler"]
    wait_until(lambda: any(p.kernel_id for g in sampler.latest.gpus for p in g.processes))
    gpus = json.loads((await jp_fetch("gpuenv", "api", "gpus")).body)["gpus"]
    proc = gpus[1]["processes"][0]
    assert (proc["kernel_id"], proc["container_id"]) == (kernel_id, container_id)
    kernels = json.loads((await jp_fetch("gpuenv", "api", "kernels")).body)["kernels"]
    row = next(k for k in kernels if k["kernel_id"] == kernel_id)
    assert row["gpu_memory"] == 3 * 1024**3 and row["container_id"] == container_id and row["environment"] == "test"


@pytest.fixture(scope="session")
def python_only_image(docker_client):
    """The test image with its Python packages removed: like a stock image, Python but no ipykernel."""
    tag = "gpuenv-test-python-only:latest"
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    container = docker_client.containers.run(
        IMAGE, ["sh", "-c", "rm -rf /usr/local/lib/python3*/dist-packages/*"], detach=True, network_mode="none"
    )
    container.wait()
    container.commit(repository=tag.split(":")[0], tag="latest")
    container.remove()
    return tag


async def test_image_without_ipykernel_runs_with_a_prepared_runtime(
    jp_fetch, jp_serverapp, jp_data_dir, jp_config_dir, tmp_path, python_only_image, docker_client
):
    name = install_spec(jp_data_dir, "stock", {"image": python_only_image})
    runtimes = tmp_path / "runtimes"
    jp_serverapp.config.GpuEnv.kernel_runtime_dir = str(runtimes)
    # the command line reads the same setting from the server's configuration file
    (jp_config_dir / "jupyter_server_config.py").write_text(f"c.GpuEnv.kernel_runtime_dir = {str(runtimes)!r}\n")
    code, message = await start_error(jp_fetch, name)
    assert code == 409 and "has no ipykernel" in message and "jupyter gpuenv prepare-runtime 3.11" in message
    assert our_containers(docker_client) == []

    from jupyter_gpuenv.cli.main import main

    assert main(["prepare-runtime", "3.11"]) == 0  # pip, from the package index, into the configured folder
    kernel_id = await start(jp_fetch, name)
    out, error = await execute(jp_serverapp, kernel_id, "import ipykernel, sys; print(ipykernel.__file__)")
    assert error is None and out.strip().startswith("/opt/gpuenv-kernel/")


async def test_the_flagship_kernel_is_offered_by_its_name(jp_fetch, docker_client):
    from jupyter_gpuenv.cli.main import main

    assert main(["add", "pytorch-2.6-cuda12.4", "--user"]) == 0
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    assert specs["gpuenv-pytorch-2.6-cuda12.4"]["spec"]["display_name"] == "PyTorch 2.6 / CUDA 12.4"


async def test_container_kernels_get_only_the_servers_visible_gpus(
    two_gpus, jp_fetch, jp_serverapp, jp_data_dir, docker_client
):
    """Under JupyterHub each server sees its own GPUs; its container kernels must get only those."""
    sampler = jp_serverapp.web_app.settings["gpuenv_sampler"]
    sampler.visibility = parse_visibility("1", "CUDA_VISIBLE_DEVICES")
    wait_until(lambda: [g.index for g in sampler.latest.gpus] == [1])
    name = install_spec(jp_data_dir, "one", {"gpus": "exclusive:1", "gpu_mode": "none"})
    kernel_id = await start(jp_fetch, name)
    assert [g.index for g in provisioner(jp_serverapp, kernel_id).placement.gpus] == [1]
    code, message = await start_error(jp_fetch, name)
    assert code == 409 and "GPU 1 held by kernel(s)" in message and "GPU 0" not in message


async def test_tcp_transport_listens_on_loopback_only(jp_fetch, jp_serverapp, jp_data_dir, docker_client):
    """The alternative for engines without a shared filesystem: tcp on 127.0.0.1, host network, no published port."""
    name = install_spec(jp_data_dir, "tcp", {"network": "host", "transport": "tcp"})
    kernel_id = await start(jp_fetch, name)
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    assert (km.transport, km.ip) == ("tcp", "127.0.0.1")
    attrs = docker_client.api.inspect_container(provisioner(jp_serverapp, kernel_id).placement.container_id)
    assert attrs["HostConfig"]["NetworkMode"] == "host" and not attrs["HostConfig"]["PortBindings"]
    out, error = await execute(jp_serverapp, kernel_id, "print('over tcp')")
    assert (out.strip(), error) == ("over tcp", None)
    with open("/proc/net/tcp") as table:
        listening = table.read().splitlines()[1:]
    ports = {
        int(line.split()[1].split(":")[1], 16): line.split()[1].split(":")[0]
        for line in listening
        if line.split()[3] == "0A"
    }  # 0A: LISTEN
    assert ports[km.shell_port] == "0100007F"  # 127.0.0.1, not 0.0.0.0


# -- the network namespace: one per user, loopback only ------------------------------------------------------
INSIDE_NETWORK = """
import os, socket
print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:]))
print(sorted(os.listdir({parent!r})), os.path.exists({other!r}))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({other_socket!r})
    print('connected')
except OSError as exc:
    print(type(exc).__name__)
tables = open('/proc/net/tcp').read().splitlines()[1:] + open('/proc/net/tcp6').read().splitlines()[1:]
print(sorted(set(line.split()[1].split(':')[0] for line in tables if line.split()[3] == '0A')))
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2)
    print('reached')
except OSError:
    print('unreachable')
"""


@pytest.mark.parametrize("shared", [True, False], ids=["shared-namespace", "namespace-each"])
async def test_a_kernel_has_loopback_only_and_reaches_no_other_kernels_sockets(
    shared, jp_fetch, jp_serverapp, kernelspec, docker_client
):
    jp_serverapp.config.GpuEnv.shared_network_namespace = shared
    first, second = await asyncio.gather(start(jp_fetch, kernelspec), start(jp_fetch, kernelspec))
    mine, other = provisioner(jp_serverapp, first), provisioner(jp_serverapp, second)
    other_km = jp_serverapp.kernel_manager.get_kernel(second)
    await execute(jp_serverapp, second, "pass")  # its sockets are bound
    code = INSIDE_NETWORK.format(
        parent=os.path.dirname(mine.socket_dir),
        other=other.socket_dir,
        other_socket=f"{other_km.ip}-{other_km.shell_port}",
    )
    out, error = await execute(jp_serverapp, first, code)
    assert error is None, out
    interfaces, folders, reached, listening, internet = out.strip().splitlines()
    assert interfaces == "['lo']"  # no interface but loopback
    # only its own socket folder is mounted: another kernel's folder and sockets are not there
    assert folders == f"[{os.path.basename(mine.socket_dir)!r}] False"
    assert reached == "FileNotFoundError" and os.path.exists(f"{other_km.ip}-{other_km.shell_port}")
    # the kernel protocol is on ipc sockets; what listens on TCP (ipykernel's IOPub pipe for forked processes)
    # listens on loopback, which is all there is
    assert listening in ("[]", "['0100007F']")
    assert internet == "unreachable"
    modes = {
        docker_client.api.inspect_container(p.placement.container_id)["HostConfig"]["NetworkMode"]
        for p in (mine, other)
    }
    if shared:  # one user's kernels: one namespace, held by a container of its own
        (mode,) = modes
        assert mode.startswith("container:")
    else:
        assert modes == {"none"}


async def test_a_namespace_holder_removed_from_outside_is_made_again(jp_fetch, jp_serverapp, kernelspec, docker_client):
    first = await start(jp_fetch, kernelspec)
    inspect = docker_client.api.inspect_container
    holder = inspect(provisioner(jp_serverapp, first).placement.container_id)["HostConfig"]["NetworkMode"]
    docker_client.api.remove_container(holder.removeprefix("container:"), force=True)
    second = await start(jp_fetch, kernelspec)
    again = inspect(provisioner(jp_serverapp, second).placement.container_id)["HostConfig"]["NetworkMode"]
    assert again.startswith("container:") and again != holder
    for kernel_id in (first, second):  # the first keeps the namespace it had: still loopback only
        out, error = await execute(jp_serverapp, kernel_id, "print(open('/proc/net/dev').read().count(':'))")
        assert (out.strip(), error) == ("1", None)


async def test_another_users_kernels_never_share_a_namespace(docker_client, tmp_path):
    """Per uid, and per name: a broker in hub-token mode runs every person's kernels with one uid."""
    from jupyter_gpuenv.containers.labels import USER as L_USER
    from jupyter_gpuenv.engines.base import KernelRequest
    from jupyter_gpuenv.engines.docker.engine import DockerEngine
    from jupyter_gpuenv.environments.definition import parse_environment
    from jupyter_gpuenv.host import Server, User

    env = parse_environment("test", {"image": IMAGE, "gpus": "none"}, "test")
    engine = DockerEngine(None, 10.0)
    alice, bob = User("gpuenv-alice", 61001, 61001, str(tmp_path)), User("gpuenv-bob", 61002, 61002, str(tmp_path))
    carol = User("gpuenv-carol", 61001, 61001, str(tmp_path))  # alice's uid, another person
    users, placements, tag = [alice, bob, carol, alice], [], secrets.token_hex(4)
    try:
        for i, user in enumerate(users):
            folder = tmp_path / f"k{i}"
            folder.mkdir()
            request = KernelRequest(
                environment=env,
                kernel_id=f"nstest-{tag}-{i}",
                user=user,
                server=Server(socket.gethostname(), os.getpid()),
                root_dir=str(tmp_path),
                cwd=str(tmp_path),
                socket_dir=str(folder),
                connection_file=str(folder / "connection.json"),
                terminal=True,  # a container that only waits: enough to see its namespace
                shared_network_namespace=True,
            )
            placements.append(await engine.start_kernel(request))
        modes = [docker_client.api.inspect_container(p.container_id)["HostConfig"]["NetworkMode"] for p in placements]
        assert modes[0] == modes[3] and len(set(modes[:3])) == 3  # alice's two share; alice, bob, carol do not
        for mode, user in zip(modes, users, strict=True):
            holder = docker_client.api.inspect_container(mode.removeprefix("container:"))
            assert holder["HostConfig"]["NetworkMode"] == "none" and holder["State"]["Running"]
            assert holder["Config"]["User"] == f"{user.uid}:{user.gid}"
            assert (
                holder["Config"]["Labels"][L_UID] == str(user.uid) and holder["Config"]["Labels"][L_USER] == user.name
            )
    finally:
        for p in placements:
            await engine.remove(p.container_id)
        await engine.remove_unused_holders(lambda h: h.uid in ("61001", "61002") and h.server_pid == str(os.getpid()))
        engine.close()
    left = docker_client.containers.list(all=True, filters={"label": f"{L_UID}=61001"})
    assert left == []


async def test_a_namespace_holder_goes_with_the_last_kernel_that_joined_it(docker_client, tmp_path):
    """A user's namespace holder outlives none of their kernels: a clean stop leaves no gpuenv-netns-* behind."""
    from jupyter_gpuenv.engines.base import KernelRequest
    from jupyter_gpuenv.engines.docker.engine import DockerEngine
    from jupyter_gpuenv.environments.definition import parse_environment
    from jupyter_gpuenv.errors import GpuEnvError
    from jupyter_gpuenv.host import Server, User

    env = parse_environment("test", {"image": IMAGE, "gpus": "none"}, "test")
    engine = DockerEngine(None, 10.0)
    user, tag = User("gpuenv-holder", 61003, 61003, str(tmp_path)), secrets.token_hex(4)
    placements = []
    try:
        for i in range(2):
            folder = tmp_path / f"k{i}"
            folder.mkdir()
            request = KernelRequest(
                environment=env,
                kernel_id=f"holdertest-{tag}-{i}",
                user=user,
                server=Server(socket.gethostname(), os.getpid()),
                root_dir=str(tmp_path),
                cwd=str(tmp_path),
                socket_dir=str(folder),
                connection_file=str(folder / "connection.json"),
                terminal=True,  # a container that only waits: enough to join the namespace
                shared_network_namespace=True,
            )
            placements.append(await engine.start_kernel(request))
        (mode,) = {docker_client.api.inspect_container(p.container_id)["HostConfig"]["NetworkMode"] for p in placements}
        holder = mode.removeprefix("container:")
        assert docker_client.api.inspect_container(holder)["Name"].startswith("/gpuenv-netns-61003-")
        await engine.remove(placements[0].container_id)
        assert docker_client.api.inspect_container(holder)["State"]["Running"]  # another kernel still joins it
        await engine.remove(placements[1].container_id)
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_container(holder)
        wants_gpu = parse_environment("test", {"image": IMAGE, "gpus": "exclusive:1"}, "test")
        refused = dataclasses.replace(request, kernel_id=f"holdertest-{tag}-refused", environment=wants_gpu)
        with pytest.raises(GpuEnvError):  # no GPU in its inventory: refused after its holder was made
            await engine.start_kernel(refused)
        assert docker_client.containers.list(all=True, filters={"label": f"{L_UID}=61003"}) == []
    finally:
        for p in placements:
            await engine.remove(p.container_id)
        await engine.remove_unused_holders(lambda h: h.uid == "61003" and h.server_pid == str(os.getpid()))
        engine.close()
    assert docker_client.containers.list(all=True, filters={"label": f"{L_UID}=61003"}) == []


@pytest.fixture
def left_holders(docker_client):
    """Two namespace holders of this user, made by a server that is gone: one a container still joins, one not."""
    from jupyter_gpuenv.containers.labels import holder_labels
    from jupyter_gpuenv.containers.spec import HOLDER_COMMAND
    from jupyter_gpuenv.host import current_user

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    user, made = current_user(), []

    def holder(tag: str, which: str):
        return docker_client.containers.run(
            IMAGE,
            ["python3", "-c", HOLDER_COMMAND],
            name=f"gpuenv-test-netns-{tag}-{which}",
            detach=True,
            network_mode="none",
            labels=holder_labels(user.uid, user.name, socket.gethostname(), dead.pid),
        )

    # a server that another test started may still be sweeping orphans: a holder it takes before our container
    # joins it is made again
    for _ in range(5):
        tag = secrets.token_hex(4)
        made = [holder(tag, "unused"), holder(tag, "used")]
        try:
            made.append(
                docker_client.containers.run(
                    IMAGE,
                    ["sleep", "600"],
                    name=f"gpuenv-test-join-{tag}",
                    detach=True,
                    network_mode=f"container:{made[1].id}",
                )
            )
            break
        except docker.errors.APIError:
            for name in (f"gpuenv-test-join-{tag}", made[1].id, made[0].id):
                # gone, or being removed by that sweep right now (a 409): either way, try again with new ones
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.api.remove_container(name, force=True)
    yield made[0], made[1]
    for container in reversed(made):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


async def test_a_starting_server_removes_the_namespace_holders_nothing_joins(left_holders, jp_serverapp, docker_client):
    unused, used = left_holders
    wait_until(lambda: not docker_client.containers.list(all=True, filters={"id": unused.id}), timeout=20)
    assert docker_client.containers.get(used.id).status == "running"  # a container still joins it


async def test_starts_reuse_what_the_engine_said_of_the_image(
    jp_fetch, jp_data_dir, jp_serverapp, docker_client, monkeypatch
):
    """One inspection serves the starts that follow it; an image removed meanwhile is a 409 that says so."""
    doomed = f"gpuenv-test-doomed:{secrets.token_hex(4)}"
    docker_client.images.get(IMAGE).tag(doomed)
    asked = []
    inspect_image = docker.APIClient.inspect_image
    monkeypatch.setattr(
        docker.APIClient, "inspect_image", lambda self, image: asked.append(image) or inspect_image(self, image)
    )
    try:
        name = install_spec(jp_data_dir, "doomed", {"image": doomed})
        for _ in range(2):
            await start(jp_fetch, name)
        assert asked.count(doomed) <= 1
        docker_client.images.remove(doomed)
        code, message = await start_error(jp_fetch, name)
        assert code == 409 and "was removed from the Docker engine a moment ago" in message
        code, message = await start_error(jp_fetch, name)  # asked again: now the image is known to be missing
        assert code == 409 and "is not on the Docker engine and pulling is off" in message
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(doomed)


async def test_a_kernel_that_dies_at_once_does_not_hold_up_its_start(jp_fetch, jp_data_dir, docker_client):
    """A start waits for the kernel's sockets, but not for those of a kernel whose container has ended."""
    name = install_spec(jp_data_dir, "dies", {"python": "/bin/false", "kernel_runtime": "image"})
    started = time.monotonic()
    with contextlib.suppress(HTTPClientError):
        await start(jp_fetch, name)
    assert time.monotonic() - started < 10
