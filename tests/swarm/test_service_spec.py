"""The service a kernel start becomes, and what is read back from Swarm: the pure half, no engine."""

import pytest

from jupyter_gpuenv.engines.swarm import placements as p
from jupyter_gpuenv.engines.swarm import service as s
from jupyter_gpuenv.errors import InvalidKernelId, InvalidRequest


def request(**changes):
    base = dict(
        kernel_id="0f1e2d3c-aaaa-4bbb-8ccc-123456789abc",
        user="alice",
        uid=1001,
        gid=1001,
        environment="pytorch",
        image="pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
        command=("python3", "-m", "ipykernel_launcher", "-f", "/run/k/kernel.json"),
        notebook="work/train.ipynb",
        gpu_kind="GPU-H200",
        gpu_count=2,
        mounts=(s.BindMount("/home/alice", "/home/alice"), s.BindMount("/data", "/data", read_only=True)),
        env={"HOME": "/home/alice"},
        workdir="/home/alice/work",
    )
    return s.KernelRequest(**{**base, **changes})


def test_a_gpu_kernel_is_one_task_never_restarted_reserving_gpus_of_its_model():
    spec = s.service_spec(request())
    task = spec["TaskTemplate"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "GPU-H200", "Value": 2}}
    ]
    assert task["Placement"]["Constraints"] == []  # the reservation alone picks a host with such GPUs


def test_a_cpu_kernel_goes_only_to_hosts_labelled_for_cpu_kernels_and_reserves_no_gpu():
    task = s.service_spec(request(gpu_kind="", gpu_count=0, constraints=("node.labels.storage==nfs",)))["TaskTemplate"]
    assert "GenericResources" not in task["Resources"]["Reservations"]
    assert task["Placement"]["Constraints"] == ["node.labels.storage==nfs", f"node.labels.{s.CPU_HOSTS}==true"]


def test_the_kernel_runs_as_the_person_with_init_no_capabilities_and_no_network():
    spec = s.service_spec(request())
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert c["User"] == "1001:1001" and c["Init"] is True and c["CapabilityDrop"] == ["ALL"]
    assert "GPUENV_NETWORK=none" in c["Env"] and "HOME=/home/alice" in c["Env"]
    assert "Networks" not in spec["TaskTemplate"] and "EndpointSpec" not in spec  # no network, no port
    assert c["Mounts"][1] == {"Type": "bind", "Source": "/data", "Target": "/data", "ReadOnly": True}
    assert c["Dir"] == "/home/alice/work"


def test_labels_say_whose_kernel_it_is_and_carry_no_secret():
    spec = s.service_spec(request(env={"HOME": "/home/alice", "JPY_SESSION_KEY": "s3cret-key"}))
    assert spec["Labels"] == spec["TaskTemplate"]["ContainerSpec"]["Labels"]
    assert spec["Labels"][s.USER] == "alice" and spec["Labels"][s.NOTEBOOK] == "work/train.ipynb"
    assert spec["Labels"][s.ENVIRONMENT] == "pytorch" and spec["Labels"][s.GPU_KIND] == "GPU-H200"
    assert "s3cret-key" not in str(spec["Labels"])  # the environment may hold secrets; labels are public
    assert s.create_service_kwargs(spec)["name"] == "gpuenv-0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"kernel_id": "../x"}, InvalidKernelId),
        ({"kernel_id": "a" * 57}, InvalidKernelId),
        ({"gpu_kind": "h200; rm"}, InvalidRequest),
        ({"gpu_count": -1}, InvalidRequest),
        ({"uid": 0}, InvalidRequest),
    ],
)
def test_what_cannot_become_a_service_is_refused_with_a_sentence(changes, error):
    with pytest.raises(error):
        s.service_spec(request(**changes))


NODES = [
    {
        "ID": "n1",
        "Description": {
            "Hostname": "gpu-1",
            "Resources": {
                "GenericResources": [
                    {"NamedResourceSpec": {"Kind": "GPU-H200", "Value": "GPU-a"}},
                    {"NamedResourceSpec": {"Kind": "GPU-H200", "Value": "GPU-b"}},
                ]
            },
        },
        "Status": {"State": "ready"},
        "Spec": {"Availability": "active"},
    },
    {
        "ID": "n2",
        "Description": {
            "Hostname": "gpu-2",
            "Resources": {"GenericResources": [{"NamedResourceSpec": {"Kind": "GPU-H200", "Value": "GPU-c"}}]},
        },
        "Status": {"State": "down"},
        "Spec": {"Availability": "active"},
    },
]


def service(sid, kernel, user):
    return {"ID": sid, "Spec": {"Labels": {s.KERNEL: kernel, s.USER: user}}}


def task(sid, node, state, gpus=(), created="2026-01-01T00:00:01Z", err=""):
    return {
        "ServiceID": sid,
        "NodeID": node,
        "CreatedAt": created,
        "Status": {"State": state, "Err": err},
        "GenericResources": [{"NamedResourceSpec": {"Kind": "GPU-H200", "Value": g}} for g in gpus],
    }


def test_the_lease_truth_is_read_from_the_newest_task_of_each_kernel_service():
    nodes = p.read_nodes(NODES)
    services = [service("s1", "k1", "alice"), service("s2", "k2", "bob"), {"ID": "x", "Spec": {"Labels": {}}}]
    tasks = [
        task("s1", "n1", "failed", ["GPU-b"], created="2026-01-01T00:00:00Z"),
        task("s1", "n1", "running", ["GPU-a"]),
        task("s2", "", "pending", err="no suitable node (insufficient resources on 3 nodes)"),
    ]
    got = {x.kernel_id: x for x in p.read_placements(services, tasks, nodes)}
    assert set(got) == {"k1", "k2"}  # a service without our label is not a kernel
    assert (got["k1"].host, got["k1"].gpus, got["k1"].holds_gpus) == ("gpu-1", ("GPU-a",), True)
    assert got["k2"].state == "pending" and not got["k2"].holds_gpus and "insufficient" in got["k2"].reason


def test_no_room_names_each_host_what_is_free_and_who_holds_the_rest():
    nodes = p.read_nodes(NODES)
    held = [
        p.Placement("k1aaaaaaaa", "alice", "s1", "running", "gpu-1", ("GPU-a",), ""),
        p.Placement("k2bbbbbbbb", "bob", "s2", "running", "gpu-1", ("GPU-b",), ""),
        p.Placement("k3cccccccc", "carol", "s3", "running", "gpu-2", ("GPU-c",), ""),
    ]
    rejected = p.Placement("k4dddddddd", "dave", "s4", "rejected", "gpu-2", ("GPU-x",), "assigned node no longer…")
    assert p.no_room("GPU-H200", 1, nodes, held) == (
        "No host has 1 free GPU-H200 now. gpu-1: 0 of 2 free, held by alice (kernel k1aaaaaa), bob (kernel k2bbbbbb); "
        "gpu-2 (not answering): 0 of 1 free, held by carol (kernel k3cccccc)."
    )
    assert "No host in the cluster has a GPU-A100" in p.no_room("GPU-A100", 1, nodes, held)
    assert set(p.dead_hosts([*held, rejected], nodes)) == {"k3cccccccc", "k4dddddddd"}
    assert p.dead_hosts(held, nodes)["k3cccccccc"] == (
        "host gpu-2 stopped answering: the kernel there is lost; restart it to run elsewhere"
    )
