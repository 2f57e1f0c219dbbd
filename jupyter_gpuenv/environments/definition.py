"""Container environments: an administrator's definition of what a container kernel may be.

An environment comes from ``c.GpuEnv.environments`` (by name) or from a kernelspec's
``metadata.kernel_provisioner.config`` (written by ``jupyter gpuenv add``). Parsing is strict: an unknown
key or a malformed value is an error naming the key and where it came from, never a silent drop. Nothing
a notebook user sends reaches ``docker run`` except the choice of one of these environments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from jupyter_gpuenv.errors import InvalidEnvironment
from jupyter_gpuenv.host import Mount

GPU_MODES = ("auto", "toolkit", "devices", "none")
NETWORKS = ("none", "host")
TRANSPORTS = ("ipc", "tcp")
KERNEL_RUNTIMES = ("auto", "image", "mount")
_SIZE = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# ready-made environments for `jupyter gpuenv add <preset>`
PRESETS: dict[str, dict[str, Any]] = {
    "pytorch-2.6-cuda12.4": {
        "display_name": "PyTorch 2.6 / CUDA 12.4",
        "image": "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime",
        "cuda_version": "12.4",
        "gpus": "all",
        "shm_size": "8g",
    },
    "pytorch-2.5-cuda12.4": {
        "display_name": "PyTorch 2.5 / CUDA 12.4",
        "image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        "cuda_version": "12.4",
        "gpus": "all",
        "shm_size": "8g",
    },
}


@dataclass(frozen=True)
class GpuPolicy:
    """``all`` | ``none`` | a count ``N`` | ``device=0,1`` (indices or UUIDs, as docker's --gpus) | ``exclusive:N``."""

    kind: str  # "all", "none", "count", "ids", "exclusive"
    count: int = 0
    ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> GpuPolicy:
        value = str(text).strip().lower()
        if value in ("all", "none"):
            return cls(value)
        if value.isdigit():
            return cls("count", int(value)) if int(value) > 0 else cls("none")
        if value.startswith("exclusive:") and value[len("exclusive:") :].isdigit():
            count = int(value[len("exclusive:") :])
            if count > 0:
                return cls("exclusive", count)
        listed = str(text).strip()
        listed = listed[len("device=") :] if listed.lower().startswith("device=") else listed
        ids = tuple(t.strip() for t in listed.split(",") if t.strip())
        if ids and all(t.isdigit() or t.upper().startswith(("GPU-", "MIG-")) for t in ids):
            return cls("ids", len(ids), ids)
        raise ValueError(
            f"{text!r} is not a GPU policy: use 'all', 'none', a count such as '2', "
            "'device=0,1' (indices or UUIDs), or 'exclusive:1'"
        )

    @property
    def wants_gpus(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return {"all": "all", "none": "none", "count": str(self.count), "exclusive": f"exclusive:{self.count}"}.get(
            self.kind, "device=" + ",".join(self.ids)
        )


@dataclass(frozen=True)
class Environment:
    name: str
    image: str
    display_name: str = ""
    python: str = "python3"
    gpus: GpuPolicy = field(default_factory=lambda: GpuPolicy("all"))
    gpu_mode: str = "auto"
    shm_size: str = "2g"
    memory: str | None = None
    cpus: float | None = None
    network: str = "none"
    transport: str = "ipc"
    cuda_version: str | None = None
    mounts: tuple[Mount, ...] = ()
    env_allow: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    kernel_runtime: str = "auto"

    def to_config(self) -> dict[str, Any]:
        """The dict a kernelspec or configuration holds; parses back to an equal Environment."""
        out = asdict(self)
        out.pop("name")
        out["gpus"] = str(self.gpus)
        out["mounts"] = [{"source": m.source, "target": m.target, "read_only": m.read_only} for m in self.mounts]
        out["env_allow"] = list(self.env_allow)
        out["env"] = dict(self.env)
        return {k: v for k, v in out.items() if v not in (None, [], {})}


_KEYS = {f.name for f in fields(Environment)} - {"name"}


def parse_environment(name: str, raw: dict[str, Any], source: str) -> Environment:
    """Validate an administrator's definition. Raises InvalidEnvironment with a sentence naming the key."""

    def fail(message: str) -> InvalidEnvironment:
        return InvalidEnvironment(f"environment {name!r} ({source}): {message}")

    if not isinstance(raw, dict):
        raise fail(f"expected a mapping of settings, got {type(raw).__name__}")
    if not _NAME.match(name or ""):
        raise fail("the name must be lower-case letters, digits, '.', '_' or '-' (at most 63)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(_KEYS))}")
    if not isinstance(raw.get("image"), str) or not raw["image"].strip():
        raise fail("'image' is required (for example 'pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime')")
    values: dict[str, Any] = {"name": name, "image": raw["image"].strip()}
    values["display_name"] = str(raw.get("display_name") or f"{name} ({values['image']})")
    for key, allowed in (
        ("gpu_mode", GPU_MODES),
        ("network", NETWORKS),
        ("transport", TRANSPORTS),
        ("kernel_runtime", KERNEL_RUNTIMES),
    ):
        if key in raw:
            if raw[key] not in allowed:
                raise fail(f"{key!r} must be one of {', '.join(allowed)}, got {raw[key]!r}")
            values[key] = raw[key]
    if "python" in raw:
        if not isinstance(raw["python"], str) or not raw["python"].strip() or " " in raw["python"]:
            raise fail("'python' must be the interpreter's path or name in the image, e.g. 'python3'")
        values["python"] = raw["python"]
    if "gpus" in raw:
        try:
            values["gpus"] = GpuPolicy.parse(raw["gpus"])
        except ValueError as exc:
            raise fail(f"'gpus': {exc}") from None
    for key in ("shm_size", "memory"):
        if raw.get(key) is not None:
            if not _SIZE.match(str(raw[key])):
                raise fail(f"{key!r} must be a size such as '8g' or '512m', got {raw[key]!r}")
            values[key] = str(raw[key]).lower()
    if raw.get("cpus") is not None:
        try:
            cpus = float(raw["cpus"])
        except (TypeError, ValueError):
            cpus = -1.0
        if cpus <= 0:
            raise fail(f"'cpus' must be a positive number, got {raw['cpus']!r}")
        values["cpus"] = cpus
    if raw.get("cuda_version") is not None:
        if parse_cuda_version(str(raw["cuda_version"])) is None:
            raise fail(f"'cuda_version' must look like '12.4', got {raw['cuda_version']!r}")
        values["cuda_version"] = str(raw["cuda_version"])
    values["mounts"] = tuple(_parse_mount(m, fail) for m in raw.get("mounts") or [])
    allow = raw.get("env_allow") or []
    if not isinstance(allow, list) or not all(isinstance(v, str) and _ENV_NAME.match(v) for v in allow):
        raise fail("'env_allow' must be a list of environment variable names")
    values["env_allow"] = tuple(allow)
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(_ENV_NAME.match(str(k)) and isinstance(v, str) for k, v in env.items()):
        raise fail("'env' must map variable names to string values")
    values["env"] = tuple(sorted(env.items()))
    if values.get("transport") == "tcp" and values.get("network") != "host":
        raise fail(
            "'transport': 'tcp' needs 'network': 'host' (the kernel listens on 127.0.0.1 of the host; "
            "no port is ever published)"
        )
    return Environment(**values)


def _parse_mount(raw: Any, fail: Callable[[str], InvalidEnvironment]) -> Mount:
    if isinstance(raw, str):  # "SRC:DST[:ro|rw]"
        parts = raw.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise fail(f"mount {raw!r} must be 'SOURCE:TARGET' or 'SOURCE:TARGET:ro|rw'")
        raw = {"source": parts[0], "target": parts[1], "read_only": len(parts) == 2 or parts[2] == "ro"}
    if not isinstance(raw, dict) or set(raw) - {"source", "target", "read_only"}:
        raise fail(f"mount {raw!r} must have only 'source', 'target' and 'read_only'")
    source, target = raw.get("source"), raw.get("target")
    if not (isinstance(source, str) and source.startswith("/") and isinstance(target, str) and target.startswith("/")):
        raise fail(f"mount {raw!r}: source and target must be absolute paths")
    return Mount(source, target, bool(raw.get("read_only", True)))


def parse_cuda_version(text: str | None) -> tuple[int, int] | None:
    """``"12.4.1"`` -> ``(12, 4)``; None when absent or malformed."""
    if not text:
        return None
    match = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    return (int(match.group(1)), int(match.group(2))) if match else None


def cuda_compatibility(image_cuda: str | None, driver_cuda: str | None) -> tuple[bool, str | None]:
    """Whether the host driver can run the image's CUDA, with the reason when it cannot."""
    need, have = parse_cuda_version(image_cuda), parse_cuda_version(driver_cuda)
    if need is None or have is None:
        return True, None
    if need > have:
        return False, (
            f"the image needs CUDA {need[0]}.{need[1]} but the NVIDIA driver here supports CUDA "
            f"up to {have[0]}.{have[1]}: update the host driver or choose an image built for "
            f"CUDA {have[0]}.{have[1]} or older"
        )
    return True, None
