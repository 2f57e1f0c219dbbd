"""`jupyter gpuenv` on a shared host: the commands that talk to the GPU broker, and the broker's own.

    jupyter gpuenv broker [--config FILE]          run it (as root): broker.main
    jupyter gpuenv broker --example-config         the example configuration that ships in the wheel
    jupyter gpuenv broker install                  the host's part, step by step (broker.install)
    jupyter gpuenv add NAME --broker               a kernelspec naming one of the broker's environments
    jupyter gpuenv pull NAME --broker              the broker pulls its image, progress shown here

``add``, ``list`` and ``pull`` ask the broker's ``catalog`` (broker.catalog), so a kernelspec never names an
environment the host does not have. A name that is not there is InvalidEnvironment, one the caller may not use
NotPermitted: ``jupyter gpuenv`` prints either as one sentence.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.environments import kernelspecs
from jupyter_gpuenv.environments.definition import parse_environment
from jupyter_gpuenv.errors import EngineUnavailable, InvalidEnvironment, InvalidRequest, NotPermitted
from jupyter_gpuenv.pulls import progress as pulls

BROKER_SOCKET = "/run/jupyter-gpuenv/broker.sock"  # c.Broker.socket's default
ANSWER_TIME = 10.0  # seconds the broker may take to answer the CLI (a pull: while it progresses)

DESCRIPTION = f"""\
Run the GPU broker of a host shared through JupyterHub: the one process that talks to the Docker engine,
so no user needs the Docker socket (it is root on the host). Each user's server asks it, over the unix
socket {BROKER_SOCKET} (c.Broker.socket), to start, signal and remove their container kernels;
it runs them as that user, with the administrator's environments and policy only.

It runs as root (or an account in the docker group), usually as the systemd unit that
`jupyter gpuenv broker install` writes. At start it checks its whole configuration (every problem at
once) and prints a readiness table per environment. Guide: docs/shared-host.md."""


def broker_url(settings: GpuEnv) -> str:
    """Where this user's servers find the broker: c.GpuEnv.broker, else its default socket."""
    return settings.broker or f"unix://{BROKER_SOCKET}"


def catalog(url: str) -> list[dict[str, Any]]:
    """Every environment the GPU broker at ``url`` has (``catalog``); EngineUnavailable if it does not answer."""
    from jupyter_gpuenv.engines.broker import BrokerClient

    return asyncio.run(BrokerClient(url, ANSWER_TIME).call("catalog"))


def environment_entry(settings: GpuEnv, name: str, config_file: str | None) -> dict[str, Any]:
    """What `add NAME --broker` names: the entry for ``name`` (its display name), from c.GpuEnv.environments on
    a server without a broker, else the running broker's catalog, else its configuration file.

    No such environment: InvalidEnvironment; one the caller may not use: NotPermitted. Neither a broker nor its
    file to ask: the name is taken unchecked, with a warning (kernelspecs are often added before the broker
    first runs)."""
    if not settings.broker and name in settings.environments:  # a server that defines it itself
        env = parse_environment(name, settings.environments[name], kernelspecs.CONFIGURED)
        return {"name": name, "display_name": env.display_name or name, "gpus": str(env.gpus), "yours": True}
    url = broker_url(settings)
    try:
        entries, where = catalog(url), f"the GPU broker at {url}"
    except EngineUnavailable as exc:
        from jupyter_gpuenv.broker.setup import DEFAULT_CONFIG, ConfigProblems, load_config

        path = config_file or DEFAULT_CONFIG
        if config_file is None and not os.path.exists(path):
            print(f"jupyter gpuenv add: warning: {name!r} is added unchecked: {exc}, and there is no {path} to "
                  "check it in (--broker-config names another)", file=sys.stderr)  # fmt: skip
            return {"name": name, "display_name": name, "yours": True}
        try:
            broker = load_config(path)
        except ConfigProblems as problems:
            raise InvalidRequest(str(problems)) from None
        except PermissionError:
            raise NotPermitted(f"cannot check {name!r}: the GPU broker at {url} is not answering and {path} is not "
                               "readable by you") from None  # fmt: skip
        entries = [{"name": n, "display_name": raw.get("display_name") or n, "gpus": raw.get("gpus"), "yours": True}
                   for n, raw in broker.environments.items()]  # fmt: skip
        where = f"the GPU broker's configuration {path}"
    for entry in entries:
        if entry["name"] == name:
            if not entry["yours"]:
                raise NotPermitted(f"the environment {name!r} is not one this host's administrator lets you use")
            return entry
    defined = ", ".join(e["name"] for e in entries) or "none"
    raise InvalidEnvironment(f"no environment {name!r} on this host ({where} defines: {defined})")


def named_only(specs: dict[str, Any], kernelspec: str | None) -> bool:
    """Whether a kernelspec only names its environment (`add --broker`): the broker defines it."""
    config = kernelspecs.provisioner_config((specs.get(kernelspec) or {}).get("spec") or {}) if kernelspec else None
    return config is not None and set(config) == {"environment"}


