"""The broker's settings: ``c.Broker.<name>`` in its configuration file (checked as a whole by ``broker.setup``)."""

from __future__ import annotations

import os

from traitlets import Bool, Dict, Enum, Float, Int, Unicode
from traitlets.config import Configurable


class Broker(Configurable):
    """The broker's settings, ``c.Broker.<name>`` in its configuration file."""

    socket = Unicode(
        "/run/jupyter-gpuenv/broker.sock",
        config=True,
        help="The unix socket servers connect to. Its folder is made root-owned (0755) and also holds the lease "
        "book (leases.json) and each kernel's socket folder (sockets/<uid>/<kernel id>, owned by that user).",
    )
    environments = Dict(
        config=True,
        help="The container environments of this host, by name, in the schema of c.GpuEnv.environments. "
        "Nothing else can start: a user's kernelspec only names one of these.",
    )
    policy = Dict(
        config=True,
        help="Who may use what: {'default': RULE, 'groups': {GROUP: RULE}, 'users': {NAME: RULE}}, a RULE being "
        "{'environments': [NAMES] or '*', 'max_gpus': N, 'max_kernels': N}. A user's own rule wins, then the "
        "most permissive of their groups', then the default. Empty: everyone may use everything.",
    )
    show_other_users = Enum(
        ["name", "anonymous"],
        "name",
        config=True,
        help="How a refusal and the panel name another person's kernel: by user name, or as 'another user'.",
    )
    docker_url = Unicode(None, allow_none=True, config=True, help="The Docker engine. Unset: the default socket.")
    docker_timeout = Float(5.0, config=True, help="Seconds the engine may take to answer one call.")
    visible_devices = Unicode(
        None, allow_none=True, config=True, help="GPUs the broker gives out ('0,1', UUIDs). Unset: all of them."
    )
    pull_missing_images = Bool(True, config=True, help="Pull an environment's missing image at its first start.")
    kernel_runtime_dir = Unicode(
        "/var/lib/jupyter-gpuenv/kernel-runtimes",
        config=True,
        help="Prepared kernel runtimes (`jupyter gpuenv prepare-runtime --dir ...`) for images without ipykernel.",
    )
    identify = Enum(
        ["peer", "hub-token"],
        "peer",
        config=True,
        help="How the broker knows who calls. 'peer': the caller's Unix account, from the socket itself (servers "
        "run as each person's account: TLJH, SystemdSpawner, LocalProcessSpawner). 'hub-token': the caller "
        "presents its server's JUPYTERHUB_API_TOKEN and the hub says whose it is (servers in containers that "
        "all run as one uid: DockerSpawner).",
    )
    hub_api_url = Unicode(
        os.environ.get("JUPYTERHUB_API_URL", ""),
        config=True,
        help="The hub's API, for hub-token mode (a hub-managed service gets it as JUPYTERHUB_API_URL).",
    )
    hub_uid = Int(1000, config=True, help="hub-token mode: the uid every user's server runs as (docker-stacks: 1000).")
    hub_gid = Int(100, config=True, help="hub-token mode: its gid (docker-stacks: 100).")
    hub_work_dir = Unicode(
        "/home/jovyan/work",
        config=True,
        help="hub-token mode: where each user's volume is mounted in their server's container; their kernels get "
        "the same volume at the same path, and nothing else of the host.",
    )
    hub_volume = Unicode(
        "jupyterhub-user-{username}",
        config=True,
        help="hub-token mode: the Docker volume that holds a user's files, as DockerSpawner names it.",
    )
    sample_interval = Float(2.0, config=True, help="Seconds between two reads of the GPUs (NVML).")
    park_idle_minutes = Float(
        0.0,
        config=True,
        help="Park every user's kernel that has been idle this many minutes while its GPUs did no work: its GPU "
        "memory moves to host memory, its GPU is free for others, its variables stay, and running a cell resumes "
        "it. 0: never (users may still park their own).",
    )
    park_min_gpu_memory_gib = Float(
        1.0, config=True, help="The idle policy parks only kernels holding at least this much GPU memory (GiB)."
    )
    park_timeout = Float(300.0, config=True, help="Seconds a park or resume may take before it is reported failed.")
    metrics_port = Int(
        939,
        config=True,
        help="The port of the broker's Prometheus endpoint, http://<metrics_address>:<port>/metrics: every user's "
        "kernels and GPU usage on this host, one scrape target for the administrator (docs/metrics.md). 0: off. "
        "Keep it below 1024 (a privileged port): only root can listen there, so no user can take the port while "
        "the broker restarts and receive Prometheus's token.",
    )
    metrics_address = Unicode(
        "127.0.0.1", config=True, help="Where the endpoint listens: a loopback address, unless metrics_public is True."
    )
    metrics_public = Bool(
        False,
        config=True,
        help="Allow a metrics_address that is not loopback, for a Prometheus on another machine. The series name "
        "every user's notebooks; the token keeps them from other users, but plain HTTP does not hide them on the "
        "network: use one you trust, or a TLS proxy.",
    )
    metrics_token_file = Unicode(
        "/var/lib/jupyter-gpuenv/metrics.token",
        config=True,
        help="The bearer token a scrape must send. Made if missing (64 hex digits, 0600, root's); refused if everyone "
        "may read it. Give Prometheus a copy, or `chgrp prometheus` it and `chmod 0640`.",
    )
    usage_dir = Unicode(
        "/var/lib/jupyter-gpuenv/usage",
        config=True,
        help="The host's usage ledger (every user's kernels; root's, 0700): `sudo jupyter gpuenv usage --dir <it>` "
        "prints GPU-hours per user without Prometheus. Empty: no ledger.",
    )
    usage_flush_interval = Float(
        60.0,
        config=True,
        help="Seconds between two writes of the usage ledger (the first record after a quiet spell is written at "
        "once, and one when the broker stops).",
    )
    orphan_interval = Float(
        1.0,
        config=True,
        help="Seconds between two looks for kernels whose client (the server, or a script, that started them) is gone: "
        "they are removed and their GPUs freed. A look reads /proc, no engine call (unused namespace holders are "
        "looked for every 10 seconds at most).",
    )
    max_connections_per_user = Int(
        32,
        config=True,
        help="Connections one person's processes may hold open to the broker at once (terminals count): more are "
        "answered 429 and closed, so no one person can take the connections everyone else needs. In hub-token mode, "
        "where every server has one uid, this counts per calling process.",
    )
    max_connections = Int(
        0,
        config=True,
        help="Connections the broker holds open at once, for everyone. 0: half its open-file limit.",
    )
    socket_folder_grace = Float(
        120.0,
        config=True,
        help="Seconds a kernel's socket folder may stay without a kernel (asked for, but no start followed) before "
        "it is removed.",
    )
    max_pending_socket_folders = Int(
        16,
        config=True,
        help="Socket folders one person may hold at once without a running kernel (starts under way): more are "
        "answered 429.",
    )
    shared_network_namespace = Bool(
        True,
        config=True,
        help="Kernels without network join one no-network namespace per user (loopback only; never another "
        "user's) instead of one each: a faster start. A user's kernels then share 127.0.0.1, as local kernels do. "
        "False: a namespace per kernel.",
    )
    warm_kernels = Dict(
        config=True,
        help="Warm kernels per environment of c.Broker.environments, e.g. {'torch': 1}: for each person whose server "
        "is running (it announces itself to the broker every few seconds; a person stops counting once that server's "
        "process is gone) and whose policy allows the environment, this many containers are started ahead, as that "
        "person, with their folders, and handed only to their next start of it: the kernel is ready at once. A warm "
        "kernel holds no GPU memory, is not counted as a kernel (the policy's max_kernels applies when it is taken) "
        "and costs nothing in the usage ledger. Empty: none.",
    )
    max_warm_kernels = Int(
        8,
        config=True,
        help="Warm kernels on this host at most, for everyone together (c.Broker.warm_kernels per person within it, "
        "shared out one at a time in turn). 0: none.",
    )
    warm_imports = Dict(
        config=True,
        help="Modules a warm kernel imports ahead, per environment, e.g. {'torch': ['torch']}: the first cell's "
        "import is then done already (no CUDA context is made, so it holds no GPU memory).",
    )
    cluster = Enum(
        ["", "swarm"],
        "",
        config=True,
        help="'' (default): kernels run on this host. 'swarm': this host is one of several in a Docker Swarm, and "
        "kernels run on whichever host has a free GPU of the model their environment asks for (docs/multi-host.md). "
        "This host's engine must then be a swarm manager (or set cluster_manager_url).",
    )
    cluster_manager_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="cluster 'swarm': a swarm manager's Engine API. Unset: this host's own engine (docker_url), which "
        "must be a manager. Never a TCP address without TLS: whoever reaches it is root on every host.",
    )
    cluster_gpu_kinds = Dict(
        config=True,
        help="cluster 'swarm': the GPU model each environment that wants GPUs asks for, as the hosts advertise it "
        "in their daemon.json node-generic-resources: {'pytorch': 'GPU-H200'}.",
    )
    relay_port = Int(
        7491,
        config=True,
        help="cluster 'swarm': the port on this host's swarm address where its broker takes kernel channels from "
        "the other hosts' brokers (mutual TLS with the swarm's own node certificates; nothing else listens).",
    )
    swarm_certificates = Unicode(
        "/var/lib/docker/swarm/certificates",
        config=True,
        help="cluster 'swarm': the folder of this node's swarm certificate, key and root CA (swarm-node.crt, "
        "swarm-node.key, swarm-root-ca.crt), which the relay authenticates with; under dockerd's data-root.",
    )
