"""Warm kernels (c.GpuEnv.warm_kernels) against a local kernel of the same Python, side by side in one run.

    python3 bench/warm_kernels.py [--runs 10] [--burst 20] [--warm-imports torch] [--out results.json]

Three ways, alternated run by run so that machine load falls on all alike: ``local`` (ipykernel on this host),
``cold`` (a container kernel with no warm one waiting: today's start) and ``warm`` (the product's warm kernels,
warm.py, through the real provisioner; before each timed start the pool is let refill, untimed). "Ready" is from
asking for the kernel until its first kernel_info reply; "first cell" is ready plus the first cell (the torch
image: ``import torch; torch.cuda.is_available()``). Then ``--burst`` kernels at once, the pool holding as many,
against as many local kernels at once. Medians and their ratios to the local kernel's.

The image: gpuenv-torch:local when the engine has it (the GPU machine), else the test image against this Python
(bench/kernel_ready.py's choice). The goals (issue 23): warm ≤ 0.2× local, twenty at once ≤ 0.5×, first cell
with ``--warm-imports torch`` ≤ 0.3×, cold no slower than before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from types import SimpleNamespace

import docker
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec
from traitlets.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_ready import settings_for  # noqa: E402

from jupyter_gpuenv import engines, host
from jupyter_gpuenv.config import GpuEnv  # noqa: E402
from jupyter_gpuenv.environments.definition import parse_environment  # noqa: E402
from jupyter_gpuenv.environments.kernelspecs import kernelspec_json  # noqa: E402
from jupyter_gpuenv.gpus import nvml
from jupyter_gpuenv.gpus.nvml import NvmlReader, Snapshot  # noqa: E402
from jupyter_gpuenv.gpus.visibility import from_environment  # noqa: E402
from jupyter_gpuenv.server import provisioner  # noqa: E402
from jupyter_gpuenv.server.warm import WarmKernels  # noqa: E402


async def ready(spec: KernelSpec, config: Config, cwd: str, first_cell: str) -> tuple[float, float | None]:
    """(seconds until ready, seconds until the first cell ran) of one start."""
    started = time.perf_counter()
    km = AsyncKernelManager(kernel_name=spec.display_name, config=config)
    km._kernel_spec = spec
    await km.start_kernel(cwd=cwd)
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=120)
        up = time.perf_counter() - started
        cell = None
        if first_cell:
            reply = await client.execute_interactive(first_cell, output_hook=lambda m: None, timeout=300)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"the first cell failed: {reply['content']}")
            cell = time.perf_counter() - started
        return up, cell
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)


async def until_ready(pool: WarmKernels, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(w.ready for w in pool.pools.get("bench", [])) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not hold {count} ready warm kernels in {timeout:.0f} s")
        pool.refill_soon()
        await asyncio.sleep(0.05)


def gpu_inventory(settings: GpuEnv) -> SimpleNamespace:
    """What the server's sampler gives warm kernels: the GPUs now, read once from NVML."""
    reader = NvmlReader(nvml.load_pynvml())
    if reader.init() is not None:
        return SimpleNamespace(latest=Snapshot(available=False, reason="no NVML"))
    try:
        return SimpleNamespace(latest=reader.read(from_environment(settings.visible_devices).allows))
    finally:
        reader.shutdown()


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20, help="kernels at once (0: skip)")
    parser.add_argument("--warm-imports", nargs="*", default=None, help="default: torch with the torch image")
    parser.add_argument("--first-cell", default=None, help="default: 'import torch; torch.cuda.is_available()'")
    parser.add_argument("--image", default="auto")
    parser.add_argument("--gpus", help="the environment's gpus (default: all with the torch image, else none)")
    parser.add_argument("--out")
    args = parser.parse_args()
    for name in ("python", "env", "local_python", "local_env"):
        setattr(args, name, None)
    chosen = settings_for(args, docker.from_env())
    torch = chosen["image"] == "gpuenv-torch:local"
    first_cell = args.first_cell if args.first_cell is not None else ("import torch; torch.cuda.is_available()"
                                                                        if torch else "")  # fmt: skip
    imports = args.warm_imports if args.warm_imports is not None else (["torch"] if torch else [])
    gpus = args.gpus or ("all" if torch else "none")  # the torch image: every way sees the GPU, the local kernel too
    definition = {"image": chosen["image"], "python": chosen["python"], "gpus": gpus}
    if chosen["env"]:
        definition["env"] = dict(item.split("=", 1) for item in chosen["env"])
    env = parse_environment("bench", definition, "bench")
    tmp, cwd = tempfile.gettempdir(), os.getcwd()
    local = KernelSpec(resource_dir=tmp, display_name="local", language="python",
                       argv=[chosen["local_python"], "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       env=dict(item.split("=", 1) for item in chosen["local_env"]))  # fmt: skip
    container = KernelSpec(resource_dir=tmp, **kernelspec_json(env))
    settings = {"environments": {"bench": definition}, "shared_network_namespace": True}
    cold_config = Config({"GpuEnv": settings})
    warm_settings = {**settings, "warm_kernels": {"bench": max(1, args.burst)}, "warm_imports": {"bench": imports}}
    warm_config = Config({"GpuEnv": warm_settings})
    gpuenv = GpuEnv(config=warm_config)
    pool = WarmKernels(gpuenv, engines.connect(gpuenv), gpu_inventory(gpuenv), cwd, logging.getLogger("bench"))
    gpuenv.warm_kernels = {"bench": 1}  # one waits for each single start; the burst asks for more
    context = provisioner.server_context
    provisioner.server_context = lambda p: replace(
        context(p), warm=pool if "warm_kernels" in p.config.get("GpuEnv", {}) else None
    )
    print(f"image {chosen['image']} ({chosen['python']}), local {chosen['local_python']}, warm imports {imports}")
    result: dict = {"chosen": chosen, "warm_imports": imports, "first_cell": first_cell, "cpus": os.cpu_count()}
    times: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
    cells: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
    ways = {"local": (local, Config()), "cold": (container, cold_config), "warm": (container, warm_config)}
    try:
        for name, (spec, config) in ways.items():  # once each, untimed: page cache, namespace holder
            if name == "warm":
                await until_ready(pool, 1)
            await ready(spec, config, cwd, "")
        for i in range(args.runs):
            for name, (spec, config) in ways.items():
                if name == "warm":
                    await until_ready(pool, 1)
                up, cell = await ready(spec, config, cwd, first_cell)
                times[name].append(up)
                if cell is not None:
                    cells[name].append(cell)
                if name == "warm":  # its refill must not load the next start: it is made now, untimed
                    await until_ready(pool, 1)
                    await asyncio.sleep(0.5)
            print(f"  run {i + 1}/{args.runs}: " + " ".join(f"{n}={v[-1]:.3f}" for n, v in times.items()), flush=True)
        result["ready"] = {n: {"median": med(v), "samples": v} for n, v in times.items()}
        result["first_cell"] = {n: {"median": med(v), "samples": v} for n, v in cells.items() if v}
        result["ratio_to_local"] = {n: med(v) / med(times["local"]) for n, v in times.items()}
        if cells["local"]:
            result["first_cell_ratio_to_local"] = {n: med(v) / med(cells["local"]) for n, v in cells.items()}
        if args.burst:
            gpuenv.warm_kernels = {"bench": args.burst}
            await until_ready(pool, args.burst)
            burst = {}
            for name in ("local", "warm"):
                spec, config = ways[name]
                started = time.perf_counter()
                await asyncio.gather(*(ready(spec, config, cwd, "") for _ in range(args.burst)))
                burst[name] = time.perf_counter() - started
            result["burst"] = {"size": args.burst, **burst, "warm_ratio_to_local": burst["warm"] / burst["local"]}
    finally:
        await pool.stop()
        me = host.this_server()
        await engines.connect(gpuenv).remove_unused_holders(
            lambda h: h.server_pid == str(me.pid) and h.server_host == me.host
        )
    print(json.dumps({k: v for k, v in result.items() if k not in ("ready", "first_cell")}, indent=1))
    for name, entry in result["ready"].items():
        print(f"{name:6} ready median {entry['median']:.3f} s  ×{result['ratio_to_local'][name]:.2f} of local")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