class Listing:
    """`list`'s words for kernelspecs the broker defines: asks its catalog once, on the first such row."""

    def __init__(self, settings: GpuEnv) -> None:
        self.url = broker_url(settings)
        self.expected = bool(settings.broker) or os.path.exists(BROKER_SOCKET)  # a broker serves this host
        self._entries: dict[str, dict[str, Any]] | str | None = None

    def describe(self, name: str) -> str | None:
        """The row's text for a named-only kernelspec of ``name``; None where no broker serves this host."""
        if not self.expected:
            return None
        if self._entries is None:
            try:
                self._entries = {e["name"]: e for e in catalog(self.url)}
            except EngineUnavailable:
                self._entries = f"for the GPU broker at {self.url}, which is not answering"
        if isinstance(self._entries, str):
            return self._entries
        if name not in self._entries:
            return f"invalid: no environment {name!r} on this host's GPU broker"
        e = self._entries[name]
        yours = "" if e["yours"] else "; not yours to use"
        return f"{e['display_name']}  [{e['image']}; GPUs {e['gpus']}; GPU broker{yours}]"


def pull(url: str, name: str, bar: Callable[[str], Callable[[pulls.PullProgress], None]]) -> int:
    """The broker pulls (it alone has the engine); its progress lines drawn here by ``bar(image)``."""
    from jupyter_gpuenv.engines.broker import BrokerClient

    shown: dict[str, Callable] = {}

    def progress(raw: dict[str, Any]) -> None:
        if "show" not in shown:
            print(f"The GPU broker pulls {raw.get('image')} for {name!r}", flush=True)
            shown["show"] = bar(raw.get("image", ""))
        shown["show"](pulls.PullProgress(**raw))

    try:
        answer = asyncio.run(BrokerClient(url, ANSWER_TIME).call("pull", {"environment": name}, progress=progress))
    except KeyboardInterrupt:
        print(f"\nStopped watching; the GPU broker goes on pulling for {name!r}", file=sys.stderr)
        return 130
    if answer["pulled"]:
        print(f"{chr(10) if sys.stdout.isatty() else ''}Pulled {answer['image']}")
    else:
        print(f"{answer['image']} is already on the GPU broker's Docker engine")
    return 0


# -- jupyter gpuenv broker ---------------------------------------------------------------------------------------
def cmd_broker(args) -> int:
    if args.example_config:
        from jupyter_gpuenv.broker.setup import example_config

        print(example_config(), end="")
        return 0
    from jupyter_gpuenv.broker.main import main as broker_main

    return broker_main(args.config)


def cmd_broker_install(args) -> int:
    from jupyter_gpuenv.broker.install import UNIT, install
    from jupyter_gpuenv.broker.setup import ConfigProblems

    if os.geteuid() != 0 and None in (args.config, args.unit):  # /etc is root's
        raise NotPermitted("`broker install` writes /etc and starts a system service: run it as root (sudo)")
    try:
        return install(args.config, args.prefix or sys.prefix, args.unit or UNIT, not args.no_pull, not args.no_start)
    except ConfigProblems as problems:
        raise InvalidRequest(str(problems)) from None


def add_broker_parser(sub) -> argparse.ArgumentParser:
    """Add ``broker`` (and ``broker install``) to ``jupyter gpuenv``'s subcommands."""
    brk = sub.add_parser(
        "broker",
        help="run the shared-host GPU broker (as root), or install it (`broker install`)",
        usage="jupyter gpuenv broker [--config FILE]\n       jupyter gpuenv broker --example-config\n"
        "       jupyter gpuenv broker install [--help]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    brk.add_argument(
        "--config",
        metavar="FILE",
        help="its configuration file, c.Broker.* settings (default: /etc/jupyter-gpuenv/broker_config.py)",
    )
    brk.add_argument(
        "--example-config",
        action="store_true",
        help="print the example configuration (environments, a policy) and exit: "
        "jupyter gpuenv broker --example-config > /etc/jupyter-gpuenv/broker_config.py",
    )
    brk.set_defaults(func=cmd_broker)
    inst = brk.add_subparsers(dest="broker_command", title="or").add_parser(
        "install",
        prog="jupyter gpuenv broker install",
        help="set this host up: configuration, kernels, images, systemd unit (as root)",
        description="Do the host's part of a shared GPU server, saying what it does: the configuration (from the "
        "example, kept if there), this Python's servers pointed at the broker, a kernel per environment, the "
        "images pulled and kernel runtimes prepared, the systemd unit written, checked, enabled and (re)started. "
        "Run it again after editing the configuration.",
    )
    inst.add_argument("--config", help="the configuration file (default: /etc/jupyter-gpuenv/broker_config.py)")
    inst.add_argument("--prefix", help="where the users' servers' Python lives (default: this one's, sys.prefix)")
    inst.add_argument(
        "--unit", help="the systemd unit file (default: /etc/systemd/system/jupyter-gpuenv-broker.service)"
    )
    inst.add_argument("--no-pull", action="store_true", help="pull no image now (the broker pulls at first start)")
    inst.add_argument("--no-start", action="store_true", help="write the unit, but neither enable nor start it")
    inst.set_defaults(func=cmd_broker_install)
    return brk
