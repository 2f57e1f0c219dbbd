"""Which kernel a GPU process belongs to: container ids from /proc/<pid>/cgroup, parents for local kernels."""

import pytest

from jupyter_gpuenv.gpus.attribution import KernelIndex, container_id_from_cgroup, owning_kernel

ID = "4f" * 32

CGROUPS = {
    "docker, cgroup v1": f"12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n",
    "docker, cgroup v2, systemd driver": f"0::/system.slice/docker-{ID}.scope\n",
    "docker, cgroup v2, cgroupfs driver": f"0::/docker/{ID}\n",
    "rootless podman": f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
    "containerd (Kubernetes)": "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice/"
    f"cri-containerd-{ID}.scope\n",
    "cri-o (Kubernetes)": f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice/crio-{ID}.scope",
    "Kubernetes, cgroupfs driver": f"11:pids:/kubepods/besteffort/pod1a2b-3c/{ID}\n",
}


@pytest.mark.parametrize("text", CGROUPS.values(), ids=CGROUPS.keys())
def test_container_id_from_each_runtimes_cgroup(text):
    assert container_id_from_cgroup(text) == ID


@pytest.mark.parametrize(
    "text",
    ["0::/user.slice/user-1000.slice/session-3.scope\n", "0::/\n", "", f"0::/system.slice/{ID[:12]}.scope\n"],
)
def test_a_host_process_has_no_container(text):
    assert container_id_from_cgroup(text) is None


def test_container_process_is_named_by_the_kernel_of_its_container():
    kernels = KernelIndex(by_container={ID: "kernel-c"})
    assert owning_kernel(4242, kernels, cgroup_of=lambda pid: CGROUPS["docker, cgroup v1"]) == ("kernel-c", ID)


def test_local_process_is_named_by_the_kernel_among_its_parents():
    parents = {500: 400, 400: 300, 300: 1}
    kernels = KernelIndex(by_pid={300: "kernel-l"})
    found = owning_kernel(500, kernels, cgroup_of=lambda pid: "0::/user.slice\n", parent_of=parents.get)
    assert found == ("kernel-l", None)
    assert owning_kernel(500, KernelIndex(), cgroup_of=lambda pid: "", parent_of=parents.get) == (None, None)
