"""Start JupyterLab with jupyter_gpuenv for the browser tests, optionally on recorded NVML answers.

    python tests/browser/launch_lab.py --port 8899 --token T --root-dir /tmp/x [--recording FILE.json]

With ``--recording`` the pynvml module is replaced at its boundary (``jupyter_gpuenv.gpus.nvml.load_pynvml``)
by ``tests/fake_pynvml.FakePynvml`` before the server extension loads, in this same process. The recording
file is read again whenever it changes, so a test can point a recorded GPU process at a real kernel's pid
while the server runs. Without it, the server uses the machine's real NVML (none in CI: the no-GPU state).

With ``--recording`` the driver's checkpoint API (``jupyter_gpuenv.parking.checkpoint.load_driver``) is also replaced,
by one ``tests/fake_cuda.FakeCheckpoint`` acting on that same fake NVML: a park takes the kernel's pid off its
GPU, a resume puts it back. A reload of the recording keeps off the pids that driver holds checkpointed (as
the real driver would). A test makes the driver's next step fail by writing ``FILE.driver.json`` next to the
recording, ``{"fail": {"restore": "CUDA_ERROR_OUT_OF_MEMORY"}}``: it is applied at the next sample, then
deleted (``LabServer.fail_next_driver_step``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))


class ReloadingFake:
    """A FakePynvml whose recording follows a JSON file (read again when its mtime changes), and the fake
    checkpoint driver that acts on it."""

    def __init__(self, path: Path) -> None:
        import fake_cuda
        import fake_pynvml

        self._path = path
        self._mtime = path.stat().st_mtime_ns
        self._lock = threading.Lock()
        self.fake = fake_pynvml.FakePynvml(json.loads(path.read_text()))
        self.fake.nvmlDeviceGetCount = self._count  # every read starts by counting devices
        self.driver = fake_cuda.FakeCheckpoint(self.fake)
        self._process_lists = fake_cuda.PROCESS_LISTS
        self._control = path.with_suffix(".driver.json")

    def _count(self) -> int:
        with self._lock:
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._mtime = mtime
                recording = json.loads(self._path.read_text())
                parked = set(self.driver.saved)  # checkpointed: off their GPU, whatever the file says
                for device in recording.get("devices", []):
                    for key in self._process_lists:
                        if isinstance(device.get(key), list):  # not {"error": ...}
                            device[key] = [p for p in device[key] if p.get("pid") not in parked]
                self.fake.recording = recording
            if self._control.exists():
                self.driver.fail.update(json.loads(self._control.read_text()).get("fail", {}))
                self._control.unlink()  # applied once: the test sees it gone
        return type(self.fake).nvmlDeviceGetCount(self.fake)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--root-dir", required=True)
    parser.add_argument("--recording", type=Path, help="NVML recording (JSON) to serve instead of the real NVML")
    args, rest = parser.parse_known_args()

    if args.recording is not None:
        from jupyter_gpuenv.gpus import nvml
        from jupyter_gpuenv.parking import checkpoint

        reloading = ReloadingFake(args.recording)
        nvml.load_pynvml = lambda: reloading.fake
        checkpoint.load_driver = lambda: reloading.driver

    from jupyterlab.labapp import LabApp

    root = Path(args.root_dir)
    state = root.parent / f"{root.name}-lab-state"
    (state / "workspaces").mkdir(parents=True, exist_ok=True)
    # no "Would you like to get notified about official Jupyter news?" toast over the page
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    LabApp.launch_instance(
        [
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={args.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={args.token}",
            f"--ServerApp.root_dir={root}",
            "--FileContentsManager.delete_to_trash=False",
            f"--LabApp.user_settings_dir={state / 'settings'}",
            f"--LabApp.workspaces_dir={state / 'workspaces'}",
            "--GpuEnv.sample_interval=0.5",
            *rest,
        ]
    )


if __name__ == "__main__":
    main()
