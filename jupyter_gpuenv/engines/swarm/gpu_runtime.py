"""The OCI runtime wrapper a GPU host registers in its daemon.json, so Swarm tasks get their GPUs.

Swarm services cannot be given devices (swarmkit #1244). What Swarm does give a task is the list of GPUs it
reserved for it, in the task's environment: ``DOCKER_RESOURCE_GPU-H200=GPU-<uuid>,GPU-<uuid>``. dockerd hands
the container to its runtime as an OCI bundle; registered as the default runtime, this wrapper, on ``create``
and ``run``, reads the bundle's ``config.json``, adds exactly the device nodes of those UUIDs (plus the
driver's control devices), the device-cgroup rules that allow them, and the driver's libraries read-only;
writes it back atomically; then execs the real runc with the same arguments. Every other subcommand (state,
start, kill, delete, …) goes to runc unchanged. It is the isolation of this project's ``devices`` mode.

    {"runtimes": {"gpuenv": {"path": "/usr/local/bin/gpuenv-runtime"}}, "default-runtime": "gpuenv"}

Settings: a JSON file, ``$GPUENV_RUNTIME_CONFIG`` or /etc/jupyter-gpuenv/runtime.json, all keys optional:
``runc`` (the real one; default: the first ``runc`` on PATH that is not this program), ``gpus`` (UUID →
device node; default: read from the driver, /proc/driver/nvidia/gpus/*/information), ``control_devices``,
``driver`` ({source, target}; default /usr/local/nvidia, mounted if it exists), ``resource_prefix``.

Standard library only, and importing nothing of the project: it runs on every container start of the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONFIG_ENV = "GPUENV_RUNTIME_CONFIG"
DEFAULT_CONFIG = "/etc/jupyter-gpuenv/runtime.json"
RESOURCE_PREFIX = "DOCKER_RESOURCE_GPU"  # Swarm's DOCKER_RESOURCE_<KIND>, for every kind named GPU…
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
DRIVER = "/usr/local/nvidia"
DRIVER_PROC = Path("/proc/driver/nvidia/gpus")
# runc's global options that take a value: the subcommand is the first word that is not one of them
_VALUED = {"--root", "--log", "--log-format", "--criu", "--rootless"}


@dataclass(frozen=True)
class Device:
    path: str  # inside the container
    major: int
    minor: int
    mode: int  # permission bits, as on the host
    uid: int
    gid: int


def subcommand_and_bundle(argv: list[str]) -> tuple[str, str]:
    """(subcommand, bundle folder) of a runc command line (argv without the program); bundle "" if not given."""
    i, sub = 0, ""
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            sub = arg
            break
        i += 2 if arg in _VALUED else 1
    bundle = ""
    rest = argv[i + 1 :]
    for j, arg in enumerate(rest):
        if arg in ("--bundle", "-b") and j + 1 < len(rest):
            bundle = rest[j + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    return sub, bundle


def assigned_gpus(env: list[str], prefix: str = RESOURCE_PREFIX) -> list[str]:
    """The UUIDs Swarm reserved for the task, from its environment (one variable per GPU kind)."""
    uuids = []
    for entry in env:
        name, _, value = entry.partition("=")
        if name.startswith(prefix):
            uuids += [u for u in value.split(",") if u]
    return uuids


def with_gpus(spec: dict, devices: list[Device], driver: tuple[str, str] | None) -> dict:
    """``spec`` (an OCI config) with ``devices`` in it, allowed in its device cgroup, and the driver mounted."""
    linux = spec.setdefault("linux", {})
    present = {d.get("path") for d in linux.setdefault("devices", []) or []}
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for d in devices:
        if d.path not in present:
            linux["devices"].append(
                {
                    "path": d.path,
                    "type": "c",
                    "major": d.major,
                    "minor": d.minor,
                    "fileMode": d.mode,
                    "uid": d.uid,
                    "gid": d.gid,
                }
            )
        rules.append({"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"})
    if driver:
        source, target = driver
        spec.setdefault("mounts", []).append(
            {"destination": target, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev"]}
        )
        env = spec.setdefault("process", {}).setdefault("env", [])
        libs = f"{target}/lib64:{target}/lib"
        for i, entry in enumerate(env):
            if entry.startswith("LD_LIBRARY_PATH="):
                env[i] = f"{entry}:{libs}" if entry != "LD_LIBRARY_PATH=" else f"LD_LIBRARY_PATH={libs}"
                break
        else:
            env.append(f"LD_LIBRARY_PATH={libs}")
    return spec


def device(host_path: str) -> Device:
    st = os.stat(host_path)
    if not stat.S_ISCHR(st.st_mode):
        raise RuntimeError(f"{host_path} is not a character device")
    return Device(
        f"/dev/{os.path.basename(host_path)}",
        os.major(st.st_rdev),
        os.minor(st.st_rdev),
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
    )


def driver_gpus() -> dict[str, str]:
    """UUID → /dev/nvidia<minor>, as the loaded driver reports them (no NVML, no nvidia-smi: this is fast)."""
    found = {}
    for info in DRIVER_PROC.glob("*/information"):
        fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        uuid, minor = fields.get("GPU UUID", "").strip(), fields.get("Device Minor", "").strip()
        if uuid and minor.isdigit():
            found[uuid] = f"/dev/nvidia{minor}"
    return found


def settings() -> dict:
    path = os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if CONFIG_ENV in os.environ:
            raise
        return {}


def real_runc(configured: str | None) -> str:
    if configured:
        return configured
    me = os.path.realpath(sys.argv[0])
    for folder in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep):
        candidate = os.path.join(folder, "runc")
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != me:
            return candidate
    raise RuntimeError('no runc found on PATH; set "runc" in the runtime\'s settings')


def prepare(bundle: str, conf: dict) -> None:
    """Give the container in ``bundle`` its GPUs, if Swarm assigned it any."""
    config = Path(bundle or ".") / "config.json"
    spec = json.loads(config.read_text())
    uuids = assigned_gpus(spec.get("process", {}).get("env", []), conf.get("resource_prefix", RESOURCE_PREFIX))
    if not uuids:
        return
    known = conf.get("gpus") or driver_gpus()
    missing = [u for u in uuids if u not in known]
    if missing:  # refusing is safer than starting a kernel on a GPU it was not given, or on none
        raise RuntimeError(f"this host has no GPU {', '.join(missing)} (Swarm assigned it)")
    controls = [p for p in conf.get("control_devices", CONTROL_DEVICES) if os.path.exists(p)]
    devices = [device(known[u]) for u in uuids] + [device(p) for p in controls]
    drv = conf.get("driver", {"source": DRIVER, "target": DRIVER})
    driver = (drv["source"], drv["target"]) if drv and os.path.isdir(drv["source"]) else None
    write_atomically(config, with_gpus(spec, devices, driver))


def write_atomically(path: Path, spec: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = settings()
        sub, bundle = subcommand_and_bundle(argv)
        if sub in ("create", "run"):
            prepare(bundle, conf)
        runc = real_runc(conf.get("runc"))
    except Exception as exc:  # noqa: BLE001 - runc's caller shows stderr: the container does not start
        print(f"gpuenv-runtime: {exc}", file=sys.stderr)
        sys.exit(1)
    os.execv(runc, [runc, *argv])


if __name__ == "__main__":
    main()
