"""A real Docker Swarm on one machine, for tests: several ``dockerd``, each a host of its own.

Each node is a ``dockerd`` (with the ``containerd`` it starts) in a network namespace and a hostname (UTS
namespace) of its own, with its own ``--data-root``, ``--exec-root``, socket and pid file, all under one
root-only folder (``mkdtemp``: 0700, owned by root). The nodes' ``eth0`` are joined by a bridge that lives in a
namespace of its own too, so nothing of the cluster appears among the machine's own links, and no namespace has
a route out. Addresses, and the pool Swarm takes its overlay subnets from, are in 198.18.0.0/15 (set aside for
benchmarks, RFC 2544), never a private range a real network may use.

GPUs are the one fake part: a node advertises ``--node-generic-resources`` (``GPU-H200=<uuid>``), which is
what the admin of a real GPU host writes in its daemon.json, and Swarm treats them as it would real ones.

Each node gets the test images without a registry: a template image store is made once (``docker save`` from
the machine's engine into a throwaway ``dockerd``) and kept in /var/cache/jupyter_gpuenv; a node starts on a
copy of it (its layers hard-linked), which takes a fraction of a second where ``docker load`` takes
seconds per node.

``Cluster.close`` removes everything it made, also after a failure or a killed node: processes (found by the
folder in their command line or their root), mounts under the folder, the namespaces (with them the links),
the folder. ``leftovers`` says what would remain; the tests assert it is nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

ADDRESS_PREFIX = "198.18.0."  # the nodes' /24
ADDRESS_POOL = "198.18.128.0/17"  # Swarm's overlay subnets (its ingress network) are cut from here
TEMPLATE_CACHE = Path("/var/cache/jupyter_gpuenv")
KERNEL_IMAGE = "gpuenv-test-kernel:latest"  # the test image, loaded on every node
DEFAULT_IMAGES = (KERNEL_IMAGE,)
CPU_LABEL = "io.jupyter.gpuenv.cpu-kernels"  # the node label the harness puts on the hosts that take CPU kernels


@dataclass(frozen=True)
class NodeSpec:
    """One host of the cluster as a test asks for it."""

    name: str  # its hostname, which Swarm reports as the node's
    manager: bool = False
    gpus: tuple[tuple[str, str], ...] = ()  # (kind, uuid), e.g. ("GPU-H200", "GPU-0a1b…")
    labels: dict[str, str] = field(default_factory=dict)  # node labels, set through the manager
    daemon: dict = field(default_factory=dict)  # more daemon.json settings (e.g. runtimes)
    env: dict[str, str] = field(default_factory=dict)  # more environment for dockerd (and what it starts)


def default_specs() -> list[NodeSpec]:
    """One manager that takes CPU kernels; two workers with H200s: two on gpu-1, one on gpu-2."""
    return [
        NodeSpec("manager-1", manager=True, labels={CPU_LABEL: "true"}),
        NodeSpec("gpu-1", gpus=(("GPU-H200", fake_uuid(1, 0)), ("GPU-H200", fake_uuid(1, 1)))),
        NodeSpec("gpu-2", gpus=(("GPU-H200", fake_uuid(2, 0)),)),
    ]


def fake_uuid(node: int, index: int) -> str:
    """A GPU UUID in NVML's form, recognisably fake."""
    return f"GPU-fa4e{node:04x}-0000-4000-8000-{index:012x}"


