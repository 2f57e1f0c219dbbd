"""``jupyter gpuenv``: list, add and remove container-kernel environments (as kernelspecs).

    jupyter gpuenv add pytorch-2.6-cuda12.4            # the flagship "PyTorch 2.6 / CUDA 12.4"
    jupyter gpuenv add mytorch --image my/torch:latest --display-name "My Torch" --gpus exclusive:1
    jupyter gpuenv list
    jupyter gpuenv remove mytorch
    jupyter gpuenv prepare-runtime 3.11                # ipykernel for images that lack it
    jupyter gpuenv pull mytorch                        # pull an environment's image now, with a progress bar
    jupyter gpuenv usage --since 2026-11-01            # GPU-hours per user (or --by notebook)
    sudo jupyter gpuenv broker install                 # a shared host's GPU broker (cli.broker)

The server's configuration (``c.GpuEnv`` in jupyter_server_config.py) is loaded as the server loads it, so
``list`` shows configured environments and ``prepare-runtime`` fills the configured runtime folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import time

from jupyter_client.kernelspec import KernelSpecManager

from jupyter_gpuenv import engines
from jupyter_gpuenv._version import __version__
from jupyter_gpuenv.cli import broker as cli_broker
from jupyter_gpuenv.cli.usage import add_usage_parser
from jupyter_gpuenv.engines import base as engine
from jupyter_gpuenv.environments import kernelspecs, runtime
from jupyter_gpuenv.environments.definition import PRESETS, parse_environment
from jupyter_gpuenv.errors import GpuEnvError, InvalidEnvironment
from jupyter_gpuenv.pulls import progress as pulls
from jupyter_gpuenv.server.settings import server_settings

_OPTIONS = {  # command-line flag -> environment key
    "image": "image",
    "display_name": "display_name",
    "python": "python",
    "gpus": "gpus",
    "gpu_mode": "gpu_mode",
    "shm_size": "shm_size",
    "memory": "memory",
    "cpus": "cpus",
    "network": "network",
    "transport": "transport",
    "cuda_version": "cuda_version",
    "kernel_runtime": "kernel_runtime",
}


class CliError(Exception):
    """A sentence for the person at the terminal; exit status 2."""


def _install_args(args) -> dict:
    """Where the kernelspec goes: as asked, else the active virtual environment, else the user's own folder
    (root's default stays the system folder)."""
    if args.sys_prefix:
        return {"prefix": sys.prefix}
    if args.prefix:
        return {"prefix": args.prefix}
    if args.user:
        return {"user": True}
    if sys.prefix != sys.base_prefix:
        return {"prefix": sys.prefix}
    return {"user": os.getuid() != 0}


def _variables(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--env {item!r} must be NAME=VALUE")
        out[name] = value
    return out


def cmd_add(args) -> int:
    raw = dict(PRESETS.get(args.name, {}))
    for flag, key in _OPTIONS.items():
        value = getattr(args, flag)
        if value is not None:
            raw[key] = value
    if args.mount:
        raw["mounts"] = args.mount
    if args.env_allow:
        raw["env_allow"] = args.env_allow
    if args.env:
        raw["env"] = _variables(args.env)
    if args.broker:  # only the name: the broker's definition applies
        if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", args.name):
            raise CliError(f"{args.name!r} is not an environment name (lower-case letters, digits, '.', '_', '-')")
        found = cli_broker.environment_entry(server_settings(), args.name, args.broker_config)
        spec = kernelspecs.named_kernelspec_json(args.name, args.display_name or found["display_name"])
        gpu = kernelspecs.wants_gpus(found.get("gpus"))
        described = f"{spec['display_name']!r} (the environment {args.name!r} as the GPU broker defines it)"
    else:
        env = parse_environment(args.name, raw, "jupyter gpuenv add")
        spec = kernelspecs.kernelspec_json(env)
        gpu = env.gpus.wants_gpus
        described = f"{env.display_name!r} ({env.image}, GPUs {env.gpus})"
        if env.gpus.kind == "all" and args.gpus is None:
            _warn_if_no_gpu(args.name)
    try:
        path = kernelspecs.install(spec, args.name, gpu=gpu, **_install_args(args))
    except PermissionError as exc:
        raise CliError(
            f"cannot write the kernelspec to {exc.filename}: add --user (for you alone), --sys-prefix (this "
            "Python environment), or run it as a user who may write there"
        ) from None
    print(f"Added {described} as kernel {kernelspecs.kernelspec_name(args.name)} in {path}")
    return 0


def _warn_if_no_gpu(name: str) -> None:
    """`add` without --gpus asks for every GPU: on a machine with none, say so now, not at the kernel's start."""
    from jupyter_gpuenv.gpus.nvml import NvmlReader, load_pynvml

    try:
        reader = NvmlReader(load_pynvml())
        reason = reader.init()
        count = 0 if reason else reader.nvml.nvmlDeviceGetCount()
        reader.shutdown()
    except Exception as exc:  # no nvidia-ml-py, a broken driver: either way, no GPU to give
        reason, count = str(exc), 0
    if count == 0:
        print(
            f"jupyter gpuenv add: warning: this machine has no GPU ({reason or 'NVML sees none'}), and {name!r} asks "
            "for all GPUs (the default), so its kernel will be refused here: add --gpus none for a CPU kernel",
            file=sys.stderr,
        )


def cmd_list(args) -> int:
    settings = server_settings()
    specs = KernelSpecManager().get_all_specs()
    listing = cli_broker.Listing(settings)
    rows = []
    for item in kernelspecs.defined_environments(settings, specs):
        env = item.environment
        where = item.kernelspec or "(no kernelspec)"
        named = listing.describe(item.name) if env is None and cli_broker.named_only(specs, item.kernelspec) else None
        if named is not None:
            rows.append((item.name, where, named))
        elif env is None:
            rows.append((item.name, where, f"invalid: {item.error}"))
        else:
            rows.append((item.name, where, f"{env.display_name}  [{env.image}; GPUs {env.gpus}; {item.source}]"))
    if not rows:
        print("No container environments. Add one: jupyter gpuenv add pytorch-2.6-cuda12.4")
        return 0
    width = [max(len(r[i]) for r in rows) for i in (0, 1)]
    for name, where, what in rows:
        print(f"{name:<{width[0]}}  {where:<{width[1]}}  {what}")
    return 0


def cmd_remove(args) -> int:
    name = kernelspecs.kernelspec_name(args.name)
    try:
        KernelSpecManager().remove_kernel_spec(name)
    except KeyError:  # NoSuchKernel is a KeyError; remove_kernel_spec raises the plain one
        print(f"No kernel {name}: `jupyter gpuenv list` shows what there is", file=sys.stderr)
        return 1
    except PermissionError as exc:
        raise CliError(f"cannot remove {exc.filename}: it belongs to another user (or root)") from None
    print(f"Removed kernel {name}")
    return 0


def cmd_prepare_runtime(args) -> int:
    root = server_settings().kernel_runtime_dir if args.dir is None else args.dir
    try:
        path = runtime.prepare(root, args.python_version)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"Kernel runtime for Python {args.python_version} ready in {path}")
    return 0


def cmd_pull(args) -> int:
    settings = server_settings()
    if args.broker or settings.broker:
        return cli_broker.pull(cli_broker.broker_url(settings), args.name, _progress_bar)
    specs = KernelSpecManager().get_all_specs()
    found = kernelspecs.defined_environments(settings, specs)
    match = [d for d in found if d.name == args.name]
    if not match:
        known = ", ".join(d.name for d in found) or "none"
        raise CliError(f"no environment {args.name!r} (defined: {known}); `jupyter gpuenv list` shows them")
    if match[0].environment is None:
        if cli_broker.named_only(specs, match[0].kernelspec):
            raise CliError(f"{args.name!r} is the GPU broker's: `jupyter gpuenv pull {args.name} --broker` asks it")
        raise CliError(str(match[0].error))
    image = match[0].environment.image
    docker = engines.connect(settings)
    try:
        return asyncio.run(_pull(docker, image))
    except KeyboardInterrupt:
        engines.cancel_pulls()  # the engine drops the pull as its connection closes
        print(f"\nPull of {image} interrupted; layers already downloaded are kept", file=sys.stderr)
        return 130


async def _pull(docker: engine.Engine, image: str) -> int:
    """Pull with a progress bar: redrawn in place on a terminal, a line every few seconds in a log."""
    if (await docker.image_facts(image)).present:
        print(f"{image} is already on the Docker engine")
        return 0
    tty = sys.stdout.isatty()
    print(f"Pulling {image}", flush=True)
    await docker.pull(image, _progress_bar(image))
    print(f"{chr(10) if tty else ''}Pulled {image}")
    return 0


def _progress_bar(image: str):
    """A pull's progress: redrawn in place on a terminal, a line every few seconds in a log."""
    tty, printed = sys.stdout.isatty(), [0.0]

    def show(p: pulls.PullProgress) -> None:
        filled = round(24 * (p.percent or 0) / 100)
        line = f"{image} [{'#' * filled}{'.' * (24 - filled)}] {pulls.describe(p)}"
        if tty:
            width = shutil.get_terminal_size().columns - 1
            print(f"\r{line[:width]:<{width}}", end="", flush=True)
        elif time.monotonic() - printed[0] >= 2:
            printed[0] = time.monotonic()
            print(line, flush=True)

    return show


ADD_EXAMPLES = """
examples:
  jupyter gpuenv add pytorch-2.6-cuda12.4                      a preset (PyTorch 2.6 / CUDA 12.4, all GPUs)
  jupyter gpuenv add mytorch --image my/torch:1 --gpus exclusive:1 --display-name "My Torch"
  jupyter gpuenv add cpu --image python:3.12-slim --gpus none  a CPU kernel
  sudo jupyter gpuenv add pytorch --broker --sys-prefix        a shared host's environment, for every user
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jupyter gpuenv",
        description="Container-kernel environments for Jupyter: notebooks in PyTorch/CUDA containers, with GPUs.",
        epilog="`jupyter gpuenv COMMAND --help` says more about each command.",
    )
    p.add_argument("--version", action="version", version=f"jupyter_gpuenv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    add = sub.add_parser(
        "add",
        help="add an environment as a kernel (a preset name, or --image)",
        description="Add a container environment as a Jupyter kernel (a kernelspec): a preset, one defined by "
        "the options below, or (--broker) one that a shared host's GPU broker defines.",
        epilog=ADD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name", help=f"environment name; presets: {', '.join(PRESETS)}")
    add.add_argument(
        "--image", help="the Docker image the kernel runs in (e.g. pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime)"
    )
    add.add_argument("--display-name", dest="display_name", help="the name in Lab's launcher (default: the name)")
    add.add_argument("--python", help="interpreter in the image (default: python3)")
    add.add_argument(
        "--gpus",
        help="all | none | N (a count) | device=0,1 | exclusive:N (GPUs no other kernel gets). Default: all "
        "(a preset's own otherwise); on a machine without GPU, use none",
    )
    add.add_argument("--gpu-mode", dest="gpu_mode", help="auto (default) | toolkit | devices | none")
    add.add_argument(
        "--shm-size",
        dest="shm_size",
        help="shared memory, e.g. 8g (default: 2g; PyTorch DataLoader needs more than Docker's 64m)",
    )
    add.add_argument("--memory", help="memory limit of the kernel's container, e.g. 32g (default: none)")
    add.add_argument("--cpus", type=float, help="CPU limit, in CPUs, e.g. 4 or 0.5 (default: none)")
    add.add_argument("--network", help="none (default) | host")
    add.add_argument("--transport", help="ipc (default) | tcp (needs --network host)")
    add.add_argument(
        "--cuda-version",
        dest="cuda_version",
        help="the CUDA version the image needs, e.g. 12.4, checked against the driver before a start (default: "
        "read from the image's CUDA_VERSION)",
    )
    add.add_argument("--kernel-runtime", dest="kernel_runtime", help="auto (default) | image | mount")
    add.add_argument("--mount", action="append", help="SOURCE:TARGET[:ro|rw], repeatable")
    add.add_argument("--env-allow", dest="env_allow", action="append", help="pass this variable through, repeatable")
    add.add_argument("--env", action="append", help="NAME=VALUE set in the container, repeatable")
    add.add_argument(
        "--broker",
        action="store_true",
        help="only name the environment: the shared host's GPU broker defines it (asked at c.GpuEnv.broker, "
        f"default unix://{cli_broker.BROKER_SOCKET}); its display name is the broker's unless --display-name",
    )
    add.add_argument(
        "--broker-config",
        dest="broker_config",
        help="with --broker, while the broker is not running: check the name in its configuration file instead "
        "(default: /etc/jupyter-gpuenv/broker_config.py)",
    )
    where = add.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", help="install under this prefix")
    add.set_defaults(func=cmd_add)
    sub.add_parser(
        "list", help="list environments", description="List the container environments: kernelspecs and configured."
    ).set_defaults(func=cmd_list)
    rm = sub.add_parser(
        "remove",
        help="remove an environment's kernel",
        description="Remove the kernel (kernelspec) of an environment; the image stays on the engine.",
    )
    rm.add_argument("name", help="environment name, or its kernel's (gpuenv-NAME): `jupyter gpuenv list` shows them")
    rm.set_defaults(func=cmd_remove)
    prep = sub.add_parser("prepare-runtime", help="install ipykernel for a Python version, for images without it")
    prep.add_argument("python_version", help="e.g. 3.11")
    prep.add_argument("--dir", help="runtime folder (default: c.GpuEnv.kernel_runtime_dir)")
    prep.set_defaults(func=cmd_prepare_runtime)
    pull = sub.add_parser("pull", help="pull an environment's image now (progress bar; exit 2 with why if it fails)")
    pull.add_argument("name", help="environment name (`jupyter gpuenv list`)")
    pull.add_argument(
        "--broker",
        action="store_true",
        help="ask the shared host's GPU broker to pull it (implied when c.GpuEnv.broker is set)",
    )
    pull.set_defaults(func=cmd_pull)
    add_usage_parser(sub)
    cli_broker.add_broker_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:  # a bare `jupyter gpuenv`: what it can do, not an argparse error
        p.print_help()
        return 0
    try:
        return args.func(args)
    except (CliError, InvalidEnvironment, GpuEnvError) as exc:
        print(f"jupyter gpuenv: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
