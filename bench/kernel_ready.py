"""Kernel ready time: container kernels against local kernels of the same Python, side by side in one run.

    python3 bench/kernel_ready.py [--runs 10] [--burst 20] [--burst-runs 3] [--out results.json]

"Ready" is from asking for the kernel until its first kernel_info reply, as a notebook sees it. Single starts
alternate between the ways of starting (local, container as before, each direction, ...) so that machine load
falls on all alike; results are medians and their ratio to the local kernel's median. Twenty at once: every
kernel asked for at the same moment, the time until the last one is ready.

Directions measured (issue 15):
  before       a namespace per kernel, the image inspected at every start (as 0.1 did, less its NVML read)
  facts-cache  + the image's facts reused between starts (fewer engine round trips)
  shared-ns    + the user's no-network namespace joined
  after        + the launch returns once the kernel's sockets exist (no ZMQ reconnect wait): the default now
  host         as after, with network "host": what a namespace costs, for reference
  warm-pool    a prototype kept in bench/warm_pool.py: a container already waiting with ipykernel imported

The image: gpuenv-torch:local when the engine has it (the GPU machine: ../shared/gpu-machine/README.md, Python
/opt/torch/.venv/bin/python3 with PYTHONPATH=/opt/torch-kernel, the local kernel the same), else the test image
gpuenv-test-kernel:latest against this Python. The breakdown per direction: engine calls (each kind), the
namespace (a start's `start` call against the shared one's), and, measured inside each kernel, its Python's
start and the import of ipykernel.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import docker
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec
from traitlets.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from warm_pool import WarmPool  # noqa: E402

from jupyter_gpuenv import (
    engines,
    host,  # noqa: E402
)
from jupyter_gpuenv.config import GpuEnv  # noqa: E402
from jupyter_gpuenv.engines.docker import engine as docker_engine
from jupyter_gpuenv.environments.definition import parse_environment  # noqa: E402
from jupyter_gpuenv.environments.kernelspecs import kernelspec_json  # noqa: E402
from jupyter_gpuenv.server.provisioner import DockerKernelProvisioner as Provisioner  # noqa: E402

UNTIL_LISTENING = Provisioner._until_listening


async def _return_at_once(self) -> None:
    """What a launch did before: return as soon as the container runs."""


TORCH = {
    "image": "gpuenv-torch:local",
    "python": "/opt/torch/.venv/bin/python3",
    "env": ["PYTHONPATH=/opt/torch-kernel"],
}
TEST_IMAGE = "gpuenv-test-kernel:latest"

# Run inside a kernel once it is ready: its Python's bare start, and Python plus `import ipykernel.kernelapp`.
INSIDE = """
import json, subprocess, sys, time
def _t(code):
    best = 9e9
    for _ in range(3):
        s = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - s)
    return best
