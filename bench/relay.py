"""What the broker ⇄ broker relay costs a kernel on another host: remote vs same-host, side by side in one run.

    sudo python3 bench/relay.py [--rounds 200] [--megabytes 100] [--out relay.json]

Starts a two-node test swarm (tests/swarm/cluster.py: manager-1, gpu-1 with one fake GPU), a real ipykernel in a
task on gpu-1, broker B's relay server on gpu-1's address and broker A's listeners on manager-1 (each in its
node's network namespace, so the TLS hop crosses the cluster's bridge). Then, against the same kernel:

  same-host   a jupyter_client on the kernel's own ipc sockets (what a server on host B gets)
  remote      a jupyter_client on host A's sockets, through both brokers (unix → TLS → unix)

measuring an execute round trip (``pass``; median and p95 of ``--rounds``) and a stream (``--megabytes`` MB
printed by the kernel, until it is idle: MB/s). Prints both and the ratios; writes them to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from jupyter_client import BlockingKernelClient  # noqa: E402
from swarm.cluster import Cluster, NodeSpec, fake_uuid  # noqa: E402
from swarm.netns_loop import NetnsLoop  # noqa: E402
from swarm.relay_harness import certificates, listen, relay_server, start_remote_kernel  # noqa: E402

from jupyter_gpuenv.engines.swarm.engine import SwarmEngine  # noqa: E402


def client(connection_file: str) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def round_trips(kc: BlockingKernelClient, rounds: int) -> dict[str, float]:
    took = []
    for _ in range(rounds):
        began = time.perf_counter()
        kc.execute_interactive("pass", timeout=30, output_hook=lambda m: None)
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return {"median_ms": round(statistics.median(took), 3), "p95_ms": round(took[int(len(took) * 0.95) - 1], 3)}


def stream(kc: BlockingKernelClient, megabytes: int) -> dict[str, float]:
    code = f"import sys\nchunk = 'x' * (1 << 20)\nfor _ in range({megabytes}):\n    sys.stdout.write(chunk)\n"
    got = 0

    def hook(msg):
        nonlocal got
        if msg["msg_type"] == "stream":
            got += len(msg["content"]["text"])

    began = time.perf_counter()
    kc.execute_interactive(code, timeout=300, output_hook=hook)
    seconds = time.perf_counter() - began
    assert got == megabytes << 20, got
    return {"seconds": round(seconds, 3), "mb_per_s": round(megabytes / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    cluster = Cluster.start(
        [NodeSpec("manager-1", manager=True), NodeSpec("gpu-1", gpus=(("GPU-H200", fake_uuid(1, 0)),))]
    )
    top = tempfile.mkdtemp(prefix="r-", dir="/tmp")
    os.chmod(top, 0o711)
    roots = {side: os.path.join(top, side) for side in "AB"}
    for root in roots.values():
        os.makedirs(root, mode=0o711)
    a, b = NetnsLoop(cluster.node("manager-1").netns), NetnsLoop(cluster.node("gpu-1").netns)
    engine = SwarmEngine(cluster.manager.url, timeout=5, start_timeout=60)
    opened: list = []
    try:
        server = b.run(relay_server(certificates(cluster.node("gpu-1")), roots["B"], cluster.node("gpu-1").address))
        kernel = start_remote_kernel(cluster, engine, roots)
        listen(a, cluster, kernel, opened)
        # same host: the kernel's own sockets on B, named as B sees them
        direct = json.loads(Path(kernel.connection_file).read_text())
        direct["ip"] = f"{kernel.local_dir}/k"
        direct_file = os.path.join(top, "direct.json")
        Path(direct_file).write_text(json.dumps(direct))

        results = {}
        for name, path in (("same-host", direct_file), ("remote", kernel.connection_file)):
            kc = client(path)
            try:
                round_trips(kc, 20)  # warm up
                results[name] = {"execute": round_trips(kc, args.rounds), "stream": stream(kc, args.megabytes)}
            finally:
                kc.stop_channels()
        same, remote = results["same-host"], results["remote"]
        results["ratio_remote_to_same_host"] = {
            "execute_median": round(remote["execute"]["median_ms"] / same["execute"]["median_ms"], 2),
            "stream_time": round(remote["stream"]["seconds"] / same["stream"]["seconds"], 2),
        }
        results["setup"] = {"rounds": args.rounds, "megabytes": args.megabytes, "cluster_start_s": cluster.started_in}
        print(json.dumps(results, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        for listeners in opened:
            a.run(listeners.close())
        b.run(server.close())
    finally:
        a.close()
        b.close()
        for k in asyncio.run(engine.kernels()):
            asyncio.run(engine.remove(k.service_id))
        engine.close()
        cluster.close()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
