"""What the container-kernel tests share: the test image, kernelspecs, starting and driving kernels.

Loaded as a pytest plugin by conftest.py, so its fixtures reach every test module.

The image is the small local one that .ci/test.sh builds (tests/images/build-kernel-image.sh).
"""

import asyncio
import json
import os
import time

import docker
import pytest
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv.containers.labels import KERNEL as L_KERNEL
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.environments.kernelspecs import kernelspec_json

IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(timeout=10)
        client.images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means the same: these tests cannot run
        if os.environ.get("CI"):
            pytest.fail(f"Docker engine or {IMAGE} missing in CI: {exc}")
        pytest.skip(f"needs a Docker engine with {IMAGE} (bash .ci/test.sh sets both up): {exc}")
    return client


def install_spec(data_dir, name, config, argv_python="python3"):
    folder = data_dir / "kernels" / f"gpuenv-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    env = parse_environment(name, {"image": IMAGE, "gpus": "none", **config}, "test") if "raw" not in config else None
    spec = (
        kernelspec_json(env)
        if env
        else {
            "argv": [argv_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name,
            "language": "python",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": "gpuenv-docker-provisioner", "config": config["raw"]}
            },
        }
    )
    (folder / "kernel.json").write_text(json.dumps(spec))
    return f"gpuenv-{name}"


@pytest.fixture
def kernelspec(jp_data_dir, docker_client):
    return install_spec(jp_data_dir, "test", {})


def our_containers(client, kernel_id=None):
    label = f"{L_KERNEL}={kernel_id}" if kernel_id else L_KERNEL
    return client.containers.list(all=True, filters={"label": label})


async def start(jp_fetch, name, path=""):
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name, "path": path}))
    return json.loads(response.body)["id"]


async def start_error(jp_fetch, name):
    with pytest.raises(HTTPClientError) as err:
        await start(jp_fetch, name)
    return err.value.code, json.loads(err.value.response.body).get("message", "")


async def execute(jp_serverapp, kernel_id, code, timeout=30):
    """Run code over the kernel's own channels; returns (stdout, error name or None)."""
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
        out, error = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                error.append(msg["content"]["ename"])

        await client.execute_interactive(code, output_hook=hook, timeout=timeout)
        return "".join(out), (error[0] if error else None)
    finally:
        client.stop_channels()


def provisioner(jp_serverapp, kernel_id):
    return jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner


async def until(predicate, timeout=30.0, what="condition"):
    """Await ``predicate()`` (sync or async) until it is truthy; the event loop keeps serving meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.05)
