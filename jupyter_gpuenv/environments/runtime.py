"""Kernel runtimes: ipykernel and its dependencies for one Python version, mounted into images lacking it.

Stock images such as pytorch/pytorch have Python but no ipykernel. Rather than build a derived image (which
needs a registry or a network inside the build), ``jupyter gpuenv prepare-runtime 3.11`` installs ipykernel
for that Python into a folder on the host, and the provisioner mounts it read-only; the launcher appends it
to ``sys.path``, so the image's own packages always come first.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile


def runtime_path(root: str, python_version: str | None) -> str:
    return os.path.join(root, f"py{python_version}-{platform.machine()}")


def prepared_versions(root: str) -> frozenset[str]:
    """The Python versions ("3.11") whose runtime is prepared under ``root`` for this machine."""
    suffix = f"-{platform.machine()}"
    try:
        names = os.listdir(root)
    except OSError:
        return frozenset()
    return frozenset(n[2 : -len(suffix)] for n in names if n.startswith("py") and n.endswith(suffix))


def prepare(root: str, python_version: str, requirement: str = "ipykernel") -> str:
    """Install ``requirement`` for CPython ``python_version`` (binary wheels only) into the runtime folder.

    pip's own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX for a machine without an index).
    """
    if not python_version.replace(".", "").isdigit() or python_version.count(".") != 1:
        raise ValueError(f"{python_version!r} is not a Python version such as '3.11'")
    target = runtime_path(root, python_version)
    machine = platform.machine()
    platforms = [f"manylinux_2_{m}_{machine}" for m in (28, 27, 17)] + [f"manylinux2014_{machine}", "any"]
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=root)
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "--only-binary=:all:",
            "--target",
            staging,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
        ]
        for p in platforms:
            cmd += ["--platform", p]
        subprocess.run(cmd + [requirement], check=True)
        os.chmod(staging, 0o755)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.rename(staging, target)  # atomic: a half-prepared runtime is never mounted
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
