"""A container kernel's memory against its limit, from its cgroup, as GET kernels reports it."""

import pytest

from jupyter_gpuenv.host import ContainerMemory, container_memory, memory_in_use, memory_limit
from jupyter_gpuenv.server.reports import add_host_memory

ID = "ab" * 32
MiB = 1024**2


def cgroup(root, folder, files):
    path = root / folder
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


@pytest.mark.parametrize(
    "folder, usage, limit, stat",
    [
        (f"system.slice/docker-{ID}.scope", "memory.current", "memory.max", "inactive_file"),  # v2, systemd
        (f"docker/{ID}", "memory.current", "memory.max", "inactive_file"),  # v2, cgroupfs
        (f"memory/docker/{ID}", "memory.usage_in_bytes", "memory.limit_in_bytes", "total_inactive_file"),  # v1
    ],
)
def test_a_containers_memory_from_each_cgroup_layout(tmp_path, folder, usage, limit, stat):
    cgroup(
        tmp_path,
        folder,
        {usage: f"{500 * MiB}\n", limit: f"{512 * MiB}\n", "memory.stat": f"anon 1\n{stat} {40 * MiB}\n"},
    )
    # the inactive page cache is given back before the limit kills anything: not counted, as docker stats does
    assert container_memory(ID, str(tmp_path)) == ContainerMemory(used=460 * MiB, limit=512 * MiB)


def test_no_limit_and_no_cgroup(tmp_path):
    cgroup(tmp_path, f"docker/{ID}", {"memory.current": "1000\n", "memory.max": "max\n"})
    assert container_memory(ID, str(tmp_path)) == ContainerMemory(used=1000, limit=None)
    assert container_memory("cd" * 32, str(tmp_path)) is None  # ended, or on another host
    assert memory_limit("9223372036854771712\n") is None  # cgroup v1's "no limit"
    assert memory_in_use(100, "total_inactive_file 300\n") == 0


def test_kernels_rows_warn_from_the_threshold_on():
    rows = [{"container_id": c} for c in ("full", "half", "unlimited", "gone")] + [{"container_id": None}]
    memory = {
        "full": ContainerMemory(used=470 * MiB, limit=512 * MiB),  # 92 %
        "half": ContainerMemory(used=256 * MiB, limit=512 * MiB),
        "unlimited": ContainerMemory(used=256 * MiB, limit=None),
    }
    add_host_memory(rows, 0.9, read=memory.get)
    assert [r["host_memory"] for r in rows] == [
        {"used": 470 * MiB, "limit": 512 * MiB, "warning": True},
        {"used": 256 * MiB, "limit": 512 * MiB, "warning": False},
        {"used": 256 * MiB, "limit": None, "warning": False},
        None,
        None,
    ]