@dataclass
class Node:
    spec: NodeSpec
    address: str
    folder: Path
    netns: Path
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return f"unix://{self.folder / 'docker.sock'}"

    def client(self, timeout: int = 10) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def kill_engine(self) -> None:
        """The host stops answering: its dockerd is killed (its containerd goes with it; containers stay)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Cluster:
    """Start with ``Cluster.start(specs)``; always ``close()`` (the fixture does, in a ``finally``)."""

    def __init__(self, root: Path, heartbeat_s: float | None = None):
        self.root = root
        self.heartbeat_s = heartbeat_s  # Swarm's dispatcher heartbeat; a node is down after 3 missed (default 5 s)
        self.nodes: list[Node] = []
        self.bridge_netns = root / "ns" / "bridge"
        self.started_in: dict[str, float] = {}  # seconds per start-up step, for the report
        self.netns_inodes: set[int] = set()  # which namespaces are ours, to look for after close

    # -- start ---------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        specs: list[NodeSpec] | None = None,
        images: tuple[str, ...] = DEFAULT_IMAGES,
        heartbeat_s: float | None = None,
    ) -> Cluster:
        specs = specs or default_specs()
        if sum(s.manager for s in specs) != 1:
            raise ValueError("a test cluster has exactly one manager")
        cluster = cls(Path(tempfile.mkdtemp(prefix="gpuenv-swarm-")), heartbeat_s)
        try:
            cluster._step("network", cluster._make_network, specs)
            template = cluster._step("images", image_template, images)
            with ThreadPoolExecutor(len(cluster.nodes)) as pool:
                cluster._step(
                    "engines", lambda: list(pool.map(lambda n: cluster._start_engine(n, template), cluster.nodes))
                )
            cluster._step("swarm", cluster._form_swarm)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _step(self, name, func, *args):
        began = time.monotonic()
        try:
            return func(*args)
        finally:
            self.started_in[name] = round(time.monotonic() - began, 2)

    def _make_network(self, specs: list[NodeSpec]) -> None:
        (self.root / "ns").mkdir()
        self.netns_inodes.add(new_netns(self.bridge_netns))
        in_netns(self.bridge_netns, "ip link set lo up && ip link add br0 type bridge && ip link set br0 up")
        for i, spec in enumerate(specs):
            node = Node(spec, f"{ADDRESS_PREFIX}{10 + i}", self.root / spec.name, self.root / "ns" / spec.name)
            node.folder.mkdir()
            self.netns_inodes.add(new_netns(node.netns))
            # the pair is made in the bridge's namespace and one end moved straight into the node's
            in_netns(
                self.bridge_netns,
                f"ip link add v{i} type veth peer name eth0 netns {node.netns} && "
                f"ip link set v{i} master br0 && ip link set v{i} up",
            )
            in_netns(
                node.netns,
                f"ip link set lo up && ip addr add {node.address}/24 dev eth0 && ip link set eth0 up",
            )
            self.nodes.append(node)

    def _start_engine(self, node: Node, template: Path | None) -> None:
        data = node.folder / "data"
        if template:
            share_images(template, data)
        config = {
            "bridge": "none",  # no docker0: a task with no network has only lo (the kernels' case)
            "iptables": False,
            "ip-masq": False,
            "node-generic-resources": [f"{kind}={uuid}" for kind, uuid in node.spec.gpus],
            **node.spec.daemon,
        }
        (node.folder / "daemon.json").write_text(json.dumps(config, indent=1))
        f = node.folder
        argv = ["nsenter", f"--net={node.netns}", "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"']
        argv += [node.name, "dockerd", f"--config-file={f / 'daemon.json'}", f"--data-root={data}"]
        argv += [f"--exec-root={f / 'exec'}", f"--host={node.url}", f"--pidfile={f / 'docker.pid'}"]
        with open(f / "dockerd.log", "ab") as log:
            # every exec in the chain replaces the one before: the Popen's pid is dockerd's
            node.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **node.spec.env}
            )
        wait_for_engine(node)

    def _form_swarm(self) -> None:
        manager = self.manager
        mc = manager.client()
        mc.swarm.init(
            advertise_addr=manager.address,
            listen_addr=f"{manager.address}:2377",
            default_addr_pool=[ADDRESS_POOL],
            subnet_size=24,
            **({"dispatcher_heartbeat_period": int(self.heartbeat_s * 1e9)} if self.heartbeat_s else {}),
        )
        tokens = mc.swarm.attrs["JoinTokens"]
        for node in self.workers:
            node.client().swarm.join(
                remote_addrs=[f"{manager.address}:2377"],
                join_token=tokens["Worker"],
                listen_addr=f"{node.address}:2377",
                advertise_addr=node.address,
            )
        for node in self.nodes:
            if node.spec.labels:
                swarm_node = mc.nodes.get(node.name)
                swarm_node.update({**swarm_node.attrs["Spec"], "Labels": dict(node.spec.labels)})

    # -- use -------------------------------------------------------------------------------------------------

    @property
    def manager(self) -> Node:
        return next(n for n in self.nodes if n.spec.manager)

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.spec.manager]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # -- stop ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this cluster made; safe to call twice, and after a partial start."""
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                node.process.kill()  # a test cluster keeps nothing: no graceful stop of swarm or tasks
                node.process.wait()
        for _ in range(50):  # containerd and shims see their parent gone; stragglers are killed by pid
            pids = our_processes(self.root)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for mountpoint in sorted(our_mounts(self.root), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists (processes, mounts, namespaces, the folder): [] after close."""
        left = [f"process {pid}" for pid in our_processes(self.root)]
        left += [f"mount {m}" for m in our_mounts(self.root)]
        left += [f"netns {ns}" for ns in live_netns(self.netns_inodes)]
        if self.root.exists():
            left.append(f"folder {self.root}")
        return left


def new_netns(path: Path) -> int:
    """A network namespace kept alive by a bind mount on ``path`` (not in /run/netns: nothing global); its inode."""
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    return os.stat(path).st_ino


def in_netns(netns: Path, script: str) -> None:
    # nsenter --net only: `ip netns exec` would also remount /sys, which breaks the machine's dockerd
    subprocess.run(["nsenter", f"--net={netns}", "sh", "-ec", script], check=True, capture_output=True)


def wait_for_engine(node: Node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"dockerd of {node.name} exited: {tail(node.folder / 'dockerd.log')}")
        try:
            node.client(timeout=2).ping()
            return
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            time.sleep(0.05)
    raise RuntimeError(f"dockerd of {node.name} did not answer within {timeout} s: {tail(node.folder / 'dockerd.log')}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def image_template(images: tuple[str, ...]) -> Path | None:
    """An image store (a dockerd data-root) holding ``images``, made once and kept in /var/cache, or None."""
    if not images:
        return None
    host = docker.from_env(timeout=60)
    ids = [host.images.get(name).id.split(":")[-1][:12] for name in images]
    version = host.version()["Version"]
    template = TEMPLATE_CACHE / f"swarm-node-{version}-{'-'.join(ids)}"
    if template.is_dir():
        return template
    TEMPLATE_CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="swarm-template-", dir=TEMPLATE_CACHE))
    sock = f"unix://{work / 'docker.sock'}"
    argv = ["unshare", "--net", "dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false"]
    argv += [f"--data-root={work / 'data'}", f"--exec-root={work / 'exec'}", f"--host={sock}"]
    argv += [f"--pidfile={work / 'docker.pid'}"]
    with open(work / "dockerd.log", "ab") as log:
        engine = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for_engine(Node(NodeSpec("template"), "", work, Path(), engine))
        target = docker.DockerClient(base_url=sock, timeout=120)
        for name in images:
            target.images.load(b"".join(host.images.get(name).save(named=True)))
    finally:
        engine.terminate()
        engine.wait()
        for mountpoint in sorted(our_mounts(work), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)
    # only the images: no engine identity, networks or containers are shared between nodes
    keep = work / "keep"
    keep.mkdir()
    for part in ("image", "overlay2"):
        (work / "data" / part).rename(keep / part)
    keep.rename(template)
    shutil.rmtree(work, ignore_errors=True)
    return template


def share_images(template: Path, data: Path) -> None:
    """Give a node the template's images. The layers are hard links (no data written: a copy of 200 MB takes
    15 s on a slow disk): dockerd never changes a layer's files, a container's writes go to its own upper
    folder. The image metadata, which dockerd rewrites, is copied."""
    data.mkdir()
    subprocess.run(["cp", "-a", str(template / "image"), str(data / "image")], check=True)
    linked = subprocess.run(["cp", "-al", str(template / "overlay2"), str(data / "overlay2")], capture_output=True)
    if linked.returncode:  # another filesystem than the cache's: copy
        shutil.rmtree(data / "overlay2", ignore_errors=True)
        subprocess.run(["cp", "-a", str(template / "overlay2"), str(data / "overlay2")], check=True)


def our_processes(root: Path) -> list[int]:
    """Processes of a cluster: its command line names the folder (dockerd, containerd, shims), or its root
    is in it (the tasks' containers)."""
    mine, marker = [], str(root)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            in_root = os.readlink(Path(entry.path, "root")).startswith(marker)
        except OSError:
            continue
        if marker in cmdline or in_root:
            mine.append(int(entry.name))
    return mine


def our_mounts(root: Path) -> list[str]:
    marker = str(root)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == marker or p.startswith(marker + "/")]


def live_netns(inodes: set[int]) -> set[int]:
    """Which of these network namespaces something still holds: a process in it, or a mount of it."""
    live = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                live.add(os.stat(Path(entry.path, "ns", "net")).st_ino)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if "net:[" in line:
                live.add(int(line.split("net:[")[1].split("]")[0]))
    return live & inodes


def kernel_request(command: tuple[str, ...], gpus: int = 1, user: str = "alice", uid: int = 1001) -> Any:
    """A kernel start as the broker asks Swarm for one: ``gpus`` fake H200s (0: a CPU kernel), the test image."""
    from jupyter_gpuenv.engines.swarm import service

    return service.KernelRequest(
        kernel_id=str(uuid.uuid4()),
        user=user,
        uid=uid,
        gid=uid,
        environment="pytorch" if gpus else "cpu",
        image=KERNEL_IMAGE,
        command=command,
        notebook="train.ipynb",
        gpu_kind="GPU-H200" if gpus else "",
        gpu_count=gpus,
    )
