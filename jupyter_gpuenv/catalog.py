"""What GET environments and GET kernels report. Blocking (kernelspec files, the engine): run in a thread."""

from __future__ import annotations

from typing import Any

from . import engine
from .config import GpuEnv
from .environments import PROVISIONER_NAME, EnvironmentError_, cuda_compatibility, parse_environment
from .nvml import Snapshot


def defined_environments(settings: GpuEnv, specs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every environment with the kernelspec that starts it; a bad definition is listed with its error."""
    found: dict[str, dict[str, Any]] = {}
    for spec_name, entry in sorted(specs.items()):
        provisioner = entry["spec"].get("metadata", {}).get("kernel_provisioner", {})
        if provisioner.get("provisioner_name") != PROVISIONER_NAME:
            continue
        config = dict(provisioner.get("config") or {})
        name = config.pop("environment", None) or spec_name
        raw = settings.environments.get(name, config)
        if "display_name" not in raw and entry["spec"].get("display_name"):
            raw = {**raw, "display_name": entry["spec"]["display_name"]}  # what Lab's kernel menu shows
        source = "c.GpuEnv.environments" if name in settings.environments else f"kernelspec {spec_name}"
        found[name] = {"name": name, "kernelspec": spec_name, "raw": raw, "source": source}
    for name, raw in settings.environments.items():
        found.setdefault(name, {"name": name, "kernelspec": None, "raw": raw, "source": "c.GpuEnv.environments"})
    out = []
    for item in found.values():
        try:
            item["env"] = parse_environment(item["name"], item["raw"], item["source"])
            if item["source"].startswith("kernelspec") and not settings.allow_kernelspec_environments:
                raise EnvironmentError_(f"environment {item['name']!r} is defined in a kernelspec, which this "
                                        "server does not accept (c.GpuEnv.allow_kernelspec_environments)")
            item["error"] = None
        except EnvironmentError_ as exc:
            item["env"], item["error"] = None, str(exc)
        out.append(item)
    return sorted(out, key=lambda i: i["name"])


def environment_report(settings: GpuEnv, specs: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
    items = defined_environments(settings, specs)
    try:
        client = engine.client(settings.docker_url, settings.docker_timeout)
        docker_state = {"available": True, "reason": None}
    except engine.EngineError as exc:
        client, docker_state = None, {"available": False, "reason": str(exc)}
    rows = []
    for item in items:
        env = item["env"]
        row: dict[str, Any] = {"name": item["name"], "kernelspec": item["kernelspec"], "source": item["source"],
                               "display_name": env.display_name if env else item["name"],
                               "image": env.image if env else None, "gpus": str(env.gpus) if env else None,
                               "image_present": None, "cuda_version": env.cuda_version if env else None,
                               "compatible": False, "reason": item["error"], "pull_progress": None}
        if env is None:
            row["state"] = "invalid"
        elif client is None:
            row["state"], row["reason"] = "unavailable", docker_state["reason"]
        else:
            info = engine.image_info(client, env.image)
            row["image_present"] = info.present
            row["cuda_version"] = env.cuda_version or info.cuda_version
            row["pull_progress"] = engine.pull_progress(env.image)
            ok, reason = True, None
            if env.gpus.wants_gpus and not snapshot.available:
                ok, reason = False, f"asks for GPUs ({env.gpus}) but this server sees none: {snapshot.reason}"
            elif env.gpus.wants_gpus:
                ok, reason = cuda_compatibility(row["cuda_version"], snapshot.cuda_driver_version)
            if item["kernelspec"] is None:
                ok, reason = False, (reason or f"no kernelspec starts it: add one with metadata.kernel_provisioner "
                                     f"config {{'environment': '{env.name}'}}")
            row["compatible"], row["reason"] = ok, reason
            if row["pull_progress"] is not None:
                row["state"] = "pulling"
            elif not ok:
                row["state"] = "incompatible"
            elif not info.present:
                row["state"] = "image-missing" if not settings.pull_missing_images else "ready"
                row["reason"] = (f"image {env.image} is not on the engine; it is pulled at first start"
                                 if settings.pull_missing_images else
                                 f"image {env.image} is not on the engine and pulling is off")
            else:
                row["state"] = "ready"
        rows.append(row)
    return {"docker": docker_state, "environments": rows}


def kernel_report(kernel_manager, snapshot: Snapshot) -> dict[str, Any]:
    """Every running kernel: its environment, container, GPUs and the GPU memory its processes hold."""
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
        except KeyError:
            continue
        provisioner = km.provisioner
        environment = getattr(provisioner, "environment", None)
        assigned = [g.index for g in getattr(provisioner, "gpus", [])]
        rows.append({
            "kernel_id": kernel_id,
            "kernel_name": km.kernel_name,
            "environment": environment.name if environment else None,
            "container_id": getattr(provisioner, "container_id", None),
            "gpu_mode": getattr(provisioner, "gpu_mode", None),
            "gpus": assigned or sorted(used_gpus.get(kernel_id, ())),
            "gpu_memory": memory.get(kernel_id) if snapshot.available else None,
        })
    return {"kernels": rows}
