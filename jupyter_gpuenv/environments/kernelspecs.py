"""The kernelspec stanza that starts a container environment: written and read here, and nowhere else.

``jupyter gpuenv add`` writes a kernelspec whose ``metadata.kernel_provisioner`` names our provisioner and
whose ``config`` names the environment (and, for environments defined on the command line, holds its
definition). The provisioner, ``GET environments`` and ``jupyter gpuenv list`` all resolve a kernelspec to
an environment through :func:`resolve`, so they cannot disagree about what a kernelspec starts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.environments.definition import Environment, parse_environment
from jupyter_gpuenv.errors import InvalidEnvironment

PROVISIONER_NAME = "gpuenv-docker-provisioner"
PREFIX = "gpuenv-"
CONFIGURED = "c.GpuEnv.environments"
LOGOS = Path(__file__).parent / "logos"


def kernelspec_name(environment_name: str) -> str:
    return environment_name if environment_name.startswith(PREFIX) else PREFIX + environment_name


def kernelspec_json(env: Environment) -> dict[str, Any]:
    """The kernel.json of an environment defined on the command line (its definition travels inline)."""
    return _kernelspec(env.name, env.display_name, env.python, {"environment": env.name, **env.to_config()})


def named_kernelspec_json(name: str, display_name: str) -> dict[str, Any]:
    """The kernel.json that only names an environment (a shared host's broker, or c.GpuEnv.environments)."""
    return _kernelspec(name, display_name, "python3", {"environment": name})


def _kernelspec(name: str, display_name: str, python: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
            "gpuenv": {"environment": name},
        },
    }


def logos(gpu: bool) -> dict[str, str]:
    """The Launcher's icon for an environment's tile: kernelspec file name -> the package's file (a GPU card for an
    environment that asks for GPUs, a chip for one that runs on the CPU)."""
    kind = "gpu" if gpu else "cpu"
    return {"logo-svg.svg": str(LOGOS / f"{kind}.svg"), "logo-64x64.png": str(LOGOS / f"{kind}-64x64.png")}


def wants_gpus(policy: Any) -> bool:
    """Whether an environment's ``gpus`` as written (None: the default, all) asks for GPUs, for its logo."""
    return str(policy if policy is not None else "all").strip().lower() != "none"


def install(spec: dict[str, Any], environment_name: str, gpu: bool = True, **where: Any) -> str:
    """Write ``spec`` as the kernelspec of ``environment_name``, with the logo ``gpu`` says (``where``:
    KernelSpecManager's ``user`` or ``prefix``); its folder. PermissionError if that place is not this user's to
    write."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        for name, source in logos(gpu).items():
            shutil.copyfile(source, os.path.join(folder, name))
        # the copy keeps these modes: a kernelspec every user of this Python (or prefix) can read
        os.chmod(folder, 0o755)
        for name in os.listdir(folder):
            os.chmod(os.path.join(folder, name), 0o644)
        return KernelSpecManager().install_kernel_spec(folder, kernelspec_name(environment_name), **where)


def provisioner_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The ``config`` of a kernelspec (``kernel.json`` as a dict) that uses our provisioner; None otherwise."""
    stanza = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
    if stanza.get("provisioner_name") != PROVISIONER_NAME:
        return None
    config = stanza.get("config") or {}
    return config if isinstance(config, dict) else {}


def resolve(settings: GpuEnv, config: dict[str, Any], source: str, display_name: str | None = None) -> Environment:
    """The environment a kernelspec's provisioner ``config`` names or defines; InvalidEnvironment if bad.

    A configured environment (``c.GpuEnv.environments``) wins over a kernelspec's inline copy of the same
    name; an inline definition is accepted only while ``allow_kernelspec_environments`` is on.
    ``display_name``: the kernelspec's own, used when the definition has none (what Lab's menu shows).
    """
    config = dict(config)
    name = config.pop("environment", None)
    if not isinstance(name, str) or not name:
        raise InvalidEnvironment(f"{source}: metadata.kernel_provisioner.config needs 'environment': NAME")
    if name in settings.environments:
        raw = settings.environments[name]
        return parse_environment(name, _with_display_name(raw, display_name), CONFIGURED)
    if not config:
        raise InvalidEnvironment(
            f"{source}: no environment {name!r} in {CONFIGURED} "
            f"(defined: {', '.join(sorted(settings.environments)) or 'none'})"
        )
    if not settings.allow_kernelspec_environments:
        raise InvalidEnvironment(
            f"{source}: environment {name!r} is defined in the kernelspec, and this server only accepts "
            f"environments from {CONFIGURED} (c.GpuEnv.allow_kernelspec_environments is off)"
        )
    return parse_environment(name, _with_display_name(config, display_name), source)


def named_only(config: dict[str, Any], source: str) -> str:
    """With a broker, a kernelspec names an environment and nothing more; InvalidEnvironment otherwise."""
    name = config.get("environment")
    if not isinstance(name, str) or not name:
        raise InvalidEnvironment(f"{source}: metadata.kernel_provisioner.config needs 'environment': NAME")
    extra = sorted(set(config) - {"environment"})
    if extra:
        raise InvalidEnvironment(
            f"{source}: with a GPU broker (c.GpuEnv.broker) a kernelspec names an environment and nothing more; "
            f"remove {', '.join(map(repr, extra))} (the host's administrator defines environments)"
        )
    return name


def _with_display_name(raw: Any, display_name: str | None) -> Any:
    if isinstance(raw, dict) and "display_name" not in raw and display_name:
        return {**raw, "display_name": display_name}
    return raw


@dataclass
class Defined:
    """One environment as the listing sees it: its definition or the error that stops it."""

    name: str
    kernelspec: str | None
    source: str
    environment: Environment | None
    error: InvalidEnvironment | None  # set exactly when environment is None

    def definition(self) -> Environment:
        """Its definition; the InvalidEnvironment that stops it is raised."""
        if self.environment is None:
            assert self.error is not None
            raise self.error
        return self.environment


def defined_environments(settings: GpuEnv, specs: dict[str, Any]) -> list[Defined]:
    """Every environment: those kernelspecs start (``KernelSpecManager.get_all_specs()``) and configured ones."""
    found: dict[str, Defined] = {}
    for spec_name, entry in sorted(specs.items()):
        spec = entry.get("spec") or {}
        config = provisioner_config(spec)
        if config is None:
            continue
        named = config.get("environment")
        name = named if isinstance(named, str) else spec_name
        source = CONFIGURED if name in settings.environments else f"kernelspec {spec_name}"
        try:
            env, error = resolve(settings, config, f"kernelspec {spec_name}", spec.get("display_name")), None
        except InvalidEnvironment as exc:
            env, error = None, exc
        found.setdefault(name, Defined(name, spec_name, source, env, error))
    for name, raw in settings.environments.items():
        if name not in found:
            try:
                env, error = parse_environment(name, raw, CONFIGURED), None
            except InvalidEnvironment as exc:
                env, error = None, exc
            found[name] = Defined(name, None, CONFIGURED, env, error)
    return sorted(found.values(), key=lambda d: d.name)
