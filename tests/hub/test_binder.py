"""The Binder recipe (binder/) installs a working extension: run its steps in a fresh virtual environment.

repo2docker clones the repository, installs ``binder/requirements.txt`` with pip from the clone's root and
then runs ``binder/postBuild``. This test does the same with a copy of the files git would commit (tracked
and untracked-but-not-ignored: no node_modules, no built labextension, so the labextension is built from
labextension/ as on Binder, and this working tree is left alone) and ``python -m venv`` (no system
site-packages, so a missing dependency shows); then it checks both extension lists itself. pip's and
yarn's caches make every run after the first faster (about a minute on 2 cores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
INSTALL_TIMEOUT = 300  # first run with cold pip and yarn caches; warm: about a minute on 2 cores


def clone(dest: Path) -> Path:
    """What a fresh clone would hold once the lead commits: tracked plus untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        timeout=60,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    output = ANSI.sub("", proc.stdout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory):
    """A fresh venv with binder/requirements.txt installed from a fresh copy's root, as repo2docker does."""
    work = tmp_path_factory.mktemp("binder")
    repo = clone(work / "repo")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        # no user-level Jupyter config or extensions from this machine (HOME stays: pip's and yarn's caches)
        JUPYTER_CONFIG_DIR=str(work / "jupyter-config"),
        JUPYTER_DATA_DIR=str(work / "jupyter-data"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    # --no-compile: byte-compiling ~100 packages is a third of the install on 2 cores, and proves nothing
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "-r", "binder/requirements.txt"],
        repo,
        env,
        INSTALL_TIMEOUT,
    )
    return repo, venv, env


def test_requirements_install_the_server_extension_enabled_and_ok(binder_env):
    repo, venv, env = binder_env
    out = run([str(venv / "bin" / "jupyter"), "server", "extension", "list"], repo, env, 60)
    section = out.split(f"Config dir: {venv}/etc/jupyter", 1)
    assert len(section) == 2, f"no config section for the venv:\n{out}"
    mine = section[1].split("Config dir:", 1)[0]  # enabled by the package's own config, not by hand
    assert re.search(r"^\s*jupyter_gpuenv enabled\s*$", mine, re.M), out
    assert re.search(r"^\s*jupyter_gpuenv \S+ OK\s*$", mine, re.M), out


def test_requirements_install_the_labextension_enabled_and_ok(binder_env):
    repo, venv, env = binder_env
    out = run([str(venv / "bin" / "jupyter"), "labextension", "list"], repo, env, 60)
    section = out.split(f"{venv}/share/jupyter/labextensions", 1)
    assert len(section) == 2, f"no labextensions folder of the venv:\n{out}"
    assert re.search(r"^\s*jupyter-gpuenv v\S+ enabled\s+OK\b", section[1], re.M), out


def test_post_build_accepts_the_installation(binder_env):
    repo, venv, env = binder_env
    out = run(["bash", "binder/postBuild"], repo, env, 120)
    assert "enabled and OK" in out
