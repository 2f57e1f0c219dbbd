"""The pure NVML module against recorded answers of real devices."""

from types import SimpleNamespace

import fake_pynvml
import pytest

from jupyter_gpuenv.gpus.nvml import LibraryGone, NvmlReader, process_utilization
from jupyter_gpuenv.gpus.visibility import parse

GiB = 1024**3


def reader_for(name, **kw):
    fake = fake_pynvml.FakePynvml(fake_pynvml.load(name))
    reader = NvmlReader(fake, **kw)
    assert reader.init() is None
    return reader, fake


def test_two_gpus_every_field():
    reader, _ = reader_for("h100x2")
    snap = reader.read()
    assert snap.available and snap.driver_version == "580.159.04" and snap.cuda_driver_version == "13.0"
    assert [g.index for g in snap.gpus] == [0, 1]
    g0 = snap.gpus[0]
    assert g0.name == "NVIDIA H100 80GB HBM3"
    assert g0.uuid.startswith("GPU-5f3c") and g0.pci_bus_id == "00000000:18:00.0"
    assert g0.memory.total == 85520809984 and g0.memory.used + g0.memory.free == g0.memory.total
    assert (g0.utilization.gpu, g0.utilization.memory) == (87, 43)
    assert g0.temperature_c == 54 and g0.power_w == pytest.approx(312.456) and g0.power_limit_w == 700
    assert (g0.clocks_mhz.sm, g0.clocks_mhz.memory) == (1980, 2619)
    assert g0.mig_mode is False and g0.error is None
    assert [(p.pid, p.used_memory, p.type) for p in g0.processes] == [
        (4242, 4 * GiB, "compute"),
        (4343, 2 * GiB, "compute"),
    ]
    assert snap.gpus[1].processes == []


def test_not_supported_field_is_null_not_an_error():
    reader, _ = reader_for("h100x2")
    snap = reader.read()
    assert all(g.fan_speed_pct is None for g in snap.gpus)
    assert snap.to_json()["gpus"][0]["fan_speed_pct"] is None


def test_pcie_is_read_only_when_asked():
    assert reader_for("h100x2")[0].read().gpus[0].pcie_mb_s is None
    assert reader_for("h100x2", pcie=True)[0].read().gpus[0].pcie_mb_s == {"tx": 2.0, "rx": 1.0}


def test_mig_devices_and_their_processes():
    reader, _ = reader_for("mig")
    gpu = reader.read().gpus[0]
    assert gpu.mig_mode is True
    assert gpu.utilization.gpu is None  # NotSupported with MIG on
    assert [d.index for d in gpu.mig_devices] == [0, 2]  # slot 1 is empty
    assert gpu.mig_devices[0].name.endswith("3g.40gb") and gpu.mig_devices[0].memory.used == 2 * GiB
    assert [(p.pid, p.gpu_instance) for p in gpu.processes] == [(5151, "MIG-11111111-aaaa-5bbb-8ccc-dddddddddddd")]


def test_no_driver_gives_a_reason_a_user_understands():
    fake = fake_pynvml.FakePynvml(fake_pynvml.load("no-driver"))
    reason = NvmlReader(fake).init()
    assert "NVML Shared Library Not Found" in reason and "no NVIDIA driver" in reason


def test_gpu_lost_is_a_per_gpu_error():
    reader, fake = reader_for("h100x2")
    fake.recording["devices"][1]["error"] = "GpuIsLost"
    snap = reader.read()
    assert snap.gpus[0].error is None and snap.gpus[0].memory.used > 0
    assert snap.gpus[1].index == 1 and "GPU is lost" in snap.gpus[1].error and snap.gpus[1].memory.used is None


def test_driver_vanishing_raises_library_gone():
    reader, fake = reader_for("h100x2")
    fake.recording["init"] = "DriverNotLoaded"
    with pytest.raises(LibraryGone):
        reader.read()


@pytest.mark.parametrize(
    "spec, shown",
    [
        ("all", [0, 1]),
        ("1", [1]),
        ("GPU-9a8b7c6d", [1]),
        ("GPU-5f3c1a2b-0000-4c1e-9a7d-1b2c3d4e5f60,1", [0, 1]),
        ("none", []),
        ("void", []),
        ("", []),
    ],
)
def test_visibility(spec, shown):
    reader, _ = reader_for("h100x2")
    assert [g.index for g in reader.read(parse(spec).allows).gpus] == shown


def test_memory_used_is_what_nvidia_smi_shows_on_a_real_h100():
    """v1 memory info counts the driver's reserve as used (480 MiB on an idle H100); nvidia-smi does not."""
    recording = fake_pynvml.load("h100-real")  # two H100, one running a 4 GiB kernel, with nvidia-smi beside
    reader = NvmlReader(fake_pynvml.FakePynvml(recording))
    assert reader.init() is None
    gpus = reader.read().gpus
    MiB = 1024**2
    assert len(gpus) == len(recording["extra"]["nvidia_smi"]) == 2
    for gpu, smi in zip(gpus, recording["extra"]["nvidia_smi"], strict=False):
        assert gpu.uuid == smi["uuid"]
        assert abs(gpu.memory.used / MiB - int(smi["memory.used"])) <= 1
        assert abs(gpu.memory.reserved / MiB - int(smi["memory.reserved"])) <= 1
        assert round(gpu.memory.total / MiB) == int(smi["memory.total"])


def test_drivers_without_v2_memory_info_fall_back_to_v1():
    gpu = reader_for("h100x2")[0].read().gpus[0]  # a recording with no v2 answer
    assert gpu.memory.used == 6 * GiB + 524288000 and gpu.memory.reserved is None


def test_each_process_has_its_gpu_utilization_and_an_idle_gpu_none():
    """nvitop's GPU % per process; NVML's NotFound on an idle GPU is no error, only no value."""
    reader, _ = reader_for("h100x2")
    gpus = reader.read().gpus
    assert [(p.pid, p.gpu_utilization) for p in gpus[0].processes] == [(4242, 71), (4343, 16)]
    assert gpus[1].error is None


def test_process_utilization_takes_each_pids_newest_sample():
    sample = lambda pid, t, sm: SimpleNamespace(pid=pid, timeStamp=t, smUtil=sm)  # noqa: E731
    by_pid, newest = process_utilization([sample(1, 10, 50), sample(1, 30, 5), sample(2, 20, 90)])
    assert by_pid == {1: 5, 2: 90} and newest == 30
    assert process_utilization([]) == ({}, 0)


def test_a_process_not_in_the_samples_has_no_utilization_and_the_next_read_asks_from_the_newest():
    reader, fake = reader_for("h100x2")
    fake.recording["devices"][0]["nvmlDeviceGetProcessUtilization"] = [
        {"pid": 4242, "timeStamp": 5, "smUtil": 40, "memUtil": 1}
    ]
    asked = []
    real = fake.nvmlDeviceGetProcessUtilization
    fake.nvmlDeviceGetProcessUtilization = lambda handle, since: asked.append(since) or real(handle, since)
    gpu = reader.read().gpus[0]
    assert [(p.pid, p.gpu_utilization) for p in gpu.processes] == [(4242, 40), (4343, None)]
    reader.read()
    assert asked[0] == 0 and asked[2] == 5  # GPU 0's first and second read (GPU 1 between them)
