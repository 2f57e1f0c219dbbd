"""The REST API through a real Jupyter server with the extension loaded, NVML fed recorded values."""

import json
import re
import subprocess
import time

import pytest
from conftest import wait_until
from tornado.httpclient import HTTPClientError


async def get_json(jp_fetch, *path, **params):
    response = await jp_fetch("gpuenv", "api", *path, params=params)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def test_gpus_lists_the_recorded_gpus(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: gpuenv_sampler.latest.available)
    body = await get_json(jp_fetch, "gpus")
    assert body["available"] is True and body["reason"] is None
    assert body["driver_version"] == "580.159.04" and body["cuda_driver_version"] == "13.0"
    assert [g["name"] for g in body["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    gpu = body["gpus"][0]
    for key in (
        "index",
        "uuid",
        "pci_bus_id",
        "memory",
        "utilization",
        "temperature_c",
        "power_w",
        "power_limit_w",
        "clocks_mhz",
        "mig_mode",
        "processes",
    ):
        assert key in gpu
    assert gpu["memory"]["total"] == 85520809984 and gpu["fan_speed_pct"] is None
    assert {p["pid"] for p in gpu["processes"]} == {4242, 4343}


@pytest.mark.parametrize("recording", ["no-driver"])
async def test_no_driver_is_200_with_a_reason(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: gpuenv_sampler.samples_taken >= 1)
    body = await get_json(jp_fetch, "gpus")
    assert body["available"] is False and body["gpus"] == []
    assert "no NVIDIA driver" in body["reason"]


async def test_a_missing_driver_is_logged_once_not_a_flood(fake_nvml, gpuenv_sampler, caplog):
    wait_until(lambda: gpuenv_sampler.latest.available)
    fake_nvml.recording["init"] = "LibraryNotFound"
    taken = gpuenv_sampler.samples_taken
    wait_until(lambda: gpuenv_sampler.samples_taken >= taken + 10)  # ten failed attempts at 0.05 s each
    logged = [r for r in caplog.records if "no GPU information" in r.getMessage()]
    assert len(logged) == 1 and "no NVIDIA driver" in logged[0].getMessage()


async def test_gpu_lost_mid_run(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: gpuenv_sampler.latest.available)
    fake_nvml.recording["devices"][0]["error"] = "GpuIsLost"
    wait_until(lambda: gpuenv_sampler.latest.gpus[0].error)
    body = await get_json(jp_fetch, "gpus")
    assert body["available"] is True
    assert "GPU is lost" in body["gpus"][0]["error"] and body["gpus"][1]["error"] is None


async def test_driver_disappears_and_comes_back(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: gpuenv_sampler.latest.available)
    fake_nvml.recording["init"] = "DriverNotLoaded"
    wait_until(lambda: not gpuenv_sampler.latest.available)
    body = await get_json(jp_fetch, "gpus")
    assert body["available"] is False and "not loaded" in body["reason"]
    fake_nvml.recording["init"] = None
    wait_until(lambda: gpuenv_sampler.latest.available)
    assert len((await get_json(jp_fetch, "gpus"))["gpus"]) == 2


@pytest.mark.parametrize("recording", ["mig"])
async def test_mig(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: gpuenv_sampler.latest.available)
    gpu = (await get_json(jp_fetch, "gpus"))["gpus"][0]
    assert gpu["mig_mode"] is True and len(gpu["mig_devices"]) == 2
    assert gpu["processes"][0]["gpu_instance"].startswith("MIG-")


async def test_history_since(fake_nvml, gpuenv_sampler, jp_fetch):
    wait_until(lambda: len(gpuenv_sampler.history()) >= 3)
    everything = await get_json(jp_fetch, "gpus", "history")
    assert everything["interval"] == 0.05 and len(everything["samples"]) >= 3
    assert everything["window"] == 0.05 * 300  # the default history_length: the panel's charts cover all of it
    times = [s["t"] for s in everything["samples"]]
    assert times == sorted(times)
    sample = everything["samples"][0]["gpus"][0]
    assert sample["memory_used"] == 6 * 1024**3 + 524288000 and sample["utilization_gpu"] == 87
    assert sample["temperature_c"] == 54 and sample["power_w"] == 312.456 and sample["pcie_mb_s"] is None  # off
    later = await get_json(jp_fetch, "gpus", "history", since=str(times[-2]))
    assert all(s["t"] > times[-2] for s in later["samples"]) and len(later["samples"]) >= 1
    assert (await get_json(jp_fetch, "gpus", "history", since=str(time.time() + 60)))["samples"] == []


@pytest.mark.parametrize("since", ["abc", "nan", "inf", ""])
async def test_history_rejects_bad_since(fake_nvml, jp_fetch, since):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "gpus", "history", params={"since": since})
    assert err.value.code == 400
    assert "since must be a time" in json.loads(err.value.response.body)["message"]


async def test_unknown_path_and_wrong_method(fake_nvml, jp_fetch):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "gpu")
    assert err.value.code == 404 and "no such gpuenv API endpoint" in json.loads(err.value.response.body)["message"]
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "gpus", method="POST", body="{}")
    assert err.value.code == 405
    assert err.value.response.headers["Content-Type"].startswith("application/json")


async def test_every_handler_refuses_unauthenticated_requests(fake_nvml, jp_serverapp, http_server_client):
    """Walk the route table: without a token every gpuenv route refuses every method and shows no data."""
    patterns = {
        rule.matcher.regex.pattern
        for host in jp_serverapp.web_app.default_router.rules
        if hasattr(host.target, "rules")
        for rule in host.target.rules
        if "gpuenv" in rule.matcher.regex.pattern
    }
    assert len(patterns) >= 3
    for pattern in sorted(patterns):
        path = re.sub(r"\(.*?\)\??", "/x", pattern.rstrip("$")).replace("\\", "")
        for method in ("GET", "POST", "DELETE"):
            response = await http_server_client.fetch(
                path, method=method, raise_error=False, body="{}" if method == "POST" else None, follow_redirects=False
            )
            allowed = (403,) if method == "GET" else (403, 405)
            assert response.code in allowed, (method, path, response.code)
            assert b"gpus" not in response.body and b"memory" not in response.body, (method, path)


async def test_gpu_memory_of_a_local_kernel_is_named_by_its_kernel(fake_nvml, gpuenv_sampler, jp_fetch, jp_serverapp):
    """NVML names a host PID; the server walks up its parents to a kernel's process."""
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(response.body)["id"]
    kernel_pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    child = subprocess.Popen(["sleep", "30"])  # a process of the server, not of the kernel
    try:
        fake_nvml.recording["devices"][0]["nvmlDeviceGetComputeRunningProcesses"] = [
            {"pid": kernel_pid, "usedGpuMemory": 1024**3},
            {"pid": child.pid, "usedGpuMemory": 2048},
        ]
        wait_until(lambda: gpuenv_sampler.latest.gpus[0].processes[0].kernel_id == kernel_id)
        procs = (await get_json(jp_fetch, "gpus"))["gpus"][0]["processes"]
        assert procs[0]["kernel_id"] == kernel_id and procs[0]["container_id"] is None
        assert procs[1]["kernel_id"] is None  # a process of the server itself belongs to no kernel
        kernels = (await get_json(jp_fetch, "kernels"))["kernels"]
        assert kernels[0]["kernel_id"] == kernel_id and kernels[0]["gpu_memory"] == 1024**3
        assert kernels[0]["environment"] is None and kernels[0]["gpus"] == [0]
    finally:
        child.kill()
