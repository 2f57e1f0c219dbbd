"""What the broker tells about the environments it has: their catalog, their images, their readiness.

- ``catalog``: every environment of the host by name and display name, each marked whether the caller may use
  it; `jupyter gpuenv add NAME --broker` and `jupyter gpuenv list` ask it, so a kernelspec never names an
  environment the host does not have.
- ``pull``: pull an environment's image now, with progress lines (`jupyter gpuenv pull NAME --broker`); root
  may pull any, a user the ones their policy allows, while ``c.Broker.pull_missing_images`` is on.
- At start, one readiness row per environment (image, kernel runtime, GPUs, CUDA against the driver, and the
  verdict a start would get), printed and logged, so the administrator sees at once what works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_gpuenv.broker.daemon import BrokerDaemon, Caller
from jupyter_gpuenv.engines.base import image_facts_of
from jupyter_gpuenv.environments import preflight, runtime
from jupyter_gpuenv.environments.definition import Environment, cuda_compatibility
from jupyter_gpuenv.environments.preflight import ImageFacts
from jupyter_gpuenv.errors import EngineUnavailable, GpuEnvError, InvalidRequest, NotPermitted
from jupyter_gpuenv.gpus.nvml import Snapshot

log = logging.getLogger("jupyter_gpuenv.broker")
FIRST_SAMPLE_WAIT = 10.0  # seconds the readiness table waits for the first GPU sample


class CatalogBroker(BrokerDaemon):
    """The broker, answering ``catalog`` and ``pull`` besides its kernel operations."""

    async def dispatch(self, caller: Caller, op: str, args: dict[str, Any], progress: Callable) -> Any:
        if op == "catalog":
            return self.catalog(caller)
        if op == "pull":
            return await self.pull(caller, args, progress)
        return await super().dispatch(caller, op, args, progress)

    def catalog(self, caller: Caller) -> list[dict[str, Any]]:
        rule = self.policy.rule_for(caller.name, list(caller.groups))
        return [
            {
                "name": name,
                "display_name": env.display_name or name,
                "image": env.image,
                "gpus": str(env.gpus),
                "yours": caller.uid == 0 or rule.allows(name),
            }  # fmt: skip
            for name, env in sorted(self.environments.items())
        ]

    async def pull(self, caller: Caller, args: dict[str, Any], progress: Callable) -> dict[str, Any]:
        name = args.get("environment")
        if not isinstance(name, str):
            raise InvalidRequest("'environment' must be a str")
        env = self._environment(caller, name)
        if caller.uid != 0:
            if not self.policy.rule_for(caller.name, list(caller.groups)).allows(name):
                raise NotPermitted(f"the environment {name!r} is not one this host's administrator lets you use")
            if not self.settings.pull_missing_images:
                raise NotPermitted("only the administrator pulls images on this host (c.Broker.pull_missing_images)")
        if (await self.docker.image_facts(env.image)).present:
            return {"image": env.image, "pulled": False}
        log.info("gpuenv broker: %s pulls %s for %r", caller.name, env.image, name)
        await self.docker.pull(env.image, lambda p: progress(p.as_dict()))
        return {"image": env.image, "pulled": True}


# -- readiness ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Readiness:
    environment: str
    image: str
    kernel: str
    gpus: str
    cuda: str
    verdict: preflight.Verdict


def readiness_row(env: Environment, facts: ImageFacts | None, snapshot: Snapshot, verdict: preflight.Verdict,
                  prepared: frozenset[str]) -> Readiness:  # fmt: skip
    """One environment's row, from the facts its verdict was made of; pure."""
    if facts is None:
        image = kernel = "engine unreachable"
    elif not facts.present:
        image, kernel = "missing", "-"
    else:
        image = "present"
        if env.kernel_runtime == "image" or facts.has_ipykernel:
            kernel = "ipykernel in the image"
        elif facts.python_version is None:
            kernel = f"no {env.python} in the image"
        elif facts.python_version in prepared:
            kernel = f"runtime {facts.python_version} (prepared)"
        else:
            kernel = f"runtime {facts.python_version} MISSING"
    if not env.gpus.wants_gpus:
        gpus, cuda = "none", "-"
    else:
        seen = len(snapshot.gpus) if snapshot.available else 0
        gpus = f"{env.gpus} ({seen} on this host)" if seen else f"{env.gpus} (NO GPU on this host)"
        wanted = env.cuda_version or (facts.cuda_version if facts else None)
        ok, _ = cuda_compatibility(wanted, snapshot.cuda_driver_version)
        cuda = f"{wanted or '?'} / driver {snapshot.cuda_driver_version or '-'}" + ("" if ok else " TOO NEW")
    return Readiness(env.name, image, kernel, gpus, cuda, verdict)


def format_table(rows: list[Readiness]) -> list[str]:
    """The readiness table as lines; a row that is not ready is followed by the verdict's reason."""
    if not rows:
        return ["no environments: c.Broker.environments is empty, so no container kernel can start on this host"]
    table = [("ENVIRONMENT", "IMAGE", "KERNEL", "GPUS", "CUDA (IMAGE / DRIVER)", "STATE")]
    table += [(r.environment, r.image, r.kernel, r.gpus, r.cuda, r.verdict.state) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    for r in rows:
        if r.verdict.state != preflight.READY and r.verdict.reason:
            lines.append(f"  {r.environment}: {r.verdict.reason}")
    return lines


async def readiness(daemon: BrokerDaemon) -> list[Readiness]:
    """Every environment's row, asked the way a start asks (the panel shows the same verdicts)."""
    snapshot = daemon.sampler.latest
    prepared = runtime.prepared_versions(daemon.settings.kernel_runtime_dir)
    rows = []
    for _, env in sorted(daemon.environments.items()):
        facts, engine_error = None, None
        try:
            facts = await image_facts_of(daemon.docker, env)
        except EngineUnavailable as exc:
            engine_error = exc
        except GpuEnvError as exc:
            rows.append(readiness_row(env, None, snapshot, preflight.Verdict(preflight.UNAVAILABLE, False, str(exc)),
                                      prepared))  # fmt: skip
            continue
        situation = preflight.Situation(
            image=facts,
            snapshot=snapshot,
            prepared_runtimes=prepared,
            pull_allowed=daemon.settings.pull_missing_images,
            pulling=daemon.docker.pull_progress(env.image) is not None,
            engine_error=engine_error,
        )
        rows.append(readiness_row(env, facts, snapshot, preflight.check(env, situation), prepared))
    return rows


async def serve(daemon: BrokerDaemon, show: Callable[[str], None] | None = None) -> None:
    """Serve, and once the GPUs were read for the first time, show and log the readiness table."""
    first = daemon.sampler.latest
    serving = asyncio.ensure_future(daemon.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_SAMPLE_WAIT
    while not serving.done() and daemon.sampler.latest is first and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if not serving.done():
        try:
            lines = format_table(await readiness(daemon))
        except Exception:  # a report must never stop the broker
            log.exception("gpuenv broker: the readiness table could not be made")
        else:
            (show or _print)("\n".join(lines))
            for line in lines:
                log.info("gpuenv broker: %s", line)
    await serving


def _print(text: str) -> None:
    print(text, flush=True)
