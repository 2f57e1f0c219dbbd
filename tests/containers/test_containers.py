"""The container a kernel gets: pure, from an environment and a start's facts."""

import pytest

from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.environments.definition import Mount, parse_environment
from jupyter_gpuenv.errors import OutsideRoot
from jupyter_gpuenv.host import User


def facts(tmp_path, **kw):
    base = dict(
        kernel_id="k1",
        user=User("u", 1000, 1000, str(tmp_path / "home")),
        server_host="h",
        server_pid=1,
        root_dir=str(tmp_path / "work"),
        cwd=str(tmp_path / "work" / "nb"),
        socket_dir=str(tmp_path / "s"),
        connection_file=str(tmp_path / "s" / "connection.json"),
        gpu_mode="none",
        server_env={"LANG": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "x", "WANDB_API_KEY": "w"},
    )
    base.update(kw)
    return containers.LaunchFacts(**base)


def mounted(spec, target):
    return next(m for m in spec.mounts if m.target == target)


def test_container_is_what_the_environment_allows(tmp_path):
    env = parse_environment(
        "t",
        {"image": "img", "gpus": "none", "env_allow": ["WANDB_API_KEY"], "memory": "4g", "cpus": 2, "shm_size": "8g"},
        "t",
    )
    spec = containers.spec(env, facts(tmp_path))
    assert spec.user == "1000:1000" and spec.init is True and spec.network_mode == "none"
    assert spec.cap_drop == ["ALL"] and spec.security_opt == ["no-new-privileges"]
    assert spec.shm_size == "8g" and spec.memory == "4g" and spec.nano_cpus == 2_000_000_000
    assert "AWS_SECRET_ACCESS_KEY" not in spec.environment and spec.environment["WANDB_API_KEY"] == "w"
    assert spec.environment["CUDA_VISIBLE_DEVICES"] == ""
    assert spec.working_dir.endswith("/work/nb") and mounted(spec, str(tmp_path / "work")).read_only is False
    assert spec.command[-2:] == ["-f", str(tmp_path / "s" / "connection.json")]
    assert spec.name == "gpuenv-k1" and spec.labels[labels.KERNEL] == "k1" and spec.labels[labels.UID] == "1000"
    assert spec.gpu_device_ids is None and spec.devices == []


def test_a_root_folder_with_colons_and_commas_is_mounted_as_it_is(tmp_path):
    """Mounts are objects: nothing is parsed out of 'source:target:mode' text."""
    root = str(tmp_path / "a:b,c")
    env = parse_environment("t", {"image": "img", "gpus": "none"}, "t")
    spec = containers.spec(env, facts(tmp_path, root_dir=root, cwd=root))
    assert mounted(spec, root) == Mount(root, root, False)


def test_devices_mode_passes_the_gpu_nodes_and_driver(tmp_path):
    env = parse_environment("t", {"image": "img"}, "t")
    f = facts(
        tmp_path,
        gpu_mode="devices",
        gpus=[containers.AssignedGpu(1, "GPU-b", 3)],
        driver_mounts=[Mount("/usr/local/nvidia", "/usr/local/nvidia", True)],
        device_nodes=["/dev/nvidiactl"],
    )
    spec = containers.spec(env, f)
    assert spec.devices == ["/dev/nvidiactl", "/dev/nvidia3"]
    assert mounted(spec, "/usr/local/nvidia").read_only
    assert spec.environment["CUDA_VISIBLE_DEVICES"] == "GPU-b"
    assert spec.environment["LD_LIBRARY_PATH"].startswith("/usr/local/nvidia/lib64")
    assert spec.labels[labels.GPUS] == "GPU-b"


def test_toolkit_mode_sends_a_device_request(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "exclusive:1"}, "t")
    spec = containers.spec(
        env, facts(tmp_path, gpu_mode="toolkit", exclusive=True, gpus=[containers.AssignedGpu(0, "GPU-a")])
    )
    assert spec.gpu_device_ids == ["GPU-a"] and spec.devices == []
    assert spec.labels[labels.EXCLUSIVE] == "true"


def test_a_kernel_runtime_is_mounted_read_only(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "none"}, "t")
    spec = containers.spec(env, facts(tmp_path, runtime_dir="/rt/py3.11-x86_64"))
    assert mounted(spec, containers.RUNTIME_TARGET) == Mount("/rt/py3.11-x86_64", containers.RUNTIME_TARGET, True)


@pytest.mark.parametrize("cwd", ["/etc", "/work/../etc"])
def test_working_directory_outside_the_mounted_folders_is_refused(tmp_path, cwd):
    env = parse_environment("t", {"image": "img", "gpus": "none"}, "t")
    with pytest.raises(OutsideRoot, match="outside the server's root"):
        containers.spec(env, facts(tmp_path, cwd=cwd))


def test_a_kernel_without_network_joins_its_users_namespace_holder(tmp_path):
    env = parse_environment("t", {"image": "img", "gpus": "none"}, "t")
    assert containers.joins_holder(env, True) and not containers.joins_holder(env, False)
    assert not containers.joins_holder(parse_environment("h", {"image": "img", "network": "host"}, "t"), True)
    spec = containers.spec(env, facts(tmp_path, network_holder="abc123"))
    assert spec.network_mode == "container:abc123"
    assert spec.cap_drop == ["ALL"] and spec.security_opt == ["no-new-privileges"]  # the kernel's own, unchanged


def test_the_namespace_holder_has_no_network_and_nothing_else(tmp_path):
    env = parse_environment("t", {"image": "img", "python": "/opt/py/bin/python3", "gpus": "none"}, "t")
    alice = User("alice", 1000, 100, str(tmp_path))
    holder = containers.network_holder(env, alice, "host-a", 42)
    assert holder.network_mode == "none" and holder.mounts == [] and holder.environment == {}
    assert holder.user == "1000:100" and holder.cap_drop == ["ALL"] and holder.security_opt == ["no-new-privileges"]
    assert holder.read_only and holder.pids_limit and holder.memory and holder.init is False
    assert holder.image == "img" and holder.command[0] == "/opt/py/bin/python3"
    assert holder.command[-1] == containers.HOLDER_COMMAND
    assert holder.labels == {
        labels.NETNS: "true",
        labels.UID: "1000",
        labels.USER: "alice",
        labels.SERVER_HOST: "host-a",
        labels.SERVER_PID: "42",
    }
    assert labels.KERNEL not in holder.labels  # never listed or counted as a kernel
    root = containers.network_holder(env, User("root", 0, 0, "/root"), "host-a", 42)
    assert root.user == "65534:65534"  # nobody, when the server is root's


def test_one_holder_per_user_never_shared():
    """Per uid and name: behind a broker's hub-token mode every user's kernels run with the same uid."""
    names = {
        containers.holder_name(h, User(n, uid, 100, "/home/x"))
        for h, n, uid in [("a", "alice", 1000), ("a", "bob", 1000), ("a", "alice", 1001), ("b", "alice", 1000)]
    }
    assert len(names) == 4
    assert containers.holder_name("a", User("alice", 1000, 5, "/x")) == containers.holder_name(
        "a", User("alice", 1000, 100, "/home/alice")
    )
