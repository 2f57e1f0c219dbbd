"""The broker's cluster rules without a swarm: the setting checked as a whole, a start turned into a service, the
line of waiting starts."""

from traitlets.config import Config

from jupyter_gpuenv.broker import cluster as c
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.broker.setup import check
from jupyter_gpuenv.containers.spec import ContainerSpec
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.host import Mount

ENVS = {"pytorch": {"image": "img:1", "gpus": "exclusive:1"}, "cpu": {"image": "img:1", "gpus": "none"}}


def problems(**broker):
    return check(Config({"Broker": {"environments": ENVS, **broker}}))


def test_a_cluster_needs_a_gpu_model_for_each_gpu_environment_and_counts_only():
    assert problems() == []  # one host: nothing asked
    assert problems(cluster="swarm") == [
        "environment 'pytorch' wants GPUs: c.Broker.cluster_gpu_kinds must say which model (e.g. {'pytorch': "
        "'GPU-H200'})"
    ]
    assert problems(cluster="swarm", cluster_gpu_kinds={"pytorch": "GPU-H200"}) == []
    assert problems(cluster="swarm", cluster_gpu_kinds={"pytorch": "H200", "gone": "GPU"}) == [
        "c.Broker.cluster_gpu_kinds names the environment 'gone', which c.Broker.environments does not define",
        "c.Broker.cluster_gpu_kinds['pytorch'] = 'H200' is not a GPU model as hosts advertise it (e.g. 'GPU-H200')",
    ]
    everything = check(
        Config(
            {"Broker": {"environments": {"all": {"image": "i", "gpus": "all"}}, "cluster": "swarm", "relay_port": 0}}
        )
    )
    assert "c.Broker.relay_port must be a port (1 to 65535), not 0" in everything
    assert any("gpus 'all' has no meaning across hosts" in x for x in everything)
    assert problems(cluster_gpu_kinds={"pytorch": "GPU-H200"}) == [
        "c.Broker.cluster_gpu_kinds is set but c.Broker.cluster is not 'swarm': set both, or neither"
    ]
    assert any("did you mean" in x for x in problems(clustre="swarm"))
    warm = problems(cluster="swarm", cluster_gpu_kinds={"pytorch": "GPU"}, warm_kernels={"cpu": 1})
    assert any("c.Broker.warm_kernels are containers of this host" in x for x in warm)
    assert any("c.Broker.cluster:" in x for x in problems(cluster="kubernetes"))


def test_connect_is_none_on_one_host_and_a_cluster_with_swarm():
    assert c.connect(Broker()) is None
    cluster = c.connect(Broker(cluster="swarm", docker_url="unix:///nowhere.sock", cluster_gpu_kinds={"p": "GPU"}))
    assert cluster is not None and cluster.engine.manager_url == "unix:///nowhere.sock"
    cluster.engine.close()


def test_a_start_becomes_a_service_request_with_shared_paths_and_no_gpu_hiding_variable():
    env = parse_environment("pytorch", {"image": "img:1", "gpus": "exclusive:2", "memory": "16g", "cpus": 4}, "t")
    spec = ContainerSpec(
        name="gpuenv-k1",
        image="img:1",
        command=["python3", "-m", "ipykernel_launcher"],
        user="1001:1001",
        working_dir="/home/alice/work",
        environment={"CUDA_VISIBLE_DEVICES": "", "HOME": "/home/alice"},
        mounts=[Mount("/home/alice", "/home/alice", False), Mount("/data", "/data", True)],
        labels={},
        network_mode="none",
        shm_size="2g",
        memory="16g",
        nano_cpus=4_000_000_000,
    )
    request = c.service_request(env, "GPU-H200", spec, "k1", "alice", 1001, 1001, "train.ipynb")
    assert (request.gpu_kind, request.gpu_count) == ("GPU-H200", 2)
    assert request.env == {"HOME": "/home/alice"}  # CUDA sees what the host's runtime adds: the task's GPUs
    assert [(m.source, m.read_only) for m in request.mounts] == [("/home/alice", False), ("/data", True)]
    assert request.memory_bytes == 16 * 2**30 and request.nano_cpus == 4_000_000_000
    assert request.workdir == "/home/alice/work" and request.notebook == "train.ipynb"


def test_the_line_is_first_come_first_served_per_gpu_model():
    line = c.Line()
    a, b, other, d = line.join("GPU-H200"), line.join("GPU-H200"), line.join("GPU-A100"), line.join("GPU-H200")
    assert [line.position(t) for t in (a, b, other, d)] == [1, 2, 1, 3]
    line.leave(a)
    assert [line.position(t) for t in (b, d)] == [1, 2] and line.ahead("GPU-H200") == 2
    assert c.size_bytes("512m") == 512 * 2**20 and c.size_bytes(None) == 0 and c.size_bytes("100") == 100


def test_a_host_is_chosen_as_swarm_would_spread_and_never_one_without_room():
    from jupyter_gpuenv.engines.swarm import placements as p

    def node(name, gpus, up=True, cpu=False):
        return p.Node(name, name, up, True, tuple(("GPU-H200", f"{name}-{i}") for i in range(gpus)),
                      {"io.jupyter.gpuenv.cpu-kernels": "true"} if cpu else {})  # fmt: skip

    nodes = [node("gpu-1", 2), node("gpu-2", 1), node("gpu-3", 4, up=False), node("m-1", 0, cpu=True)]
    holding = [p.Placement("k1", "bob", "s1", "running", "gpu-1", ("gpu-1-0",), "")]
    assert p.choose_node("GPU-H200", 1, nodes, []).hostname == "gpu-1"  # most free first; gpu-3 is down
    assert p.choose_node("GPU-H200", 1, nodes, holding).hostname == "gpu-2"  # 1 and 1: by name
    assert p.choose_node("GPU-H200", 2, nodes, holding) is None
    assert p.choose_node("", 0, nodes, holding).hostname == "m-1"


def test_every_broker_setting_the_multi_host_guide_names_is_one():
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "multi-host.md").read_text()
    named = set(re.findall(r"c\.Broker\.(\w+)", guide))
    assert {"cluster", "cluster_gpu_kinds", "relay_port", "swarm_certificates"} <= named
    assert named - set(Broker.class_traits(config=True)) == set()
