"""jupyterhub-singleuser with NVML replayed from a recording, for hub tests on machines without a GPU.

The hub's spawner runs this file instead of ``jupyterhub-singleuser``. It replaces
``jupyter_gpuenv.gpus.nvml.load_pynvml`` with ``FakePynvml(load($GPUENV_TEST_RECORDING))`` and then runs
JupyterHub's single-user entry point in the same process, so everything else (hub authentication, the
``/user/<name>/`` base URL, CUDA_VISIBLE_DEVICES from the spawner) is the real thing.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fake_pynvml

import fake_pynvml  # noqa: E402

from jupyter_gpuenv.gpus import nvml  # noqa: E402


def main() -> int:
    fake = fake_pynvml.FakePynvml(fake_pynvml.load(os.environ.get("GPUENV_TEST_RECORDING", "h100x2")))
    nvml.load_pynvml = lambda: fake

    from jupyterhub.singleuser import main as singleuser_main

    return singleuser_main()


if __name__ == "__main__":
    sys.exit(main())
