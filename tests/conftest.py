import time

import fake_pynvml
import pytest

from jupyter_gpuenv import nvml as nvml_module

pytest_plugins = ["pytest_jupyter.jupyter_server", "container_harness", "registry_harness"]


@pytest.fixture
def recording():
    """Which recorded NVML the server sees; a test overrides it with @pytest.mark.parametrize or a fixture."""
    return "h100x2"


@pytest.fixture
def fake_nvml(recording, monkeypatch):
    """NVML fed recorded values at the pynvml boundary; the rest of the code is the real thing."""
    fake = fake_pynvml.FakePynvml(fake_pynvml.load(recording))
    monkeypatch.setattr(nvml_module, "load_pynvml", lambda: fake)
    return fake


@pytest.fixture
def jp_server_config(jp_server_config):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.05, "driver_retry_interval": 0.05},
    }


@pytest.fixture
def gpuenv_sampler(jp_serverapp):
    return jp_serverapp.web_app.settings["gpuenv_sampler"]


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
