"""Kernel ready time: a container kernel against a local kernel of the same Python, side by side in one run.

    python bench/kernel_ready.py [--runs 10] [--image gpuenv-test-kernel:latest]

"Ready" is start_kernel until the first kernel_info reply, as a notebook sees it. Runs alternate (local,
container, local, ...) so that machine load falls on both alike; the result is the ratio of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from jupyter_gpuenv.cli import kernelspec_json
from jupyter_gpuenv.environments import parse_environment


async def ready_time(spec: KernelSpec, cwd: str) -> float:
    km = AsyncKernelManager(kernel_name=spec.display_name)
    km._kernel_spec = spec
    started = time.perf_counter()
    await km.start_kernel(cwd=cwd)
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        return time.perf_counter() - started
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default="gpuenv-test-kernel:latest")
    parser.add_argument(
        "--network",
        default="none",
        choices=["none", "host"],
        help="the environment's network: 'none' pays for a network namespace (~0.12 s here)",
    )
    parser.add_argument(
        "--local-python",
        default=sys.executable,
        help="interpreter of the local kernel (use the image's Python version)",
    )
    args = parser.parse_args()
    env = parse_environment("bench", {"image": args.image, "gpus": "none", "network": args.network}, "bench")
    container_spec = KernelSpec(resource_dir=tempfile.gettempdir(), **kernelspec_json(env))
    local_spec = KernelSpec(
        resource_dir=tempfile.gettempdir(),
        display_name="local",
        language="python",
        argv=[args.local_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    )
    cwd = os.getcwd()
    await ready_time(container_spec, cwd)  # warm the image's files into the page cache, as a used host has
    await ready_time(local_spec, cwd)
    local, container = [], []
    for _ in range(args.runs):
        local.append(await ready_time(local_spec, cwd))
        container.append(await ready_time(container_spec, cwd))
    lm, cm = statistics.median(local), statistics.median(container)
    print(f"local kernel     median {lm:.3f} s  (min {min(local):.3f}, max {max(local):.3f}, n={len(local)})")
    print(
        f"container kernel median {cm:.3f} s  (min {min(container):.3f}, max {max(container):.3f}, n={len(container)})"
    )
    print(f"ratio container/local (network {args.network}): {cm / lm:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
