"""A container kernel behaves like any kernel to every client: jupyter_client's synchronous managers (qtconsole,
nbclient's scripts, ``start_new_kernel``), signals to the kernel's children, and ending with a client that dies.

Where a behaviour is a local kernel's too, the test runs against both, the local ``python3`` kernel as the control:
a difference then comes from the provisioner. Real kernels in real containers (the image .ci/test.sh builds).
"""

import signal
import threading

import pytest
from conftest import wait_until
from container_harness import install_spec, our_containers
from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import MultiKernelManager

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def root(tmp_path, monkeypatch, jp_environ):
    """The client's working folder, which a container kernel sees at the same path (its root outside a server)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def container_spec(root, jp_data_dir, docker_client):
    return install_spec(jp_data_dir, "test", {})


@pytest.fixture(params=["local", "container"])
def kernel_name(request, root):
    return "python3" if request.param == "local" else request.getfixturevalue("container_spec")


def run(client, code, timeout=60):
    """Execute ``code`` over a blocking client: (stdout, error name or None)."""
    out, errors = [], []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append(msg["content"]["ename"])

    client.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out), (errors[0] if errors else None)


def container_of(km):
    placement = getattr(km.provisioner, "placement", None)
    return placement.container_id if placement else None


@pytest.fixture
def sync_kernel(container_spec):
    """A container kernel under jupyter_client's synchronous KernelManager, as qtconsole and scripts have it."""
    km = KernelManager(kernel_name=container_spec)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield km, client
    client.stop_channels()
    km.shutdown_kernel(now=True)


# -- synchronous managers restart a container kernel ---------------------------------------------------------
def test_a_synchronous_kernel_manager_restarts_a_container_kernel(sync_kernel, docker_client):
    km, client = sync_kernel
    assert run(client, "state = 'kept'") == ("", None)
    before = container_of(km)
    assert km.restart_kernel() is None  # a plain call, as for a local kernel: no coroutine left to await
    assert container_of(km) != before and [c.id for c in our_containers(docker_client, km.kernel_id)] == [
        container_of(km)
    ]
    client.wait_for_ready(timeout=60)
    assert run(client, "print('state' in dir())") == ("False\n", None)


def test_concurrent_restarts_of_a_synchronous_manager_are_serialised(sync_kernel, docker_client):
    km, client = sync_kernel
    assert run(client, "state = 'kept'") == ("", None)
    before, failures = container_of(km), []

    def restart():
        try:
            km.restart_kernel()
        except Exception as exc:  # noqa: BLE001 - what the other thread's restart made of this one
            failures.append(exc)

    threads = [threading.Thread(target=restart) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert container_of(km) != before
    assert [c.id for c in our_containers(docker_client, km.kernel_id)] == [container_of(km)]
    client.wait_for_ready(timeout=60)
    assert run(client, "print('state' in dir())") == ("False\n", None)


def test_a_synchronous_multi_kernel_manager_restarts_a_container_kernel(container_spec, docker_client):
    mkm = MultiKernelManager()
    kernel_id = mkm.start_kernel(kernel_name=container_spec)
    try:
        client = mkm.get_kernel(kernel_id).client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        assert run(client, "state = 'kept'") == ("", None)
        before = container_of(mkm.get_kernel(kernel_id))
        mkm.restart_kernel(kernel_id)
        assert container_of(mkm.get_kernel(kernel_id)) not in (None, before)
        client.wait_for_ready(timeout=60)
        assert run(client, "print('state' in dir())") == ("False\n", None)
        client.stop_channels()
    finally:
        mkm.shutdown_all(now=True)
    assert our_containers(docker_client, kernel_id) == []


# -- signals reach the kernel's children ---------------------------------------------------------------------
CHILD = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, '-c', '''
import signal, sys, time
def noted(signum, frame):
    open(sys.argv[1], "w").write(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGINT, noted)
signal.signal(signal.SIGTERM, noted)
print("ready", flush=True)
time.sleep(300)
''', {path!r}], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip())
"""


def started_child(client, path):
    assert run(client, CHILD.format(path=str(path))) == ("ready\n", None)


def test_an_interrupt_reaches_the_kernels_child_processes(kernel_name, root):
    """jupyter_client's test_signal_kernel_subprocesses, for any kernel: a local kernel's interrupt goes to its
    process group, so a launcher's or a DataLoader's workers are interrupted with the cell."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        started_child(client, root / "child-noted")
        msg_id = client.execute("import time; print('sleeping', flush=True); time.sleep(300)")
        wait_until(lambda: client.get_iopub_msg(timeout=10)["content"].get("text") == "sleeping\n", 20)
        km.interrupt_kernel()
        reply = client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
        assert wait_until(lambda: (root / "child-noted").exists() and (root / "child-noted").read_text()) == "SIGINT"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_signals_of_a_restart_or_shutdown_reach_the_kernels_child_processes(kernel_name, root):
    """A kernel that does not end when asked gets SIGTERM from its manager (``terminate``); so do its children."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        started_child(client, root / "child-noted")
        km.signal_kernel(signal.SIGTERM)
        assert wait_until(lambda: (root / "child-noted").exists() and (root / "child-noted").read_text()) == "SIGTERM"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
