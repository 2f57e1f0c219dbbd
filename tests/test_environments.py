"""Parsing administrators' environment definitions, and the pure parts of a container launch."""

import pytest

from jupyter_gpuenv import containers
from jupyter_gpuenv.allocation import AllocationError, Holdings, choose
from jupyter_gpuenv.environments import (EnvironmentError_, GpuPolicy, PRESETS, cuda_compatibility,
                                         parse_environment)
from jupyter_gpuenv.nvml import GpuSample, Memory


def test_flagship_preset_parses_and_round_trips():
    env = parse_environment("pytorch-2.6-cuda12.4", PRESETS["pytorch-2.6-cuda12.4"], "preset")
    assert env.display_name == "PyTorch 2.6 / CUDA 12.4" and env.image == "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"
    assert env.kernelspec_name == "gpuenv-pytorch-2.6-cuda12.4"
    assert parse_environment(env.name, env.to_config(), "again") == env


@pytest.mark.parametrize("raw, message", [
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
])
def test_bad_definitions_name_the_key_and_the_source(raw, message):
    with pytest.raises(EnvironmentError_) as err:
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
    with pytest.raises(AllocationError, match="no 1 free GPU"):
        choose(GpuPolicy.parse("exclusive:1"), gpus(50, 10, 30), held)


def test_shared_policies_avoid_exclusively_held_gpus():
    held = Holdings()
    held.add("GPU-0", "kernel-a", exclusive=True)
    assert [g.index for g in choose(GpuPolicy.parse("all"), gpus(0, 0, 0), held)] == [1, 2]
    assert [g.index for g in choose(GpuPolicy.parse("1"), gpus(0, 90, 5), held)] == [2]
    with pytest.raises(AllocationError, match="held exclusively"):
        choose(GpuPolicy.parse("device=0"), gpus(0, 0), held)
    with pytest.raises(AllocationError, match="not among the GPUs this server may use"):
        choose(GpuPolicy.parse("device=7"), gpus(0, 0), held)


def test_restart_keeps_the_same_gpus():
    assert [g.uuid for g in choose(GpuPolicy.parse("exclusive:1"), gpus(0, 0), Holdings(), keep=["GPU-1"])] == ["GPU-1"]


def test_no_gpu_at_all_is_a_clear_refusal():
    with pytest.raises(AllocationError, match="sees none"):
        choose(GpuPolicy.parse("all"), [], Holdings())


def facts(tmp_path, **kw):
    base = dict(kernel_id="k1", server_host="h", server_pid=1, uid=1000, gid=1000, user_name="u",
                home=str(tmp_path / "home"), root_dir=str(tmp_path / "work"), cwd=str(tmp_path / "work" / "nb"),
                socket_dir=str(tmp_path / "s"), connection_file=str(tmp_path / "s" / "connection.json"),
                gpu_mode="none", server_env={"LANG": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "x", "WANDB_API_KEY": "w"})
    base.update(kw)
    return containers.LaunchFacts(**base)


def test_container_arguments_are_what_the_environment_allows(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "none", "env_allow": ["WANDB_API_KEY"], "memory": "4g",
                                  "cpus": 2, "shm_size": "8g"}, "t")
    kw = containers.create_kwargs(env, facts(tmp_path))
    assert kw["user"] == "1000:1000" and kw["init"] is True and kw["network_mode"] == "none"
    assert kw["shm_size"] == "8g" and kw["mem_limit"] == "4g" and kw["nano_cpus"] == 2_000_000_000
    assert "AWS_SECRET_ACCESS_KEY" not in kw["environment"] and kw["environment"]["WANDB_API_KEY"] == "w"
    assert kw["environment"]["CUDA_VISIBLE_DEVICES"] == "" and "ports" not in kw
    assert kw["working_dir"].endswith("/work/nb") and kw["volumes"][str(tmp_path / "work")]["mode"] == "rw"
    assert kw["command"][-2:] == ["-f", str(tmp_path / "s" / "connection.json")]


def test_devices_mode_passes_the_gpu_nodes_and_driver(tmp_path):
    env = parse_environment("t", {"image": "img"}, "t")
    f = facts(tmp_path, gpu_mode="devices", gpus=[containers.AssignedGpu(1, "GPU-b", 3)],
              driver_mounts=[containers.Mount("/usr/local/nvidia", "/usr/local/nvidia", True)])
    kw = containers.create_kwargs(env, f)
    assert "/dev/nvidia3:/dev/nvidia3:rwm" in kw["devices"]
    assert kw["volumes"]["/usr/local/nvidia"] == {"bind": "/usr/local/nvidia", "mode": "ro"}
    assert kw["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-b"
    assert kw["environment"]["LD_LIBRARY_PATH"].startswith("/usr/local/nvidia/lib64")
    assert kw["labels"][containers.L_GPUS] == "GPU-b"


def test_toolkit_mode_sends_a_device_request(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "exclusive:1"}, "t")
    kw = containers.create_kwargs(env, facts(tmp_path, gpu_mode="toolkit", exclusive=True,
                                             gpus=[containers.AssignedGpu(0, "GPU-a")]))
    request = kw["device_requests"][0]
    assert request["DeviceIDs"] == ["GPU-a"] and request["Capabilities"] == [["gpu"]]
    assert kw["labels"][containers.L_EXCLUSIVE] == "true"


def test_working_directory_outside_the_mounted_folders_is_refused(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "none"}, "t")
    with pytest.raises(ValueError, match="outside the server's root"):
        containers.create_kwargs(env, facts(tmp_path, cwd="/etc"))
