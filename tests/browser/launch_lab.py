"""Start JupyterLab with jupyter_gpuenv for the browser tests, optionally on recorded NVML answers.

    python tests/browser/launch_lab.py --port 8899 --token T --root-dir /tmp/x [--recording FILE.json]

With ``--recording`` the pynvml module is replaced at its boundary (``jupyter_gpuenv.nvml.load_pynvml``)
by ``tests/fake_pynvml.FakePynvml`` before the server extension loads, in this same process. The recording
file is read again whenever it changes, so a test can point a recorded GPU process at a real kernel's pid
while the server runs. Without it, the server uses the machine's real NVML (none in CI: the no-GPU state).
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
    """A FakePynvml whose recording follows a JSON file (read again when its mtime changes)."""

    def __init__(self, path: Path) -> None:
        import fake_pynvml

        self._path = path
        self._mtime = path.stat().st_mtime_ns
        self._lock = threading.Lock()
        self.fake = fake_pynvml.FakePynvml(json.loads(path.read_text()))
        self.fake.nvmlDeviceGetCount = self._count  # every read starts by counting devices

    def _count(self) -> int:
        with self._lock:
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._mtime = mtime
                self.fake.recording = json.loads(self._path.read_text())
        return type(self.fake).nvmlDeviceGetCount(self.fake)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--root-dir", required=True)
    parser.add_argument("--recording", type=Path, help="NVML recording (JSON) to serve instead of the real NVML")
    args, rest = parser.parse_known_args()

    if args.recording is not None:
        from jupyter_gpuenv import nvml

        fake = ReloadingFake(args.recording).fake
        nvml.load_pynvml = lambda: fake

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
