"""The GPU broker as the hub-managed service of the broker tests, with NVML replayed from a recording.

    broker_fake_nvml.py --config FILE          the service: keeps one broker running (below)
    broker_fake_nvml.py --run --config FILE    one broker: ``jupyter gpuenv broker --config FILE``, in-process

``--run`` replaces ``jupyter_gpuenv.gpus.nvml.load_pynvml`` with ``FakePynvml(load($GPUENV_TEST_RECORDING))`` (and the
checkpoint API with ``fake_cuda.FakeCheckpoint`` acting on it), as
tests/hub/singleuser_fake_nvml.py does for single-user servers, and runs ``jupyter_gpuenv.cli.main.main``. While the
file $GPUENV_BROKER_GPU_PROCESSES exists (``{"<gpu index>": [{"pid": ..., "usedGpuMemory": ...}]}``), the GPUs it
names have those processes instead of the recording's: a test puts a real process of a kernel's container on a GPU.

Without ``--run`` it is what systemd's ``Restart=always`` is to a broker unit: it runs ``--run`` as a child
(with a unit's file limit, FILE_LIMIT, and the test seam GPUENV_BROKER_RACE_DELAY=RACE_DELAY in its
environment) and starts it again as soon as it ends, so the fault tests can kill the broker (its pid is written to
$GPUENV_BROKER_PIDFILE) and have it back within a second, instead of after the hub's 30 s service poll.
While the file $GPUENV_BROKER_HOLD exists it starts none: the broker is down. SIGTERM or SIGINT (the hub
stopping its services) stop the child with SIGTERM and then itself. Either way the child inherits the
environment the hub gives its services (JUPYTERHUB_API_URL, JUPYTERHUB_API_TOKEN, ...).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT = 20
# What a broker unit of systemd gets (LimitNOFILE's soft default): the hostile tests hold connections against it.
FILE_LIMIT = 1024
# The broker's test seam (issue 20): it waits this long between checking and using what a user controls, for
# kernel ids starting with "race-" only, so that a test can swap a folder in that window every time.
RACE_DELAY = "2"


def limit_files() -> None:
    """In the broker's child, before it runs: at most FILE_LIMIT open files, soft and hard."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


def run(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fake_pynvml
    import fake_cuda
    import fake_pynvml

    from jupyter_gpuenv.cli import main as cli
    from jupyter_gpuenv.gpus import nvml
    from jupyter_gpuenv.parking import checkpoint

    fake = fake_pynvml.FakePynvml(fake_pynvml.load(os.environ.get("GPUENV_TEST_RECORDING", "h100x2")))
    driver = fake_cuda.FakeCheckpoint(fake)  # parking: the checkpoint API, acting on this NVML
    placed = os.environ.get("GPUENV_BROKER_GPU_PROCESSES")
    if placed:
        fake.nvmlDeviceGetCount = with_placed_processes(fake, Path(placed), parked=lambda: set(driver.saved))
    nvml.load_pynvml = lambda: fake
    checkpoint.load_driver = lambda: driver
    return cli.main(["broker", *argv])


def with_placed_processes(fake, path: Path, parked=set):
    """nvmlDeviceGetCount (once per sample) that first gives the GPUs the processes ``path`` names, if it exists,
    less those the fake driver has checkpointed (``parked()``: their pids), as the real driver takes them off."""
    key = "nvmlDeviceGetComputeRunningProcesses"
    recorded = [device.get(key, []) for device in fake.recording["devices"]]
    count = fake.nvmlDeviceGetCount

    def placing() -> int:
        try:
            placed = json.loads(path.read_text())
        except (OSError, ValueError):  # none, or half written: the recording's
            placed = {}
        for index, device in enumerate(fake.recording["devices"]):
            device[key] = [p for p in placed.get(str(index), recorded[index]) if p.get("pid") not in parked()]
        return count()

    return placing


def supervise(argv: list[str]) -> int:
    hold = os.environ.get("GPUENV_BROKER_HOLD")
    pidfile = os.environ.get("GPUENV_BROKER_PIDFILE")
    child: subprocess.Popen | None = None
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 0.2
    while not stopping:
        while hold and os.path.exists(hold) and not stopping:
            time.sleep(0.05)
        if stopping:
            break
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, __file__, "--run", *argv],
            env={**os.environ, "GPUENV_BROKER_RACE_DELAY": RACE_DELAY},
            preexec_fn=limit_files,
        )
        if pidfile:
            tmp = f"{pidfile}.tmp"
            Path(tmp).write_text(str(child.pid))
            os.replace(tmp, pidfile)
        code = child.wait()
        print(f"broker_fake_nvml: broker {child.pid} ended with {code}", file=sys.stderr, flush=True)
        if stopping:
            break
        # a broker that cannot start at all (a bad configuration) is retried, but not in a tight loop
        backoff = 0.2 if time.monotonic() - started > 5 else min(backoff * 2, 5.0)
        time.sleep(backoff)
    if child is not None and child.poll() is None:
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--run"]:
        sys.exit(run(args[1:]))
    sys.exit(supervise(args))
