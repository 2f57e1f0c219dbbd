import time

import fake_pynvml
import pytest

from jupyter_gpuenv.gpus import nvml as nvml_module

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


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """``predicate()`` once it is truthy; AssertionError naming ``what`` and its last value after ``timeout`` s.

    Every synchronous test waits with this one (``container_harness.until`` is the same for a coroutine test)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