print(json.dumps([_t("pass"), _t("import sys; sys.path[:] = %r; import ipykernel.kernelapp" % (sys.path,))]))
"""

# -- engine calls, as the Docker SDK makes them ------------------------------------------------------------
CALLS = ("inspect_image", "inspect_container", "containers", "create_container", "start", "info", "wait", "logs")
_recorded: list[tuple[str, float]] = []
_recording = threading.Event()


def record_engine_calls() -> None:
    for name in CALLS:
        original = getattr(docker.APIClient, name)

        def timed(self, *args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                if _recording.is_set():
                    _recorded.append((_name, time.perf_counter() - started))

        setattr(docker.APIClient, name, timed)


# -- one start --------------------------------------------------------------------------------------------
class Way:
    """One way of starting a kernel: a kernelspec and the server settings it runs under."""

    def __init__(
        self,
        name: str,
        spec: KernelSpec,
        settings: dict | None = None,
        facts_ttl: float | None = None,
        listen_wait: bool = True,
    ):
        self.name, self.spec, self.facts_ttl, self.listen_wait = name, spec, facts_ttl, listen_wait
        self.config = Config({"GpuEnv": settings or {}})
        self.local = settings is None

    async def start(self, cwd: str) -> tuple[AsyncKernelManager, float, list[tuple[str, float]]]:
        if self.facts_ttl is not None:
            docker_engine.IMAGE_FACTS_TTL = self.facts_ttl
        Provisioner._until_listening = UNTIL_LISTENING if self.listen_wait else _return_at_once
        km = AsyncKernelManager(kernel_name=self.name, config=self.config)
        km._kernel_spec = self.spec
        _recorded.clear()
        _recording.set()
        started = time.perf_counter()
        try:
            await km.start_kernel(cwd=cwd)
        finally:
            _recording.clear()
        return km, time.perf_counter() - started, list(_recorded)

    async def ready(self, cwd: str, inside: bool = False, first_cell: str | None = None) -> dict:
        """One start until ready; with ``inside``, the kernel's own Python start and ipykernel import too, and
        how long ``first_cell`` takes to run (e.g. `import torch`: a large image's files, read through Docker's
        storage driver)."""
        started = time.perf_counter()
        km, launch, calls = await self.start(cwd)
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=120)
            result = {"ready": time.perf_counter() - started, "launch": launch, "calls": calls}
            if inside:
                out = []
                hook = lambda m: out.append(m["content"]["text"]) if m["msg_type"] == "stream" else None  # noqa: E731
                await client.execute_interactive(INSIDE, output_hook=hook, timeout=120)
                result["python_start"], result["ipykernel_import"] = json.loads("".join(out))
                if first_cell:
                    cell_started = time.perf_counter()
                    reply = await client.execute_interactive(first_cell, output_hook=lambda m: None, timeout=300)
                    result["first_cell"] = time.perf_counter() - cell_started
                    if reply["content"]["status"] != "ok":
                        raise RuntimeError(f"the first cell failed in {self.name}: {reply['content']}")
            return result
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    async def burst(self, count: int, cwd: str) -> list[float] | None:
        """``count`` kernels asked for at once: each one's time until ready, from the common start; None when one
        failed (local kernels: jupyter_client picks free TCP ports before the kernel binds them, and twenty at
        once can collide)."""
        started = time.perf_counter()
        managers: list[AsyncKernelManager] = []

        async def one() -> float:
            km, _, _ = await self.start(cwd)
            managers.append(km)
            client = km.client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=60)
                return time.perf_counter() - started
            finally:
                client.stop_channels()

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            print(f"  {self.name}: {len(failed)} of {count} did not start ({failed[0]!r}); this burst is run again")
            return None
        return results


# -- the report -------------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def breakdown(samples: list[dict]) -> dict:
    """Medians per start: engine time by call, launch (the provisioner's part), after launch until ready."""
    by_call = collections.defaultdict(list)
    for s in samples:
        sums = collections.defaultdict(float)
        for name, seconds in s["calls"]:
            sums[name] += seconds
        for name in set(CALLS):
            by_call[name].append(sums.get(name, 0.0))
    out = {
        "ready": med([s["ready"] for s in samples]),
        "launch": med([s["launch"] for s in samples]),
        "after_launch": med([s["ready"] - s["launch"] for s in samples]),
        "engine_calls": med([sum(d for _, d in s["calls"]) for s in samples]),
        "engine_call_count": med([len(s["calls"]) for s in samples]),
        "calls": {name: med(v) for name, v in by_call.items() if any(v)},
    }
    inside = [s for s in samples if "python_start" in s]
    if inside:
        out["python_start"] = med([s["python_start"] for s in inside])
        out["ipykernel_import"] = med([s["ipykernel_import"] for s in inside])
    cells = [s["first_cell"] for s in samples if "first_cell" in s]
    if cells:
        out["first_cell"] = med(cells)
    return out


def print_report(result: dict) -> None:
    single, local = result["single"], result["single"]["local"]
    lm = med(local)
    print(f"\nOne kernel at a time: median ready (s), spread, ratio to local; n={len(local)} each")
    for name, values in single.items():
        print(f"  {name:12} {med(values):6.3f}  ({spread(values)})  {med(values) / lm:5.2f}x")
    print(
        "\nBreakdown (medians, s): launch = asking until the container runs (local: the process; after, host: until"
        "\n  its sockets exist); engine = time in engine calls; after = launch until ready; python, import = the"
        "\n  kernel's Python's bare start and `import ipykernel.kernelapp`, timed inside the kernel; cell = first cell"
    )
    heads = ("ready", "launch", "engine", "calls", "after", "python", "import", "cell")
    print(f"  {'':12} " + " ".join(f"{h:>6}" for h in heads) + "  engine calls by kind")
    for name, b in result["breakdown"].items():
        calls = " ".join(f"{k}={v:.3f}" for k, v in sorted(b["calls"].items()))
        print(
            f"  {name:12} {b['ready']:6.3f} {b['launch']:6.3f} {b['engine_calls']:6.3f} {b['engine_call_count']:6.0f} "
            f"{b['after_launch']:6.3f} {b.get('python_start', float('nan')):6.3f} "
            f"{b.get('ipykernel_import', float('nan')):6.3f} {b.get('first_cell', float('nan')):6.3f}  {calls}"
        )
    starts = {n: b["calls"].get("start") for n, b in result["breakdown"].items() if b["calls"].get("start")}
    if "shared-ns" in starts:
        print(
            "  namespace: the `start` call with a namespace of its own "
            f"{starts.get('facts-cache', float('nan')):.3f} s, joining the user's {starts['shared-ns']:.3f} s, "
            f"host network {starts.get('host', float('nan')):.3f} s"
        )
    if result.get("burst"):
        lb = med(result["burst"]["local"])
        print(f"\n{result['burst_size']} at once: median time until the last is ready (s), spread, ratio to local")
        for name, lasts in result["burst"].items():
            print(f"  {name:12} {med(lasts):6.3f}  ({spread(lasts)})  {med(lasts) / lb:5.2f}x")
    if result.get("pool"):
        p = result["pool"]
        print(
            f"\nWarm pool (prototype, not in the product): claim until ready median {med(p['claims']):.3f} s "
            f"({spread(p['claims'])}), {med(p['claims']) / lm:.2f}x local; filling {p['size']} took {p['fill']:.2f} s"
        )
        print(
            f"  memory of one idle pool container: RSS {med(p['rss_kib']) / 1024:.1f} MiB, "
            f"PSS {med(p['pss_kib']) / 1024:.1f} MiB (median of {len(p['rss_kib'])})"
        )
        if p.get("burst"):
            print(f"  {p['burst_size']} claimed at once: last ready {p['burst']:.3f} s, {p['burst'] / lb:.2f}x local's")
    if "after" in single:
        one = med(single["after"]) / lm
        print(f"\nGoal, one kernel ready <= 1.05x local: {one:.2f}x ({'met' if one <= 1.05 else 'not met'})")
    if result.get("burst") and "after" in result["burst"]:
        many = med(result["burst"]["after"]) / med(result["burst"]["local"])
        verdict = "met" if many <= 1.5 else "not met"
        print(f"Goal, {result['burst_size']} at once <= 1.5x local: {many:.2f}x ({verdict})")
    print(f"\nload average before {result['load_before']}, after {result['load_after']}; {result['machine']}")


# -- the run ----------------------------------------------------------------------------------------------
def settings_for(args: argparse.Namespace, client: docker.DockerClient) -> dict:
    torch = False
    if args.image in (None, "auto"):
        try:
            client.images.get(TORCH["image"])
            torch = True
        except docker.errors.ImageNotFound:
            pass
    image = TORCH["image"] if torch else (args.image if args.image not in (None, "auto") else TEST_IMAGE)
    python = args.python or (TORCH["python"] if torch else "python3")
    env = args.env if args.env is not None else (TORCH["env"] if torch else [])
    local_python = args.local_python or (
        TORCH["python"] if torch and os.path.exists(TORCH["python"]) else sys.executable
    )
    local_env = args.local_env if args.local_env is not None else (env if torch else [])
    first_cell = args.first_cell if args.first_cell is not None else ("import torch" if torch else "")
    return {
        "image": image,
        "python": python,
        "env": env,
        "local_python": local_python,
        "local_env": local_env,
        "first_cell": first_cell,
    }


def ways(chosen: dict, directions: list[str]) -> list[Way]:
    tmp = tempfile.gettempdir()
    env_vars = dict(item.split("=", 1) for item in chosen["env"])
    out = [
        Way(
            "local",
            KernelSpec(
                resource_dir=tmp,
                display_name="local",
                language="python",
                argv=[chosen["local_python"], "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                env=dict(item.split("=", 1) for item in chosen["local_env"]),
            ),
        )
    ]

    def container(network: str) -> KernelSpec:
        definition = {"image": chosen["image"], "python": chosen["python"], "gpus": "none", "network": network}
        if env_vars:
            definition["env"] = env_vars
        env = parse_environment("bench", definition, "bench")
        return KernelSpec(resource_dir=tmp, **kernelspec_json(env))

    own, shared = {"shared_network_namespace": False}, {"shared_network_namespace": True}
    table = {
        "before": lambda: Way("before", container("none"), own, facts_ttl=0.0, listen_wait=False),
        "facts-cache": lambda: Way("facts-cache", container("none"), own, 10.0, listen_wait=False),
        "shared-ns": lambda: Way("shared-ns", container("none"), shared, 10.0, listen_wait=False),
        "after": lambda: Way("after", container("none"), shared, 10.0),
        "host": lambda: Way("host", container("host"), shared, 10.0),
    }
    return out + [table[d]() for d in directions if d in table]


async def pool_run(args, chosen: dict, cwd: str, lm_runs: int) -> dict:
    docker_engine_ = engines.connect(GpuEnv())
    definition = {"image": chosen["image"], "python": chosen["python"], "gpus": "none"}
    if chosen["env"]:
        definition["env"] = dict(item.split("=", 1) for item in chosen["env"])
    env = parse_environment("bench", definition, "bench")
    pool = WarmPool(docker_engine_, env, cwd, None)
    pool.holder = docker_engine_._network_holder(docker_engine_._client(), pool.request())
    claims, rss, pss = [], [], []
    fill_started = time.perf_counter()
    slots = await pool.fill(args.pool_size)
    fill = time.perf_counter() - fill_started
    await asyncio.sleep(1.0)  # let the fill's CPU settle before claims are timed
    for slot in slots:
        m = pool.memory(slot)
        if m["rss_kib"]:
            rss.append(m["rss_kib"])
            pss.append(m["pss_kib"] or 0)
    for slot in slots[:lm_runs]:
        seconds, client = await pool.claim(slot)
        claims.append(seconds)
        await pool.release(slot, client)
    for slot in slots[lm_runs:]:
        await pool.release(slot, None)
    result = {"size": args.pool_size, "fill": fill, "claims": claims, "rss_kib": rss, "pss_kib": pss}
    if args.burst:
        slots = await pool.fill(args.burst)
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        claimed = await asyncio.gather(*(pool.claim(s) for s in slots))
        result["burst"], result["burst_size"] = time.perf_counter() - started, args.burst
        await asyncio.gather(*(pool.release(s, c) for s, (_, c) in zip(slots, claimed, strict=True)))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="single starts per way")
    parser.add_argument("--burst", type=int, default=20, help="kernels started at once (0: skip)")
    parser.add_argument("--burst-runs", type=int, default=3)
    parser.add_argument("--image", default="auto", help="auto: gpuenv-torch:local if present, else the test image")
    parser.add_argument("--python", help="the image's interpreter (default python3, or the torch image's)")
    parser.add_argument("--env", action="append", help="K=V for the container kernel (repeatable)")
    parser.add_argument("--local-python", help="the local kernel's interpreter (same Python version as the image's)")
    parser.add_argument("--local-env", action="append", help="K=V for the local kernel (repeatable)")
    parser.add_argument(
        "--directions",
        default="before,facts-cache,shared-ns,after,host,warm-pool",
        help="comma-separated, see above",
    )
    parser.add_argument("--first-cell", help="code timed as the first cell (torch image: 'import torch')")
    parser.add_argument("--pool-size", type=int, default=10, help="warm pool containers filled for the claims")
    parser.add_argument("--out", help="write every sample and the medians here as JSON")
    args = parser.parse_args()
    client = docker.from_env()
    chosen = settings_for(args, client)
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    record_engine_calls()
    all_ways = ways(chosen, directions)
    print(f"image {chosen['image']} ({chosen['python']}), local {chosen['local_python']}; {os.cpu_count()} CPUs")
    result: dict = {
        "chosen": chosen,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, docker {client.version().get('Version')}",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "single": {w.name: [] for w in all_ways},
    }
    try:
        samples = await measure(args, chosen, directions, all_ways, result)
    finally:  # the user's namespace holder this run made: nothing joins it any more
        me = host.this_server()
        await engines.connect(GpuEnv()).remove_unused_holders(
            lambda h: h.server_pid == str(me.pid) and h.server_host == me.host
        )
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print_report(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({**result, "samples": samples}, f, indent=1)
        print(f"written to {args.out}")


async def measure(args, chosen: dict, directions: list[str], all_ways: list[Way], result: dict) -> dict:
    cwd = os.getcwd()
    for w in all_ways:  # once each: the image's files into the page cache, the user's holder made
        await w.ready(cwd)
    samples: dict[str, list[dict]] = {w.name: [] for w in all_ways}
    for i in range(args.runs):
        for w in all_ways:
            s = await w.ready(cwd, inside=i < 3, first_cell=chosen["first_cell"])
            samples[w.name].append(s)
            result["single"][w.name].append(s["ready"])
        print(f"  run {i + 1}/{args.runs}: " + " ".join(f"{n}={v[-1]:.3f}" for n, v in result["single"].items()))
    result["breakdown"] = {name: breakdown(s) for name, s in samples.items()}
    if args.burst:
        result["burst_size"], result["burst"] = args.burst, {}
        bursting = [w for w in all_ways if w.name in ("local", "before", "after")]
        for _ in range(args.burst_runs):
            for w in bursting:
                times = None
                for _attempt in range(3):
                    times = await w.burst(args.burst, cwd)
                    if times is not None:
                        break
                    result["burst_failures"] = result.get("burst_failures", 0) + 1
                if times is None:
                    raise RuntimeError(f"{args.burst} kernels at once ({w.name}) failed three times")
                result["burst"].setdefault(w.name, []).append(max(times))
                print(f"  {args.burst} at once, {w.name}: last ready {max(times):.3f} s (first {min(times):.3f})")
    if "warm-pool" in directions:
        result["pool"] = await pool_run(args, chosen, cwd, args.runs)
    return samples


if __name__ == "__main__":
    asyncio.run(main())
