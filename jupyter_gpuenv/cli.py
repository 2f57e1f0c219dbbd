"""``jupyter gpuenv``: list, add and remove container-kernel environments (as kernelspecs).

    jupyter gpuenv add pytorch-2.6-cuda12.4            # the flagship "PyTorch 2.6 / CUDA 12.4"
    jupyter gpuenv add mytorch --image my/torch:latest --display-name "My Torch" --gpus exclusive:1
    jupyter gpuenv list
    jupyter gpuenv remove mytorch
    jupyter gpuenv prepare-runtime 3.11                # ipykernel for images that lack it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpecManager

from . import runtime
from .config import GpuEnv
from .environments import KERNELSPEC_PREFIX, PRESETS, PROVISIONER_NAME, EnvironmentError_, parse_environment

_OPTIONS = {  # command-line flag -> environment key
    "image": "image", "display_name": "display_name", "python": "python", "gpus": "gpus",
    "gpu_mode": "gpu_mode", "shm_size": "shm_size", "memory": "memory", "cpus": "cpus", "network": "network",
    "transport": "transport", "cuda_version": "cuda_version", "kernel_runtime": "kernel_runtime",
}


def kernelspec_json(env) -> dict:
    return {
        "argv": [env.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": env.display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": PROVISIONER_NAME,
                "config": {"environment": env.name, **env.to_config()},
            },
            "gpuenv": {"environment": env.name},
        },
    }


def _install_args(args) -> dict:
    if args.sys_prefix:
        return {"prefix": sys.prefix}
    if args.prefix:
        return {"prefix": args.prefix}
    return {"user": args.user}


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
        raw["env"] = dict(item.split("=", 1) for item in args.env)
    env = parse_environment(args.name, raw, "jupyter gpuenv add")
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel.json"), "w") as f:
            json.dump(kernelspec_json(env), f, indent=1)
        path = KernelSpecManager().install_kernel_spec(folder, env.kernelspec_name, **_install_args(args))
    print(f"Added {env.display_name!r} ({env.image}, GPUs {env.gpus}) as kernel {env.kernelspec_name} in {path}")
    return 0


def cmd_list(args) -> int:
    specs = KernelSpecManager().get_all_specs()
    settings = GpuEnv()
    rows = []
    for name, spec in sorted(specs.items()):
        provisioner = spec["spec"].get("metadata", {}).get("kernel_provisioner", {})
        if provisioner.get("provisioner_name") != PROVISIONER_NAME:
            continue
        config = provisioner.get("config", {})
        rows.append((name, spec["spec"].get("display_name", ""), config.get("image", "(server config)"),
                     config.get("gpus", "all")))
    for name in sorted(settings.environments):
        env = settings.environments[name]
        rows.append((f"(config) {name}", env.get("display_name", ""), env.get("image", ""), env.get("gpus", "all")))
    if not rows:
        print("No container environments. Add one: jupyter gpuenv add pytorch-2.6-cuda12.4")
        return 0
    width = max(len(r[0]) for r in rows)
    for row in rows:
        print(f"{row[0]:<{width}}  {row[1]}  [{row[2]}; GPUs {row[3]}]")
    return 0


def cmd_remove(args) -> int:
    name = args.name if args.name.startswith(KERNELSPEC_PREFIX) else KERNELSPEC_PREFIX + args.name
    try:
        KernelSpecManager().remove_kernel_spec(name)
    except KeyError:  # NoSuchKernel is a KeyError; remove_kernel_spec raises the plain one
        print(f"No kernel {name}: `jupyter gpuenv list` shows what there is", file=sys.stderr)
        return 1
    print(f"Removed kernel {name}")
    return 0


def cmd_prepare_runtime(args) -> int:
    path = runtime.prepare(GpuEnv().kernel_runtime_dir if args.dir is None else args.dir, args.python_version)
    print(f"Kernel runtime for Python {args.python_version} ready in {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jupyter gpuenv", description="Container-kernel environments for Jupyter.")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add an environment as a kernel (a preset name, or --image)")
    add.add_argument("name", help=f"environment name; presets: {', '.join(PRESETS)}")
    add.add_argument("--image")
    add.add_argument("--display-name", dest="display_name")
    add.add_argument("--python", help="interpreter in the image (default python3)")
    add.add_argument("--gpus", help="all | none | N (a count) | device=0,1 | exclusive:N")
    add.add_argument("--gpu-mode", dest="gpu_mode", help="auto | toolkit | devices | none")
    add.add_argument("--shm-size", dest="shm_size")
    add.add_argument("--memory")
    add.add_argument("--cpus", type=float)
    add.add_argument("--network", help="none (default) | host")
    add.add_argument("--transport", help="ipc (default) | tcp (needs --network host)")
    add.add_argument("--cuda-version", dest="cuda_version")
    add.add_argument("--kernel-runtime", dest="kernel_runtime", help="auto | image | mount")
    add.add_argument("--mount", action="append", help="SOURCE:TARGET[:ro|rw], repeatable")
    add.add_argument("--env-allow", dest="env_allow", action="append", help="pass this variable through")
    add.add_argument("--env", action="append", help="NAME=VALUE set in the container, repeatable")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", help="install under this prefix")
    add.set_defaults(func=cmd_add)
    sub.add_parser("list", help="list environments").set_defaults(func=cmd_list)
    rm = sub.add_parser("remove", help="remove an environment's kernel")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)
    prep = sub.add_parser("prepare-runtime", help="install ipykernel for a Python version, for images without it")
    prep.add_argument("python_version", help="e.g. 3.11")
    prep.add_argument("--dir", help="runtime folder (default: c.GpuEnv.kernel_runtime_dir)")
    prep.set_defaults(func=cmd_prepare_runtime)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (EnvironmentError_, ValueError) as exc:
        print(f"jupyter gpuenv: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
