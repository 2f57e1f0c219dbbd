"""Can it start here? The verdict's state matrix: pure, one situation at a time."""

import pytest

from jupyter_gpuenv import errors
from jupyter_gpuenv.engines.base import ImageFacts
from jupyter_gpuenv.environments import preflight
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.gpus.nvml import GpuSample, Snapshot

GPUS = Snapshot(available=True, cuda_driver_version="12.4", gpus=[GpuSample(index=0, uuid="GPU-0")])
NO_GPU = Snapshot(available=False, reason="no NVIDIA driver on this machine")
WITH_KERNEL = ImageFacts(True, "sha256:1", None, "3.11", True)
NO_KERNEL = ImageFacts(True, "sha256:1", None, "3.11", False)
NO_PYTHON = ImageFacts(True, "sha256:1", None, None, False)
MISSING = ImageFacts(False)


def env(**raw):
    return parse_environment("t", {"image": "img", **raw}, "test")


# (environment, situation) -> (state, can_start, reason_code, error class, words in the reason)
MATRIX = [
    ("ready", env(gpus="none"), dict(image=WITH_KERNEL), ("ready", True, None, None, None)),
    (
        "ready on GPUs",
        env(gpus="all", cuda_version="12.4"),
        dict(image=WITH_KERNEL, snapshot=GPUS),
        ("ready", True, None, None, None),
    ),
    (
        "no kernelspec",
        env(gpus="none"),
        dict(image=WITH_KERNEL, has_kernelspec=False),
        ("unavailable", False, "no-kernelspec", errors.NoKernelspec, "jupyter gpuenv add t"),
    ),
    (
        "engine down",
        env(gpus="none"),
        dict(image=None, engine_error=errors.EngineUnreachable("dockerd is down")),
        ("unavailable", False, "engine-unavailable", errors.EngineUnreachable, "dockerd is down"),
    ),
    (
        "GPUs wanted, none seen",
        env(gpus="1"),
        dict(image=WITH_KERNEL, snapshot=NO_GPU),
        ("incompatible", False, "no-gpu", errors.NoGpu, "sees none: give it `--gpus none`"),
    ),
    (
        "CUDA too new",
        env(gpus="all", cuda_version="13.1"),
        dict(image=WITH_KERNEL, snapshot=GPUS),
        ("incompatible", False, "cuda-too-new", errors.CudaTooNew, "needs CUDA 13.1"),
    ),
    (
        "the image's own CUDA too new",
        env(gpus="all"),
        dict(image=ImageFacts(True, "x", "12.8", "3.11", True), snapshot=GPUS),
        ("incompatible", False, "cuda-too-new", errors.CudaTooNew, "up to 12.4"),
    ),
    (
        "CPU image on a machine without GPUs",
        env(gpus="none", cuda_version="13.1"),
        dict(image=WITH_KERNEL),
        ("ready", True, None, None, None),
    ),
    (
        "missing, pulling on",
        env(gpus="none"),
        dict(image=MISSING),
        ("image-missing", True, "image-missing", None, "pulled at first start"),
    ),
    (
        "missing, pulling off",
        env(gpus="none"),
        dict(image=MISSING, pull_allowed=False),
        ("image-missing", False, "image-missing", errors.ImageMissing, "pulling is off"),
    ),
    (
        "being pulled",
        env(gpus="none"),
        dict(image=MISSING, pulling=True),
        ("pulling", True, "pulling", None, "being pulled"),
    ),
    (
        "no ipykernel, no runtime",
        env(gpus="none"),
        dict(image=NO_KERNEL),
        ("runtime-missing", False, "no-kernel-runtime", errors.NoKernelRuntime, "prepare-runtime 3.11"),
    ),
    (
        "no ipykernel, runtime prepared",
        env(gpus="none"),
        dict(image=NO_KERNEL, prepared_runtimes=frozenset({"3.11"})),
        ("ready", True, None, None, None),
    ),
    (
        "runtime for another Python only",
        env(gpus="none"),
        dict(image=NO_KERNEL, prepared_runtimes=frozenset({"3.12"})),
        ("runtime-missing", False, "no-kernel-runtime", errors.NoKernelRuntime, "Python 3.11"),
    ),
    (
        "no such interpreter",
        env(gpus="none", python="python9"),
        dict(image=NO_PYTHON),
        ("runtime-missing", False, "no-kernel-runtime", errors.NoKernelRuntime, "no working 'python9'"),
    ),
    (
        "runtime always mounted",
        env(gpus="none", kernel_runtime="mount"),
        dict(image=WITH_KERNEL, prepared_runtimes=frozenset({"3.11"})),
        ("ready", True, None, None, None),
    ),
    (
        "image's own kernel trusted",
        env(gpus="none", kernel_runtime="image"),
        dict(image=ImageFacts(True, "x")),
        ("ready", True, None, None, None),
    ),
]


@pytest.mark.parametrize("environment, given, expected", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_verdict(environment, given, expected):
    situation = preflight.Situation(**{"snapshot": NO_GPU, **given})
    verdict = preflight.check(environment, situation)
    state, can_start, code, error, words = expected
    assert (verdict.state, verdict.can_start, verdict.reason_code) == (state, can_start, code)
    assert type(verdict.error) is error if error else verdict.error is None
    if words:
        assert words in verdict.reason
    if error:
        with pytest.raises(error):
            verdict.raise_if_refused()
    else:
        verdict.raise_if_refused()


def test_the_runtime_to_mount_is_the_images_python():
    situation = preflight.Situation(image=NO_KERNEL, snapshot=NO_GPU, prepared_runtimes=frozenset({"3.11", "3.12"}))
    assert preflight.check(env(gpus="none"), situation).runtime_version == "3.11"
    assert (
        preflight.check(env(gpus="none"), preflight.Situation(image=WITH_KERNEL, snapshot=NO_GPU)).runtime_version
        is None
    )


def test_an_invalid_definition_is_reported_with_its_sentence():
    verdict = preflight.invalid(errors.InvalidEnvironment("environment 'x': unknown key(s) 'shm'"))
    assert (verdict.state, verdict.can_start, verdict.reason_code) == ("invalid", False, "invalid-definition")
    assert "unknown key(s) 'shm'" in verdict.reason


def test_gpus_wanted_on_a_machine_without_gpus_names_the_fix_first():
    """The first line says what to do (`--gpus none`); NVML's words follow as details, which the panel folds."""
    verdict = preflight.check(env(gpus="all"), preflight.Situation(image=WITH_KERNEL, snapshot=NO_GPU))
    fix, details = verdict.reason.split("\n")
    assert fix == (
        "environment 't' asks for GPUs (all) but this server sees none: give it `--gpus none` to run it on the CPU"
    )
    assert details == (
        '`jupyter gpuenv add t --image img --gpus none` (or "gpus": "none" in its definition). '
        "no NVIDIA driver on this machine"
    )
