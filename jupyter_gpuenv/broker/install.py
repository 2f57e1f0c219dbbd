"""`jupyter gpuenv broker install`: the host's part of a shared GPU server, in one command, said as it is done.

    1. the configuration   /etc/jupyter-gpuenv/broker_config.py from the shipped example (kept if there), checked
    2. the users' servers  this Python's jupyter_server_config.d points them at the broker; a kernelspec per
                           environment under this Python's prefix (what TLJH's user environment reads)
    3. the images          pulled, with progress; a kernel runtime prepared for each image without ipykernel
    4. the service         a systemd unit, checked with `systemd-analyze verify`, enabled and (re)started

Run again after editing the configuration: everything is idempotent, and the broker restarts to read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.broker.setup import DEFAULT_CONFIG, example_config, load_config
from jupyter_gpuenv.engines.base import image_facts_of
from jupyter_gpuenv.environments import kernelspecs, runtime
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.errors import EngineUnreachable, GpuEnvError
from jupyter_gpuenv.pulls import progress as pulls

UNIT = "/etc/systemd/system/jupyter-gpuenv-broker.service"
SERVER_CONFIG = "jupyter_gpuenv_broker.json"
log = logging.getLogger("jupyter_gpuenv.broker")


class Report:
    """What was done, one line per step; whether anything needs the administrator."""

    def __init__(self) -> None:
        self.failures = 0

    def done(self, text: str) -> None:
        print(f"  done     {text}", flush=True)

    def kept(self, text: str) -> None:
        print(f"  kept     {text}", flush=True)

    def skipped(self, text: str) -> None:
        print(f"  skipped  {text}", flush=True)

    def failed(self, text: str) -> None:
        self.failures += 1
        print(f"  FAILED   {text}", flush=True)


def command() -> list[str]:
    """How systemd runs this installation's `jupyter gpuenv` (absolute: sudo's PATH may not have it)."""
    script = os.path.join(os.path.dirname(sys.executable), "jupyter-gpuenv")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "jupyter_gpuenv.cli.main"]


def unit_command(config: str) -> str:
    return " ".join([*command(), "broker", "--config", config])


def unit_text(config: str) -> str:
    return f"""[Unit]
Description=jupyter_gpuenv GPU broker: the one process that runs container kernels for every user
After=docker.service
Wants=docker.service

[Service]
ExecStart={unit_command(config)}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gpuenv-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(config: str | None, prefix: str, unit: str, pull: bool, start: bool) -> int:
    config = os.path.abspath(config or DEFAULT_CONFIG)
    report = Report()
    print("The GPU broker's part of this host:", flush=True)
    if os.path.exists(config):
        report.kept(f"{config} (already there: edit it, then run this again)")
    else:
        _write(config, example_config(), 0o600)
        report.done(f"{config}, from the example (its environments and policy are the ones to edit)")
    settings = load_config(config)  # ConfigProblems: the caller prints them all
    _servers(settings, prefix, report)
    if pull:
        asyncio.run(_images(settings, report))
    else:
        report.skipped("images and kernel runtimes (--no-pull): pulled at a kernel's first start")
    _service(config, unit, start, report)
    print(
        "\nLast, the hub: every user's server must reach the broker. Servers that run this Python read "
        f"{os.path.join(prefix, 'etc', 'jupyter', 'jupyter_server_config.d', SERVER_CONFIG)}; for others, add to "
        f'the hub\'s configuration:\n    c.Spawner.args = ["--GpuEnv.broker=unix://{settings.socket}"]',
        flush=True,
    )
    if report.failures:
        print(
            f"\n{report.failures} step(s) FAILED (above, each with what to do); run this again once fixed", flush=True
        )
        return 1
    return 0


def _servers(settings: Broker, prefix: str, report: Report) -> None:
    """Point this Python's servers at the broker, and give them a kernelspec per environment."""
    target = os.path.join(prefix, "etc", "jupyter", "jupyter_server_config.d", SERVER_CONFIG)
    _write(target, json.dumps({"GpuEnv": {"broker": f"unix://{settings.socket}"}}, indent=1) + "\n", 0o644)
    report.done(f"{target}: servers of this Python ask the broker at {settings.socket}")
    for name, raw in sorted(settings.environments.items()):
        display = raw.get("display_name") or name
        spec = kernelspecs.named_kernelspec_json(name, display)
        path = kernelspecs.install(spec, name, gpu=kernelspecs.wants_gpus(raw.get("gpus")), prefix=prefix)
        report.done(f"kernel {display!r} ({path})")
    # a kernel whose environment left the configuration would be offered in the launcher and refused at start
    kernels = os.path.join(prefix, "share", "jupyter", "kernels")
    for folder in sorted(os.listdir(kernels)) if os.path.isdir(kernels) else []:
        try:
            with open(os.path.join(kernels, folder, "kernel.json")) as f:
                config = kernelspecs.provisioner_config(json.load(f))
        except (OSError, ValueError):
            continue
        if config is not None and set(config) == {"environment"} and config["environment"] not in settings.environments:
            shutil.rmtree(os.path.join(kernels, folder))
            report.done(f"removed kernel {folder}: {config['environment']!r} is no longer in the configuration")


