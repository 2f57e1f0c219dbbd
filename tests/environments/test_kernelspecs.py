"""Which environment a kernelspec starts: one reading, shared by the provisioner, the API and the CLI."""

import pytest

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.environments import kernelspecs
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.errors import InvalidEnvironment


def spec_entry(env_name, **config):
    stanza = {"provisioner_name": kernelspecs.PROVISIONER_NAME, "config": {"environment": env_name, **config}}
    return {"spec": {"display_name": f"Spec {env_name}", "metadata": {"kernel_provisioner": stanza}}}


def test_written_kernelspec_reads_back_as_the_same_environment():
    env = parse_environment("mine", {"image": "img:1", "gpus": "exclusive:1", "shm_size": "4g"}, "cli")
    written = kernelspecs.kernelspec_json(env)
    config = kernelspecs.provisioner_config(written)
    assert kernelspecs.resolve(GpuEnv(), config, "kernelspec mine") == env
    assert written["metadata"]["kernel_provisioner"]["provisioner_name"] == "gpuenv-docker-provisioner"
    assert kernelspecs.kernelspec_name("mine") == "gpuenv-mine" == kernelspecs.kernelspec_name("gpuenv-mine")


def test_a_configured_environment_wins_over_a_kernelspecs_copy():
    settings = GpuEnv(environments={"team": {"image": "admin:1", "gpus": "exclusive:1"}})
    env = kernelspecs.resolve(settings, {"environment": "team", "image": "mine:1", "network": "host"}, "ks")
    assert env.image == "admin:1" and env.network == "none"


def test_locked_down_server_refuses_kernelspec_definitions():
    settings = GpuEnv(allow_kernelspec_environments=False, environments={"team": {"image": "admin:1"}})
    with pytest.raises(InvalidEnvironment, match="only accepts environments from c.GpuEnv.environments"):
        kernelspecs.resolve(settings, {"environment": "mine", "image": "mine:1"}, "ks")
    with pytest.raises(InvalidEnvironment, match="no environment 'gone'.*defined: team"):
        kernelspecs.resolve(settings, {"environment": "gone"}, "ks")
    with pytest.raises(InvalidEnvironment, match="needs 'environment': NAME"):
        kernelspecs.resolve(settings, {"image": "x"}, "ks")


def test_other_provisioners_kernelspecs_are_not_ours():
    assert kernelspecs.provisioner_config({"metadata": {}}) is None
    assert kernelspecs.provisioner_config({"metadata": {"kernel_provisioner": {"provisioner_name": "x"}}}) is None


def test_listing_names_every_environment_and_why_it_cannot_start():
    settings = GpuEnv(environments={"team": {"image": "admin:1"}, "orphan": {"image": "o:1"}, "broken": {"gpus": "1"}})
    specs = {
        "gpuenv-team": spec_entry("team"),
        "gpuenv-mine": spec_entry("mine", image="mine:1"),
        "gpuenv-bad": spec_entry("bad", image="x", shm="1g"),
        "python3": {"spec": {"display_name": "Python 3", "metadata": {}}},
    }
    rows = {d.name: d for d in kernelspecs.defined_environments(settings, specs)}
    assert sorted(rows) == ["bad", "broken", "mine", "orphan", "team"]
    assert rows["team"].kernelspec == "gpuenv-team" and rows["team"].source == kernelspecs.CONFIGURED
    assert rows["team"].environment.display_name == "Spec team"  # what Lab's kernel menu shows
    assert rows["mine"].environment.image == "mine:1" and rows["mine"].source == "kernelspec gpuenv-mine"
    assert rows["orphan"].kernelspec is None and rows["orphan"].environment is not None
    assert rows["bad"].environment is None and "unknown key(s) 'shm'" in str(rows["bad"].error)
    assert "'image' is required" in str(rows["broken"].error)
