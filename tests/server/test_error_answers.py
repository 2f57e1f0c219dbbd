"""Every error a start can meet reaches the person as its HTTP status with its sentence; and GET environments
says of each environment exactly what a start then does."""

import json

import pytest
from container_harness import IMAGE, install_spec, our_containers, start, start_error

from jupyter_gpuenv import engines as engine_module
from jupyter_gpuenv import errors
from jupyter_gpuenv.engines.local import LocalEngine


def leaves(cls):
    subclasses = cls.__subclasses__()
    return [leaf for sub in subclasses for leaf in leaves(sub)] if subclasses else [cls]


ERRORS = leaves(errors.GpuEnvError)


def test_every_error_class_has_a_status_a_person_can_act_on():
    assert {e.status for e in ERRORS} == {400, 403, 404, 409, 429, 503}
    assert len({e.code for e in ERRORS}) == len(ERRORS)  # a machine can tell them apart
    for e in ERRORS:
        assert e.status < 500 or issubclass(e, (errors.EngineUnavailable, errors.DriverFailed))


class Refusing(LocalEngine):
    """One person's engine whose every Docker call answers the error under test: the rest (the kernelspec, the
    socket folder, the verdict made from what the engine says) is real."""

    def __init__(self, settings, error):
        super().__init__(settings)
        self.error = error

    async def image_facts(self, image, python=None, env=None):
        raise self.error

    def pull_progress(self, image):
        return None

    def pull_failure(self, image):
        return None

    async def kernels(self):
        raise self.error

    async def pull(self, image, on_progress=None):
        raise self.error

    async def start_kernel(self, request):
        raise self.error

    async def state(self, container_id):
        raise self.error

    async def signal(self, container_id, signum):
        raise self.error

    async def remove(self, container_id):
        raise self.error


@pytest.fixture
def jp_server_config(jp_server_config):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {"sample_interval": 0.1, "driver_retry_interval": 0.1, "pull_missing_images": False},
    }


@pytest.mark.parametrize("error", ERRORS, ids=[e.__name__ for e in ERRORS])
async def test_each_error_reaches_the_rest_answer(error, jp_fetch, jp_data_dir, monkeypatch):
    sentence = f"{error.__name__} happened: do this about it (100% of the time)"
    monkeypatch.setattr(engine_module, "connect", lambda settings, log=None: Refusing(settings, error(sentence)))
    name = install_spec(jp_data_dir, "e", {})
    code, message = await start_error(jp_fetch, name)
    assert (code, message) == (error.status, sentence)


async def test_what_get_environments_offers_is_what_a_start_does(
    fake_nvml, jp_fetch, jp_serverapp, jp_data_dir, tmp_path, docker_client
):
    """The same situations fed to both: can_start true starts; false refuses with the very same sentence."""
    jp_serverapp.config.GpuEnv.kernel_runtime_dir = str(tmp_path / "no-runtimes")
    install_spec(jp_data_dir, "ready", {})
    install_spec(jp_data_dir, "missing", {"image": "gpuenv-does-not-exist:1.0"})
    install_spec(jp_data_dir, "future", {"gpus": "all", "gpu_mode": "none", "cuda_version": "99.0"})
    install_spec(jp_data_dir, "mounted", {"kernel_runtime": "mount"})  # needs a runtime nobody prepared
    install_spec(jp_data_dir, "bad", {"raw": {"environment": "bad", "image": IMAGE, "shm": "1g"}})
    rows = json.loads((await jp_fetch("gpuenv", "api", "environments")).body)["environments"]
    assert {r["name"]: r["can_start"] for r in rows} == {
        "ready": True,
        "missing": False,
        "future": False,
        "mounted": False,
        "bad": False,
    }
    for row in rows:
        if row["can_start"]:
            kernel_id = await start(jp_fetch, row["kernelspec"])
            assert our_containers(docker_client, kernel_id)
        else:
            code, message = await start_error(jp_fetch, row["kernelspec"])
            assert message == row["reason"]
            assert code in (400, 409)
            assert row["reason_code"] and row["state"] != "ready"
