"""The OCI runtime wrapper: config rewriting (unit), then through a real dockerd of the swarm with fake GPUs."""

import json
import os
import stat
import sys
import uuid

import pytest
from conftest import wait_until

from jupyter_gpuenv.engines.swarm import gpu_runtime as rt
from jupyter_gpuenv.engines.swarm import placements as p
from jupyter_gpuenv.engines.swarm import service as s
from swarm.cluster import NodeSpec, fake_uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            [
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "p",
                "id",
            ],
            ("create", "/b"),
        ),
        (["--systemd-cgroup", "run", "-b", "/b2", "id"], ("run", "/b2")),
        (["create", "--bundle=/b3", "id"], ("create", "/b3")),
        (["--root", "/r", "state", "id"], ("state", "")),
        (["--root", "/r", "delete", "--force", "id"], ("delete", "")),
    ],
)
def test_the_subcommand_and_bundle_are_found_among_runcs_options(argv, expected):
    assert rt.subcommand_and_bundle(argv) == expected


def test_the_gpus_are_read_from_every_gpu_kind_swarm_assigned():
    env = [
        "PATH=/bin",
        "DOCKER_RESOURCE_GPU-H200=GPU-a,GPU-b",
        "DOCKER_RESOURCE_GPU-A100=GPU-c",
        "DOCKER_RESOURCE_FPGA=f",
    ]
    assert rt.assigned_gpus(env) == ["GPU-a", "GPU-b", "GPU-c"]
    assert rt.assigned_gpus(["PATH=/bin"]) == []


def test_exactly_the_assigned_devices_are_added_allowed_and_the_driver_mounted_read_only():
    spec = {
        "process": {"env": ["PATH=/bin", "LD_LIBRARY_PATH=/opt/lib"]},
        "linux": {"devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
        "mounts": [],
    }
    gpu = rt.Device("/dev/nvidia3", 195, 3, 0o666, 0, 0)
    ctl = rt.Device("/dev/nvidiactl", 195, 255, 0o666, 0, 0)
    out = rt.with_gpus(spec, [gpu, ctl], ("/usr/local/nvidia", "/usr/local/nvidia"))
    assert [d["path"] for d in out["linux"]["devices"]] == ["/dev/nvidia3", "/dev/nvidiactl"]
    assert out["linux"]["devices"][0] == {
        "path": "/dev/nvidia3",
        "type": "c",
        "major": 195,
        "minor": 3,
        "fileMode": 0o666,
        "uid": 0,
        "gid": 0,
    }
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # docker's deny-all stays first; ours allow after it
    assert rules[1:] == [
        {"allow": True, "type": "c", "major": 195, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rwm"},
    ]
    assert out["mounts"] == [
        {
            "destination": "/usr/local/nvidia",
            "type": "bind",
            "source": "/usr/local/nvidia",
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
    ]
    assert "LD_LIBRARY_PATH=/opt/lib:/usr/local/nvidia/lib64:/usr/local/nvidia/lib" in out["process"]["env"]


def fake_devices(folder, names_minors):
    """Character devices in a root-only folder, with harmless numbers (1:3 null, 1:5 zero, 1:7 full, …)."""
    folder.mkdir(mode=0o700)
    for name, minor in names_minors.items():
        os.mknod(folder / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        os.chmod(folder / name, 0o666)
    return {name: str(folder / name) for name in names_minors}


def bundle_with(tmp_path, env, name="bundle"):
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"env": env}, "linux": {}}))
    os.chmod(bundle / "config.json", 0o600)
    return bundle


def test_prepare_rewrites_the_bundle_in_place_and_refuses_a_gpu_the_host_has_not(tmp_path):
    dev = fake_devices(tmp_path / "dev", {"nvidia0": 5, "nvidia1": 7, "nvidiactl": 3})
    conf = {
        "gpus": {"GPU-a": dev["nvidia0"], "GPU-b": dev["nvidia1"]},
        "control_devices": [dev["nvidiactl"]],
        "driver": None,
    }
    bundle = bundle_with(tmp_path, ["DOCKER_RESOURCE_GPU-H200=GPU-b"])
    rt.prepare(str(bundle), conf)
    spec = json.loads((bundle / "config.json").read_text())
    assert [(d["path"], d["minor"]) for d in spec["linux"]["devices"]] == [("/dev/nvidia1", 7), ("/dev/nvidiactl", 3)]
    assert stat.S_IMODE(os.stat(bundle / "config.json").st_mode) == 0o600
    assert os.listdir(bundle) == ["config.json"]  # no temporary file left

    other = bundle_with(tmp_path, ["DOCKER_RESOURCE_GPU-H200=GPU-zzz"], name="other")
    with pytest.raises(RuntimeError, match="no GPU GPU-zzz"):
        rt.prepare(str(other), conf)


