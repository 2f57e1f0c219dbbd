import pytest

from jupyter_gpuenv.gpus.visibility import from_environment, parse


def test_configuration_wins_over_environment():
    vis = from_environment("0", {"CUDA_VISIBLE_DEVICES": "1"})
    assert vis.allows(0, None) and not vis.allows(1, None) and vis.source == "GpuEnv.visible_devices"


def test_cuda_visible_devices_before_nvidia_visible_devices():
    vis = from_environment(None, {"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "all"})
    assert vis.source == "CUDA_VISIBLE_DEVICES" and vis.allows(1, None) and not vis.allows(0, None)


def test_nothing_set_means_all():
    vis = from_environment(None, {})
    assert vis.tokens is None and vis.allows(7, "GPU-x")


def test_bad_token_is_a_clear_error():
    with pytest.raises(ValueError, match="'gpu zero' is not a GPU index or UUID"):
        parse("0,gpu zero", "CUDA_VISIBLE_DEVICES")