async def _images(settings: Broker, report: Report) -> None:
    from jupyter_gpuenv.engines.docker.engine import DockerEngine

    environments = {n: parse_environment(n, raw, "c.Broker.environments") for n, raw in settings.environments.items()}
    docker = DockerEngine(settings.docker_url, settings.docker_timeout, None, log)
    try:
        for image in sorted({env.image for env in environments.values()}):
            try:
                if (await docker.image_facts(image)).present:
                    report.kept(f"image {image} (already on the engine)")
                    continue
                print(f"  pulling  {image}", flush=True)
                await docker.pull(image, _progress(image))
                report.done(f"image {image} pulled")
            except EngineUnreachable as exc:  # no engine: every other image and runtime would say the same
                report.failed(f"images and kernel runtimes: {exc}")
                return
            except GpuEnvError as exc:
                report.failed(f"image {image}: {exc}")
        prepared = runtime.prepared_versions(settings.kernel_runtime_dir)
        for name, env in sorted(environments.items()):
            try:
                facts = await image_facts_of(docker, env)
            except GpuEnvError as exc:
                report.failed(f"environment {name!r}: {exc}")
                continue
            if not facts.present or env.kernel_runtime == "image" or facts.has_ipykernel:
                continue
            version = facts.python_version
            if version is None:
                report.failed(f"environment {name!r}: image {env.image} has no {env.python!r}: set its 'python'")
            elif version in prepared:
                report.kept(f"kernel runtime for Python {version} (for {name!r}, whose image has no ipykernel)")
            else:
                try:
                    path = await asyncio.get_running_loop().run_in_executor(
                        None, runtime.prepare, settings.kernel_runtime_dir, version
                    )
                except (OSError, ValueError, subprocess.CalledProcessError) as exc:
                    retry = f"jupyter gpuenv prepare-runtime {version} --dir {settings.kernel_runtime_dir}"
                    report.failed(f"kernel runtime for Python {version}: {exc} (`{retry}` once pip reaches an index)")
                    continue
                prepared = prepared | {version}
                report.done(f"kernel runtime for Python {version} in {path} (for {name!r}: no ipykernel in its image)")
    finally:
        docker.close()


def _progress(image: str):
    printed = [0.0]

    def show(p: pulls.PullProgress) -> None:
        if time.monotonic() - printed[0] >= 2:
            printed[0] = time.monotonic()
            print(f"           {image}: {pulls.describe(p)}", flush=True)

    return show


def _service(config: str, unit: str, start: bool, report: Report) -> None:
    _write(unit, unit_text(config), 0o644)
    verify = shutil.which("systemd-analyze")
    if verify:
        checked = subprocess.run([verify, "verify", unit], capture_output=True, text=True, cwd="/")
        problems = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
        if checked.returncode != 0:
            report.failed(f"{unit}: systemd-analyze verify says: {'; '.join(problems)}")
            return
        report.done(f"{unit} (checked by systemd-analyze verify)")
    else:
        report.done(f"{unit} (not checked: no systemd-analyze here)")
    name = os.path.basename(unit)
    if not start:
        report.skipped(f"starting the broker (--no-start): systemctl enable --now {name}")
        return
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        report.skipped(
            f"starting the broker: systemd does not run this machine; run it yourself: {unit_command(config)}"
        )
        return
    for argv in (["daemon-reload"], ["enable", name], ["restart", name]):
        done = subprocess.run(["systemctl", *argv], capture_output=True, text=True)
        if done.returncode != 0:
            report.failed(f"systemctl {' '.join(argv)}: {done.stderr.strip()} (journalctl -u {name} says why)")
            return
    report.done(f"systemctl enable + restart {name}: the broker runs (its readiness table: journalctl -u {name})")
