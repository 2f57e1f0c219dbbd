"""Which GPUs this server may use, from CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES or configuration.

Under JupyterHub each single-user server is started with its own visible devices; the panel then shows
only those GPUs and container kernels get only those. Indices are NVML (host) indices; UUIDs may be given
whole or by a unique prefix, as CUDA accepts them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Visibility:
    """``tokens is None`` means every GPU; an empty tuple means none."""

    tokens: tuple[str, ...] | None
    source: str = "default"

    def allows(self, index: int, uuid: str | None) -> bool:
        if self.tokens is None:
            return True
        for token in self.tokens:
            if token.isdigit():
                if int(token) == index:
                    return True
            elif uuid and (uuid == token or uuid.startswith(token) or uuid.startswith("GPU-" + token)):
                return True
        return False


def parse(spec: str | None, source: str = "config") -> Visibility:
    """Parse a device list: ``None``/``all`` -> every GPU; ``""``/``none``/``void`` -> none; else ids."""
    if spec is None:
        return Visibility(None, source)
    text = spec.strip()
    if text.lower() == "all":
        return Visibility(None, source)
    if text == "" or text.lower() in ("none", "void", "nodevfiles"):
        return Visibility((), source)
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tokens if not (t.isdigit() or t.startswith(("GPU-", "MIG-")) or _hexish(t))]
    if bad:
        raise ValueError(
            f"{source}: {bad[0]!r} is not a GPU index or UUID (expected e.g. '0,1', 'GPU-5f3c…', 'all' or 'none')"
        )
    return Visibility(tokens, source)


def _hexish(token: str) -> bool:
    return all(c in "0123456789abcdefABCDEF-" for c in token)


def from_environment(configured: str | None, environ: Mapping[str, str] | None = None) -> Visibility:
    """Configuration wins; then CUDA_VISIBLE_DEVICES (what CUDA itself obeys); then NVIDIA_VISIBLE_DEVICES."""
    environ = os.environ if environ is None else environ
    if configured is not None:
        return parse(configured, "GpuEnv.visible_devices")
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if name in environ:
            return parse(environ[name], name)
    return Visibility(None, "default")
