"""Parsing administrators' environment definitions, and the pure parts of a container launch."""

import pytest

from jupyter_gpuenv.containers.allocation import Holdings, choose
from jupyter_gpuenv.environments.definition import PRESETS, GpuPolicy, cuda_compatibility, parse_environment
from jupyter_gpuenv.errors import InvalidEnvironment, NoFreeGpu, NoGpu
from jupyter_gpuenv.gpus.nvml import GpuSample, Memory


def test_flagship_preset_parses_and_round_trips():
    env = parse_environment("pytorch-2.6-cuda12.4", PRESETS["pytorch-2.6-cuda12.4"], "preset")
    assert (
        env.display_name == "PyTorch 2.6 / CUDA 12.4" and env.image == "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"
    )
    assert parse_environment(env.name, env.to_config(), "again") == env


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"image": "x", "shm": "1g"}, "unknown key(s) 'shm'"),
        ({}, "'image' is required"),
        ({"image": "x", "gpus": "most"}, "'gpus': 'most' is not a GPU policy"),
        ({"image": "x", "network": "bridge"}, "'network' must be one of none, host"),
        ({"image": "x", "transport": "tcp"}, "'tcp' needs 'network': 'host'"),
        ({"image": "x", "shm_size": "lots"}, "'shm_size' must be a size"),
        ({"image": "x", "cpus": 0}, "'cpus' must be a positive number"),
        ({"image": "x", "mounts": ["relative:/x"]}, "absolute paths"),
        ({"image": "x", "env_allow": ["NOT A NAME"]}, "'env_allow' must be a list"),
        ({"image": "x", "cuda_version": "twelve"}, "'cuda_version' must look like"),
    ],
)
def test_bad_definitions_name_the_key_and_the_source(raw, message):
    with pytest.raises(InvalidEnvironment) as err:
        parse_environment("t", raw, "kernelspec 'T'")
    assert message in str(err.value) and "kernelspec 'T'" in str(err.value)


def test_cuda_compatibility_names_both_versions():
    assert cuda_compatibility("12.4.1", "13.0") == (True, None)
    ok, reason = cuda_compatibility("12.4", "12.2")
    assert not ok and "needs CUDA 12.4" in reason and "up to 12.2" in reason
    assert cuda_compatibility(None, "12.2") == (True, None)


def gpus(*used):
    return [GpuSample(index=i, uuid=f"GPU-{i}", memory=Memory(100, u, 100 - u)) for i, u in enumerate(used)]


def test_exclusive_picks_least_used_free_gpus_and_refuses_when_none_left():
    held = Holdings()
    assert [g.index for g in choose(GpuPolicy.parse("exclusive:1"), gpus(50, 10, 30), held)] == [1]
    held.add("GPU-1", "kernel-a", exclusive=True)
    held.add("GPU-2", "kernel-b", exclusive=False)
    assert [g.index for g in choose(GpuPolicy.parse("exclusive:1"), gpus(50, 10, 30), held)] == [0]
    held.add("GPU-0", "kernel-c", exclusive=True)
    with pytest.raises(NoFreeGpu, match="no 1 free GPU"):
        choose(GpuPolicy.parse("exclusive:1"), gpus(50, 10, 30), held)


def test_shared_policies_avoid_exclusively_held_gpus():
    held = Holdings()
    held.add("GPU-0", "kernel-a", exclusive=True)
    assert [g.index for g in choose(GpuPolicy.parse("all"), gpus(0, 0, 0), held)] == [1, 2]
    assert [g.index for g in choose(GpuPolicy.parse("1"), gpus(0, 90, 5), held)] == [2]
    with pytest.raises(NoFreeGpu, match="held exclusively"):
        choose(GpuPolicy.parse("device=0"), gpus(0, 0), held)
    with pytest.raises(NoFreeGpu, match="not among the GPUs this server may use"):
        choose(GpuPolicy.parse("device=7"), gpus(0, 0), held)


def test_restart_keeps_the_same_gpus():
    assert [g.uuid for g in choose(GpuPolicy.parse("exclusive:1"), gpus(0, 0), Holdings(), keep=["GPU-1"])] == ["GPU-1"]


def test_no_gpu_at_all_is_a_clear_refusal():
    with pytest.raises(NoGpu, match="sees none"):
        choose(GpuPolicy.parse("all"), [], Holdings())
