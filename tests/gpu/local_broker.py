"""The broker on recorded NVML (two H100s), for a dry run of prove_shared_host.py without a GPU."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_pynvml  # noqa: E402

from jupyter_gpuenv.cli.main import main  # noqa: E402
from jupyter_gpuenv.gpus import nvml  # noqa: E402

fake = fake_pynvml.FakePynvml(fake_pynvml.load("h100x2"))
nvml.load_pynvml = lambda: fake
sys.exit(main(sys.argv[1:]))
