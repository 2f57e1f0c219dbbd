"""docs/shared-host.md followed literally, as far as this machine allows: its commands are taken from the Markdown
and run, its hub stanza loaded, so the guide cannot drift from what works.

What this machine cannot do is said where it is skipped: pip has no index here (the package under test is the
one installed), systemd does not run the machine (the unit is checked, not started), and no registry outside
127.0.0.1 is reachable (the example's images cannot be pulled: those steps may fail, and only those).
Paths the install writes (/etc, the Python's prefix) go to a temporary root, added as the command's options.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "shared-host.md"
SECTION = "## Servers as Unix accounts"


def blocks(language: str) -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def commands() -> list[list[str]]:
    return [shlex.split(line) for block in blocks("bash") for line in block.splitlines() if line.strip()]


def test_the_guide_is_the_install_commands_and_the_hub_stanza():
    found = commands()
    assert len(found) == 2, found  # pip install, broker install: the host's part in two commands
    assert len(blocks("python")) == 1


def test_the_guides_pip_command_installs_this_package():
    (pip,) = [c for c in commands() if os.path.basename(c[2]) == "pip"]
    assert pip[:2] == ["sudo", "-E"] and os.path.basename(pip[2]) == "pip"
    name = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert pip[3:] == ["install", name]  # not run: no package index here; the package under test is installed


def test_the_guides_install_command_does_the_hosts_part(tmp_path):
    (install,) = [c for c in commands() if os.path.basename(c[1]) == "jupyter-gpuenv"]
    assert install[0] == "sudo"  # root on the host; these tests run as root
    argv = install[2:]
    assert argv == ["broker", "install"]
    where = ["--config", str(tmp_path / "etc" / "broker_config.py"), "--prefix", str(tmp_path / "prefix"),
             "--unit", str(tmp_path / "systemd" / "jupyter-gpuenv-broker.service")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_gpuenv.cli.main", *argv, *where], capture_output=True, text=True, timeout=300
    )
    out = done.stdout
    assert done.returncode in (0, 1), (out, done.stderr)
    failed = [line for line in out.splitlines() if line.startswith("  FAILED")]
    # the only thing allowed to fail here: pulling the example's images (no registry outside 127.0.0.1)
    assert all(line.startswith("  FAILED   image ") for line in failed), failed
    assert (done.returncode == 1) == bool(failed)
    assert "from the example" in out
    kernels = tmp_path / "prefix" / "share" / "jupyter" / "kernels"
    assert sorted(os.listdir(kernels)) == ["gpuenv-cpu", "gpuenv-pytorch", "gpuenv-pytorch-2gpu"]
    server = tmp_path / "prefix" / "etc" / "jupyter" / "jupyter_server_config.d" / "jupyter_gpuenv_broker.json"
    assert json.loads(server.read_text()) == {"GpuEnv": {"broker": "unix:///run/jupyter-gpuenv/broker.sock"}}
    assert (tmp_path / "systemd" / "jupyter-gpuenv-broker.service").is_file()
    if not os.path.isdir("/run/systemd/system"):
        assert "systemd does not run this machine" in out


def test_the_guides_hub_stanza_points_servers_at_the_brokers_socket(tmp_path):
    from traitlets.config.loader import PyFileConfigLoader

    from jupyter_gpuenv.broker.settings import Broker
    from jupyter_gpuenv.config import GpuEnv

    (stanza,) = blocks("python")
    (tmp_path / "jupyterhub_config.py").write_text("c = get_config()  # noqa\n" + stanza)
    config = PyFileConfigLoader("jupyterhub_config.py", str(tmp_path)).load_config()
    (arg,) = [a for a in config.Spawner.args if a.startswith("--GpuEnv.broker=")]
    assert GpuEnv(broker=arg.split("=", 1)[1]).broker == f"unix://{Broker().socket}"


def test_every_command_the_guide_names_is_one_the_cli_takes():
    text = GUIDE.read_text()
    section = text[text.index(SECTION) :]
    named = re.findall(r"`(?:sudo )?(?:\S*/)?jupyter[ -]gpuenv ([^`]+)`", section[: section.index("\n## ", 1)])
    assert len(named) >= 5, named
    from jupyter_gpuenv.cli.main import parser

    for words in named:
        args = parser().parse_args(shlex.split(words))  # an option the CLI does not have exits here
        assert args.command in ("broker", "add", "pull", "usage"), words
