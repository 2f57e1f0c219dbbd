"""What GET environments and GET kernels (and the metrics) report: read from the same sources a start uses.

Every environment's row is the ``preflight`` verdict the provisioner would reach, so the panel never offers
what a start would refuse.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.engines.base import Engine, image_facts_of
from jupyter_gpuenv.environments import kernelspecs, preflight, runtime
from jupyter_gpuenv.errors import EngineUnavailable
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.pulls.progress import PullProgress


async def environment_report(settings: GpuEnv, specs: dict[str, Any], snapshot: Snapshot, engine: Engine) -> dict:
    """``GET environments``: each environment with its state, whether it can start, and why not."""
    if settings.broker:
        return await broker_report(specs, engine)
    prepared = runtime.prepared_versions(settings.kernel_runtime_dir)
    engine_error: EngineUnavailable | None = None
    rows = []
    for item in kernelspecs.defined_environments(settings, specs):
        env, image, progress, failure = item.environment, None, None, None
        if env is None:
            verdict = preflight.invalid(item.error)
        else:
            if engine_error is None:
                try:
                    image = await image_facts_of(engine, env)
                except EngineUnavailable as exc:
                    engine_error = exc
            progress = engine.pull_progress(env.image)
            if progress is None and not (image and image.present):  # why the last pull failed, while it matters
                failure = engine.pull_failure(env.image)
            situation = preflight.Situation(
                image=image,
                snapshot=snapshot,
                prepared_runtimes=prepared,
                pull_allowed=settings.pull_missing_images,
                pulling=progress is not None,
                has_kernelspec=item.kernelspec is not None,
                engine_error=engine_error,
            )
            verdict = preflight.check(env, situation)
        rows.append(
            {
                "name": item.name,
                "kernelspec": item.kernelspec,
                "source": item.source,
                "display_name": env.display_name if env else item.name,
                "image": env.image if env else None,
                "gpus": str(env.gpus) if env else None,
                "image_present": image.present if image else None,
                "cuda_version": (env.cuda_version or (image.cuda_version if image else None)) if env else None,
                "pull_progress": _progress_row(progress) if progress else None,
                "pull_error": {"message": failure.error, "code": failure.error_code} if failure else None,
                "state": verdict.state,
                "can_start": verdict.can_start,
                "compatible": verdict.state not in (preflight.INVALID, preflight.UNAVAILABLE, preflight.INCOMPATIBLE),
                "reason": verdict.reason,
                "reason_code": verdict.reason_code,
            }
        )
    if engine_error is None and not any(r["image_present"] is not None for r in rows):
        try:  # no environment asked the engine anything: ask it whether it is there at all
            await engine.kernels()
        except EngineUnavailable as exc:
            engine_error = exc
    docker = {"available": engine_error is None, "reason": str(engine_error) if engine_error else None}
    return {"docker": docker, "environments": rows}


async def broker_report(specs: dict[str, Any], broker) -> dict:
    """With a broker: the environments this person may use, as the broker judges them, with live availability."""
    starts = {}
    for spec_name, entry in sorted(specs.items()):
        config = kernelspecs.provisioner_config(entry.get("spec") or {})
        if config and isinstance(config.get("environment"), str):
            starts.setdefault(config["environment"], spec_name)
    try:
        rows = await broker.environments()
    except EngineUnavailable as exc:
        return {"docker": {"available": False, "reason": str(exc)}, "environments": []}
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if k != "definition"}
        row.update({"kernelspec": starts.get(row["name"]), "source": "the GPU broker"})
        row.update({"image_present": None, "cuda_version": None, "compatible": row["state"] != preflight.INCOMPATIBLE})
        if row["kernelspec"] is None and row["can_start"]:
            row.update({"can_start": False, "state": preflight.UNAVAILABLE, "reason_code": "no-kernelspec"})
            row["reason"] = f"no kernelspec here names {row['name']!r}: `jupyter gpuenv add {row['name']} --broker`"
        out.append(row)
    return {"docker": {"available": True, "reason": None}, "environments": out}


def _progress_row(progress: PullProgress) -> dict[str, Any]:
    """What the panel shows of a pull under way: bytes done and total, percent, rate, time left, layers."""
    row = progress.as_dict()
    del row["error"], row["error_code"]  # a pull under way has none; a failed one is pull_error
    return row


def kernel_rows(kernel_manager, snapshot: Snapshot, parking=None) -> list[dict[str, Any]]:
    """Every running kernel: its environment, container, GPUs, the GPU memory its processes hold, and whether it
    is parked (with ``parking``, the server's ``ServerParking``)."""
    memory: dict[str, int] = {}
    used_gpus: dict[str, set[int]] = {}
    for gpu in snapshot.gpus:
        for proc in gpu.processes:
            if proc.kernel_id:
                memory[proc.kernel_id] = memory.get(proc.kernel_id, 0) + (proc.used_memory or 0)
                used_gpus.setdefault(proc.kernel_id, set()).add(gpu.index)
    rows = []
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            km = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        provisioner = km.provisioner
        environment = getattr(provisioner, "environment_name", None)
        placement = getattr(provisioner, "placement", None)
        last_exit = getattr(provisioner, "last_exit", None)
        assigned = [g.index for g in placement.gpus] if placement else []
        rows.append(
            {
                "kernel_id": kernel_id,
                "kernel_name": km.kernel_name,
                "environment": environment,
                "container_id": placement.container_id if placement else None,
                "gpu_mode": placement.gpu_mode if placement else None,
                "gpus": assigned or sorted(used_gpus.get(kernel_id, ())),
                "gpu_memory": memory.get(kernel_id) if snapshot.available else None,
                "last_exit": asdict(last_exit) if last_exit else None,
                "park": parking.row(kernel_id, snapshot) if parking is not None else None,
            }
        )
    return rows


def kernel_report(kernel_manager, snapshot: Snapshot, parking=None) -> dict[str, Any]:
    return {"kernels": kernel_rows(kernel_manager, snapshot, parking)}
