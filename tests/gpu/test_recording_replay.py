"""A recording made on a real GPU replays, through FakePynvml and NvmlReader, to the snapshot read live.

``tests/recordings/h100-real.json`` is written on the GPU machine by ``tests/gpu/record_nvml.py`` (see
``docs/gpu-validation.md``); the test of it is skipped while that file is absent. The round trip of the
recorder itself (over a FakePynvml, so it runs in CI) is always tested.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_pynvml  # noqa: E402
import record_nvml  # noqa: E402

from jupyter_gpuenv.gpus.nvml import NvmlReader  # noqa: E402

# GPUENV_REAL_RECORDING: check a fresh recording before it is copied into tests/recordings/
REAL = Path(os.environ.get("GPUENV_REAL_RECORDING") or TESTS / "recordings" / "h100-real.json")


def replay(recording: dict) -> dict:
    fake = fake_pynvml.FakePynvml(recording)
    reader = NvmlReader(fake, pcie=recording.get("recorded_with", {}).get("pcie", False))
    assert reader.init() is None
    snapshot = json.loads(json.dumps(reader.read().to_json()))
    snapshot.pop("sampled_at")
    return snapshot


# fields GET gpus gained after a recording was made, with the value a replay gives them
ADDED_SINCE = {  # fields a snapshot gained after the recording was made: a replay of it answers them empty
    "process": {
        "user": None,
        "gpu_utilization": None,
        "host_memory": None,
        "started_at": None,
        "command": None,
        "owner": None,
    },  # fmt: skip
}


def live(recording: dict) -> dict:
    snapshot = json.loads(json.dumps(recording["snapshot"]))
    snapshot.pop("sampled_at")
    for gpu in snapshot.get("gpus") or []:
        for process in gpu.get("processes") or []:
            for key, value in ADDED_SINCE["process"].items():
                process.setdefault(key, value)
    return snapshot


@pytest.mark.skipif(not REAL.exists(), reason="no recording from a real GPU (tests/recordings/h100-real.json)")
def test_real_recording_replays_to_the_live_snapshot():
    recording = json.loads(REAL.read_text())
    assert recording["init"] is None
    expected = live(recording)
    assert expected["available"] and expected["gpus"], "the recording holds no GPU"
    assert replay(recording) == expected


@pytest.mark.skipif(not REAL.exists(), reason="no recording from a real GPU (tests/recordings/h100-real.json)")
def test_real_recording_has_every_field_a_real_gpu_reports():
    gpu = live(json.loads(REAL.read_text()))["gpus"][0]
    for key in ("uuid", "name", "pci_bus_id", "temperature_c", "power_w", "power_limit_w"):
        assert gpu[key] is not None, key
    assert gpu["memory"]["total"] > gpu["memory"]["used"] > 0
    assert gpu["clocks_mhz"]["sm"] and gpu["clocks_mhz"]["memory"]


@pytest.mark.parametrize("name", ["h100x2", "mig"])
def test_recorder_round_trip(name):
    """Recording a FakePynvml through the recorder's proxy gives a recording that replays identically."""
    source = fake_pynvml.load(name)
    proxy = record_nvml.RecordingNvml(fake_pynvml.FakePynvml(source))
    reader = NvmlReader(proxy, pcie=True)
    assert reader.init() is None
    snapshot = json.loads(json.dumps(reader.read().to_json()))
    recording = json.loads(json.dumps({**proxy.recording, "recorded_with": {"pcie": True}, "snapshot": snapshot}))
    assert replay(recording) == live(recording)
