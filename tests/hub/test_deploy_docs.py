"""The deployment examples in docs/examples/ load in the real programs, and do what the docs say."""

from __future__ import annotations

import asyncio
import copy
import re
import types
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


# -- DockerSpawner ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_config():
    pytest.importorskip("jupyterhub")
    pytest.importorskip("dockerspawner", reason="pip install dockerspawner to check the DockerSpawner example")
    from jupyterhub.app import JupyterHub

    hub = JupyterHub()
    hub.load_config_file(str(EXAMPLES / "jupyterhub_config_dockerspawner.py"))
    return hub.config


def unknown_keys(config, classes) -> list[str]:
    """``c.Class.name`` settings that name no configurable trait of that class (typos, renamed options)."""
    by_name = {cls.__name__: cls for cls in classes}
    unknown = []
    for section, values in config.items():
        assert section in by_name, f"c.{section} is not a class this test knows; add it to the list"
        traits = by_name[section].class_traits(config=True)
        unknown += [f"c.{section}.{key}" for key in values if key not in traits]
    return unknown


def test_dockerspawner_example_sets_only_real_options(docker_config):
    from dockerspawner import DockerSpawner
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.spawner import Spawner

    assert unknown_keys(docker_config, [JupyterHub, Authenticator, Spawner, DockerSpawner]) == []
    assert docker_config.JupyterHub.spawner_class == "docker"
    # the Docker socket is not handed to user containers (docs/deploy-dockerspawner.md, "Security")
    assert not any("docker.sock" in str(k) + str(v) for k, v in docker_config.DockerSpawner.volumes.items())


def test_dockerspawner_example_gives_each_user_their_gpus(docker_config):
    import docker.types
    from dockerspawner import DockerSpawner

    def spawner_for(name):
        spawner = DockerSpawner(config=copy.deepcopy(docker_config), user=types.SimpleNamespace(name=name))
        docker_config.Spawner.pre_spawn_hook(spawner)
        # what DockerSpawner hands to the Docker API; the real SDK validates it
        host_config = docker.types.HostConfig(version="1.44", **spawner.extra_host_config)
        return spawner, host_config

    _, alice = spawner_for("alice")
    assert alice["ShmSize"] == 8 * 1024**3
    assert [(r["Driver"], r["DeviceIDs"]) for r in alice["DeviceRequests"]] == [("nvidia", ["0"])]
    _, bob = spawner_for("bob")
    assert [r["DeviceIDs"] for r in bob["DeviceRequests"]] == [["1"]]
    spawner, admin = spawner_for("admin")  # nobody listed: no GPU
    assert "DeviceRequests" not in admin and "device_requests" not in spawner.extra_host_config


# -- the GPU broker on a shared host ------------------------------------------------------------------------
def load_broker(name):
    from traitlets.config.loader import PyFileConfigLoader

    from jupyter_gpuenv.broker.settings import Broker
    from jupyter_gpuenv.broker.setup import EXAMPLE

    # the peer-mode example ships in the wheel (`jupyter gpuenv broker --example-config`)
    folder = EXAMPLE.parent if name == EXAMPLE.name else EXAMPLES
    config = PyFileConfigLoader(name, str(folder)).load_config()
    assert unknown_keys(config, [Broker]) == []
    return Broker(config=config)


def test_broker_examples_load_and_their_environments_and_policy_parse():
    from jupyter_gpuenv.broker.policy import Policy
    from jupyter_gpuenv.environments.definition import parse_environment

    peer = load_broker("broker_config.py")
    assert peer.identify == "peer" and not peer.socket.startswith("/tmp")
    envs = {n: parse_environment(n, raw, "example") for n, raw in peer.environments.items()}
    assert str(envs["pytorch"].gpus) == "exclusive:1" and envs["pytorch"].display_name == "PyTorch 2.6 / CUDA 12.4"
    policy = Policy.parse(peer.policy)
    assert policy.rule_for("intern", ["ml-research"]).environments == frozenset({"cpu"})
    assert policy.rule_for("someone", ["ml-research"]).environments is None
    hub = load_broker("broker_hub_token_config.py")
    assert hub.identify == "hub-token" and (hub.hub_uid, hub.hub_gid) == (1000, 100)
    assert {n: parse_environment(n, raw, "example") for n, raw in hub.environments.items()}


@pytest.fixture(scope="module")
def broker_docker_config():
    pytest.importorskip("dockerspawner")
    from jupyterhub.app import JupyterHub

    hub = JupyterHub()
    hub.load_config_file(str(EXAMPLES / "jupyterhub_config_broker_dockerspawner.py"))
    return hub.config


def test_broker_dockerspawner_example_gives_the_broker_never_the_docker_socket(broker_docker_config):
    from dockerspawner import DockerSpawner
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.spawner import Spawner

    from jupyter_gpuenv.config import GpuEnv

    config = broker_docker_config
    assert unknown_keys(config, [JupyterHub, Authenticator, Spawner, DockerSpawner]) == []
    spawner = DockerSpawner(config=copy.deepcopy(config), user=types.SimpleNamespace(name="alice"))
    binds = spawner.volume_binds  # what DockerSpawner hands to the engine for alice's container
    assert not any("docker.sock" in host for host in binds)
    assert binds["/run/jupyter-gpuenv/broker.sock"]["bind"] == "/run/jupyter-gpuenv/broker.sock"
    assert binds["/run/jupyter-gpuenv/sockets/hub-alice"]["bind"] == "/run/jupyter-gpuenv/sockets/hub-alice"
    assert binds["jupyterhub-user-alice"]["bind"] == "/home/jovyan/work"
    (arg,) = [a for a in config.Spawner.args if a.startswith("--GpuEnv.broker=")]
    assert GpuEnv(broker=arg.split("=", 1)[1]).broker == "unix:///run/jupyter-gpuenv/broker.sock"
    service = config.JupyterHub.services[0]
    assert service["command"][:2] == ["jupyter-gpuenv", "broker"]
    hub_broker = load_broker("broker_hub_token_config.py")
    assert hub_broker.hub_work_dir == config.DockerSpawner.notebook_dir
    assert hub_broker.hub_volume.format(username="alice") in binds


