"""Which containers' GPU claims count on one person's machine, besides their labels.

A warm kernel (``server.warm``) is a container made ahead of any start, on a GPU free at that moment; until a start
binds it to a kernel, its claim is soft: allocation leaves it out, so any start may take its GPU. A start that binds
one records it in its server's warm book (``warm-bound-<pid>.json`` in the user's private folder); from then on its
labels' claim counts like any kernel's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os

from jupyter_gpuenv.containers import labels

PREFIX = "warm-"  # a warm container's kernel id (its labels) and socket folder


def bound_in(private_dir: str) -> set[str]:
    """The warm containers a start has bound to a kernel (every server of this user: their warm books)."""
    found: set[str] = set()
    for path in glob.glob(os.path.join(private_dir, "warm-bound-*.json")):
        found |= bound_in_file(path)
    return found


def bound_in_file(path: str) -> set[str]:
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        return {c for c in json.load(f) if isinstance(c, str)}
    return set()


def soft_claims(kernels: list[labels.KernelContainer], private_dir: str | None) -> set[str]:
    """Warm containers no start has bound: their GPUs are free for any start (leave them out of holdings)."""
    warm = {c.id for c in kernels if c.kernel_id.startswith(PREFIX)}
    return warm - bound_in(private_dir) if warm and private_dir else warm
