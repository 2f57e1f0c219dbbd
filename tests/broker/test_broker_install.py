"""`jupyter gpuenv broker install`, for real as far as this machine allows: files written, images asked of the real
engine, the unit checked by the real `systemd-analyze verify`; enabling it only where systemd runs the machine."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_gpuenv.broker.setup import example_config
from jupyter_gpuenv.environments import kernelspecs

IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")


def install(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    where = ["--config", str(tmp_path / "etc" / "broker_config.py"), "--prefix", str(tmp_path / "prefix"),
             "--unit", str(tmp_path / "systemd" / "jupyter-gpuenv-broker.service")]  # fmt: skip
    command = [sys.executable, "-m", "jupyter_gpuenv.cli.main", "broker", "install", *where, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def engine_with_image():
    docker = pytest.importorskip("docker")
    try:
        docker.from_env(timeout=10).images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason: no engine with the test image here
        if os.environ.get("CI"):
            pytest.fail(f"needs the Docker engine with {IMAGE}: {exc}")
        pytest.skip(f"needs the Docker engine with {IMAGE}: {exc}")


def test_install_does_the_hosts_part_and_says_what_it_did(tmp_path, engine_with_image):
    config = tmp_path / "etc" / "broker_config.py"
    config.parent.mkdir()
    config.write_text(
        f"c.Broker.socket = {str(tmp_path / 'run' / 'broker.sock')!r}\n"
        f"c.Broker.environments = {{'gpu': {{'display_name': 'Test GPU', 'image': {IMAGE!r}, 'gpus': 'exclusive:1'}},"
        f" 'cpu': {{'display_name': 'Test CPU', 'image': {IMAGE!r}, 'gpus': 'none'}}}}\n"
        f"c.Broker.kernel_runtime_dir = {str(tmp_path / 'runtimes')!r}\n"
    )
    done = install(tmp_path)
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert f"kept     {config} (already there" in out
    kernels = tmp_path / "prefix" / "share" / "jupyter" / "kernels"
    for name, display in (("gpu", "Test GPU"), ("cpu", "Test CPU")):
        spec = json.loads((kernels / f"gpuenv-{name}" / "kernel.json").read_text())
        assert spec["display_name"] == display
        assert spec["metadata"]["kernel_provisioner"]["config"] == {"environment": name}
        assert f"kernel {display!r}" in out
        logo = (kernels / f"gpuenv-{name}" / "logo-svg.svg").read_text()  # the Launcher's tile: a card or a chip
        assert logo == (Path(kernelspecs.LOGOS) / f"{name}.svg").read_text()
    server = tmp_path / "prefix" / "etc" / "jupyter" / "jupyter_server_config.d" / "jupyter_gpuenv_broker.json"
    assert json.loads(server.read_text()) == {"GpuEnv": {"broker": f"unix://{tmp_path / 'run' / 'broker.sock'}"}}
    assert f"kept     image {IMAGE} (already on the engine)" in out  # asked of the real engine, once per image
    assert out.count(f"image {IMAGE}") == 1
    unit = tmp_path / "systemd" / "jupyter-gpuenv-broker.service"
    text = unit.read_text()
    assert f"broker --config {config}\n" in text and "WantedBy=multi-user.target" in text
    executable = text.split("ExecStart=", 1)[1].split()[0]
    assert os.path.isabs(executable) and os.access(executable, os.X_OK)  # sudo's PATH may not have it
    if shutil.which("systemd-analyze"):
        assert "(checked by systemd-analyze verify)" in out
    if not os.path.isdir("/run/systemd/system"):
        assert "skipped  starting the broker: systemd does not run this machine; run it yourself:" in out
    assert 'c.Spawner.args = ["--GpuEnv.broker=unix://' in out  # the hub's part, said at the end

    again = install(tmp_path)  # idempotent: the same result, nothing doubled
    assert again.returncode == 0 and again.stdout == out

    config.write_text(config.read_text().replace("'cpu': ", "'cpu2': "))  # an environment renamed
    third = install(tmp_path, "--no-pull")
    assert third.returncode == 0, third.stdout
    assert "removed kernel gpuenv-cpu: 'cpu' is no longer in the configuration" in third.stdout
    assert sorted(os.listdir(kernels)) == ["gpuenv-cpu2", "gpuenv-gpu"]


def test_install_without_a_configuration_writes_the_example(tmp_path):
    done = install(tmp_path, "--no-pull", "--no-start")
    assert done.returncode == 0, (done.stdout, done.stderr)
    config = tmp_path / "etc" / "broker_config.py"
    assert config.read_text() == example_config() and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert f"done     {config}, from the example" in done.stdout
    kernels = tmp_path / "prefix" / "share" / "jupyter" / "kernels"
    assert sorted(os.listdir(kernels)) == ["gpuenv-cpu", "gpuenv-pytorch", "gpuenv-pytorch-2gpu"]
    assert "skipped  images and kernel runtimes (--no-pull)" in done.stdout
    assert "skipped  starting the broker (--no-start)" in done.stdout


def test_install_with_a_wrong_configuration_stops_before_anything_else(tmp_path):
    config = tmp_path / "etc" / "broker_config.py"
    config.parent.mkdir()
    config.write_text("c.Broker.enviroments = {}\nc.Broker.policy = {'default': {'environments': ['gpu']}}\n")
    done = install(tmp_path, "--no-pull", "--no-start")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "2 problems in" in done.stderr and "did you mean c.Broker.environments?" in done.stderr
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "systemd").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze (Debian: systemd)")
def test_the_unit_is_one_systemd_accepts(tmp_path):
    from jupyter_gpuenv.broker.install import unit_text

    unit = tmp_path / "jupyter-gpuenv-broker.service"
    unit.write_text(unit_text("/etc/jupyter-gpuenv/broker_config.py"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    unit.write_text(unit_text("/etc/x.py").replace("ExecStart=/", "ExecStart=/nonexistent/"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd="/")
    assert done.returncode != 0 and "not executable" in done.stderr  # the check can fail


@pytest.fixture
def image_without_ipykernel(engine_with_image):
    """The test kernel image less its ipykernel, as the stock PyTorch images come."""
    import docker

    client = docker.from_env(timeout=60)
    tag = f"gpuenv-test-no-ipykernel:{os.getpid()}"
    container = client.containers.create(
        IMAGE, ["sh", "-c", "rm -rf /usr/local/lib/python3*/dist-packages/ipykernel*"], network_mode="none"
    )
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        container.commit(*tag.split(":"))
    finally:
        container.remove(force=True)
    yield tag
    client.images.remove(tag, force=True)


def test_install_prepares_a_kernel_runtime_for_an_image_without_ipykernel(tmp_path, image_without_ipykernel):
    config = tmp_path / "etc" / "broker_config.py"
    config.parent.mkdir()
    runtimes = tmp_path / "runtimes"
    config.write_text(
        f"c.Broker.environments = {{'bare': {{'image': {image_without_ipykernel!r}, 'gpus': 'none'}}}}\n"
        f"c.Broker.kernel_runtime_dir = {str(runtimes)!r}\n"
    )
    done = install(tmp_path, "--no-start")
    assert done.returncode == 0, (done.stdout, done.stderr)
    (line,) = [line for line in done.stdout.splitlines() if "kernel runtime for Python" in line]
    assert line.startswith("  done     kernel runtime for Python 3.") and "no ipykernel in its image" in line
    from jupyter_gpuenv.environments.runtime import prepared_versions

    (version,) = prepared_versions(str(runtimes))
    assert f"Python {version} in {runtimes}" in line
    again = install(tmp_path, "--no-start")  # prepared once: kept the second time
    assert f"  kept     kernel runtime for Python {version}" in again.stdout


def test_install_without_a_docker_engine_says_so_once(tmp_path):
    config = tmp_path / "etc" / "broker_config.py"
    config.parent.mkdir()
    config.write_text(
        f"c.Broker.docker_url = {'unix://' + str(tmp_path / 'no-docker.sock')!r}\n"
        "c.Broker.environments = {'a': {'image': 'img/a:1', 'gpus': 'none'},\n"
        "                          'b': {'image': 'img/b:1', 'gpus': 'none'}}\n"
    )
    done = install(tmp_path, "--no-start")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (failed,) = [line for line in done.stdout.splitlines() if line.startswith("  FAILED")]
    assert failed.startswith("  FAILED   images and kernel runtimes:") and "no-docker.sock" in failed
    assert "1 step(s) FAILED" in done.stdout
    assert (tmp_path / "systemd" / "jupyter-gpuenv-broker.service").is_file()  # the rest was done