# -- Zero to JupyterHub / KubeSpawner --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((EXAMPLES / "z2jh-values.yaml").read_text())


def test_z2jh_profile_list_shape(values):
    profiles = values["singleuser"]["profileList"]
    assert [p.get("default", False) for p in profiles].count(True) == 1
    slugs = [p["slug"] for p in profiles]
    assert len(set(slugs)) == len(slugs)
    gpu = next(p for p in profiles if p["display_name"] == "PyTorch 2.6 / CUDA 12.4")
    override = gpu["kubespawner_override"]
    assert override["image"] and override["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    for name, choice in gpu["profile_options"]["gpus"]["choices"].items():
        # quantities as strings: a YAML number would reach Kubernetes as an int and fail validation there
        assert choice["kubespawner_override"]["extra_resource_limits"] == {"nvidia.com/gpu": name}


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


@pytest.mark.parametrize(
    ("user_options", "image", "gpus"),
    [
        ({}, None, None),
        ({"profile": "pytorch-2-6-cuda-12-4"}, "registry.example.org/gpuenv/pytorch:2.6.0-cuda12.4", "1"),
        # the spawn form's profile-option-<profile>--gpus field, as options_from_form hands it on
        ({"profile": "pytorch-2-6-cuda-12-4", "gpus": "2"}, "registry.example.org/gpuenv/pytorch:2.6.0-cuda12.4", "2"),
    ],
    ids=["default-cpu", "pytorch-1-gpu", "pytorch-2-gpus"],
)
def test_kubespawner_accepts_the_profiles_and_builds_gpu_pods(values, user_options, image, gpus, tmp_path, monkeypatch):
    pytest.importorskip("kubespawner", reason="pip install jupyterhub-kubespawner to check the z2jh example")
    from kubernetes_asyncio.config import kube_config

    # KubeSpawner loads a kubeconfig when created; no cluster is contacted to build a pod manifest
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # read at import: KUBECONFIG
    from kubespawner import KubeSpawner
    from traitlets.config import Config

    singleuser = values["singleuser"]
    config = Config()
    # what the z2jh chart's jupyterhub_config.py does with these values
    config.KubeSpawner.profile_list = singleuser["profileList"]
    config.KubeSpawner.image = f"{singleuser['image']['name']}:{singleuser['image']['tag']}"

    async def pod():  # KubeSpawner makes its (unused) API client on the running loop
        spawner = KubeSpawner(_mock=True, config=config)
        spawner.user_options = user_options
        await spawner.load_user_options()
        return spawner, await spawner.get_pod_manifest()

    spawner, manifest = asyncio.run(pod())
    container = manifest.spec.containers[0]
    assert container.image == (image or config.KubeSpawner.image)
    limits = container.resources.limits or {}
    assert limits.get("nvidia.com/gpu") == gpus
    if gpus:
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in [
            t if isinstance(t, dict) else t.to_dict() for t in (spawner.tolerations or [])
        ]


# -- docs/admin-config.md ------------------------------------------------------------------------------------
ADMIN_CONFIG = EXAMPLES.parent / "admin-config.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_admin_config_names_every_setting_and_only_real_ones():
    from jupyter_gpuenv.config import GpuEnv

    text = ADMIN_CONFIG.read_text()
    named = set(re.findall(r"c\.GpuEnv\.(\w+)", text))
    settings = set(GpuEnv.class_traits(config=True))
    assert named - settings == set(), "docs/admin-config.md names settings that do not exist"
    assert settings - named == set(), "settings missing from docs/admin-config.md"


def test_admin_config_examples_load():
    """Each ```python example that sets c.GpuEnv.* loads, and GpuEnv accepts the values."""
    from traitlets.config import Config

    from jupyter_gpuenv.config import GpuEnv

    blocks = [b for b in python_blocks(ADMIN_CONFIG.read_text()) if "c.GpuEnv." in b]
    assert len(blocks) >= 3
    for block in blocks:
        c = Config()
        exec(compile(block, str(ADMIN_CONFIG), "exec"), {"c": c})
        gpuenv = GpuEnv(config=c)
        for name, value in c.GpuEnv.items():
            assert getattr(gpuenv, name) == value


def test_admin_config_per_user_hook_sets_the_variable():
    from traitlets.config import Config

    hook_block = next(b for b in python_blocks(ADMIN_CONFIG.read_text()) if "pre_spawn_hook" in b)
    c = Config()
    exec(compile(hook_block, str(ADMIN_CONFIG), "exec"), {"c": c})
    for user, expected in (("alice", "1"), ("carol", "2,3"), ("dave", "none")):
        spawner = types.SimpleNamespace(user=types.SimpleNamespace(name=user), environment={"KEEP": "x"})
        c.Spawner.pre_spawn_hook(spawner)
        assert spawner.environment == {"KEEP": "x", "CUDA_VISIBLE_DEVICES": expected}
