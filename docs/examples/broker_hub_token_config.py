"""The broker's configuration for servers in containers (hub-token mode): /etc/jupyter-gpuenv/broker_config.py.

Goes with jupyterhub_config_broker_dockerspawner.py; see docs/shared-host.md.
"""

c = get_config()  # noqa: F821 (provided by the configuration loader)

c.Broker.identify = "hub-token"  # the hub says whose server asks (they all run as uid 1000)
c.Broker.hub_uid, c.Broker.hub_gid = 1000, 100  # docker-stacks' jovyan
c.Broker.hub_work_dir = "/home/jovyan/work"  # where DockerSpawner mounts each user's volume
c.Broker.hub_volume = "jupyterhub-user-{username}"  # DockerSpawner's name for it
c.Broker.environments = {
    "pytorch": {
        "display_name": "PyTorch 2.6 / CUDA 12.4",
        "image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
        "gpus": "exclusive:1",
        "shm_size": "16g",
    }
}
c.Broker.policy = {"default": {"environments": ["pytorch"], "max_gpus": 1, "max_kernels": 2}}