def test_gpus_from_the_driver_are_read_from_proc(tmp_path, monkeypatch):
    info = tmp_path / "0000:19:00.0"
    info.mkdir()
    (info / "information").write_text("Model: \t\t NVIDIA H200\nGPU UUID: \t GPU-1234\nDevice Minor: \t 2\n")
    monkeypatch.setattr(rt, "DRIVER_PROC", tmp_path)
    assert rt.driver_gpus() == {"GPU-1234": "/dev/nvidia2"}


LIST_DEVICES = (
    "import json, os, time; d = {n: [os.major(os.stat('/dev/' + n).st_rdev), os.minor(os.stat('/dev/' + n).st_rdev)]"
    " for n in sorted(os.listdir('/dev')) if n.startswith('nvidia')};"
    " drv = [l.split()[5] for l in open('/proc/self/mountinfo') if ' /usr/local/nvidia ' in l];"
    " print('REPORT', json.dumps({'devices': d, 'driver': drv, 'ld': os.environ.get('LD_LIBRARY_PATH'),"
    " 'marker': os.path.exists('/usr/local/nvidia/lib64/libcuda.so.1')}), flush=True); time.sleep(600)"
)


def test_a_task_sees_exactly_its_assigned_gpus_through_a_real_dockerd(make_cluster, tmp_path):
    dev = fake_devices(tmp_path / "dev", {"nvidia0": 5, "nvidia1": 7, "nvidia2": 9, "nvidiactl": 3})
    driver = tmp_path / "driver"
    (driver / "lib64").mkdir(parents=True)
    (driver / "lib64" / "libcuda.so.1").write_text("")
    gpus = {fake_uuid(1, i): dev[f"nvidia{i}"] for i in range(3)}
    conf = tmp_path / "runtime.json"
    conf.write_text(
        json.dumps(
            {
                "gpus": gpus,
                "control_devices": [dev["nvidiactl"]],
                "driver": {"source": str(driver), "target": "/usr/local/nvidia"},
            }
        )
    )
    wrapper = tmp_path / "gpuenv-runtime"
    wrapper.write_text(
        f"#!/bin/sh\nexport {rt.CONFIG_ENV}={conf} PYTHONPATH={REPO}\n"
        f'exec {sys.executable} -m jupyter_gpuenv.engines.swarm.gpu_runtime "$@"\n'
    )
    wrapper.chmod(0o755)
    cluster = make_cluster(
        [
            NodeSpec(
                "gpu-1",
                manager=True,
                gpus=tuple(("GPU-H200", u) for u in gpus),
                daemon={"runtimes": {"gpuenv": {"path": str(wrapper)}}, "default-runtime": "gpuenv"},
            )
        ]
    )
    api = cluster.manager.client().api
    request = s.KernelRequest(
        kernel_id=str(uuid.uuid4()),
        user="alice",
        uid=1001,
        gid=1001,
        environment="pytorch",
        image="gpuenv-test-kernel:latest",
        command=("python3", "-c", LIST_DEVICES),
        gpu_kind="GPU-H200",
        gpu_count=2,
    )
    sid = api.create_service(**s.create_service_kwargs(s.service_spec(request)))["ID"]

    def report():
        logs = b"".join(api.service_logs(sid, stdout=True, stderr=True, follow=False)).decode()
        return next((x for x in logs.splitlines() if "REPORT " in x), None)

    seen = json.loads(wait_until(report, 30, "the task's report").split("REPORT ", 1)[1])
    nodes = p.read_nodes(api.nodes())
    (placement,) = p.read_placements(api.services(), api.tasks(), nodes)
    assert len(placement.gpus) == 2
    expected = {os.path.basename(gpus[u]): [1, os.minor(os.stat(gpus[u]).st_rdev)] for u in placement.gpus}
    assert seen["devices"] == {**expected, "nvidiactl": [1, 3]}  # its two, not the third
    assert seen["driver"] and seen["driver"][0].split(",")[0] == "ro" and seen["marker"]
    assert seen["ld"] == "/usr/local/nvidia/lib64:/usr/local/nvidia/lib"
