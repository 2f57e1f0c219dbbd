"""What root does with paths users control (broker_folders): by descriptor, once, never through a placed link.

These run as root on real files (a mount needs CAP_SYS_ADMIN); the end-to-end races against the running broker
with real Unix users are in test_broker_hostile.py.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest

from jupyter_gpuenv.broker import folders as broker_folders
from jupyter_gpuenv.broker.daemon import Refusals
from jupyter_gpuenv.containers.allocation import Holdings, choose
from jupyter_gpuenv.environments.definition import GpuPolicy
from jupyter_gpuenv.errors import InvalidRequest, NoFreeGpu, NotPermitted
from jupyter_gpuenv.gpus.nvml import GpuSample

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown and mount need root (CI runs as root)")


def test_a_path_is_resolved_once_through_its_links_to_the_folder_it_names(tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "rel").symlink_to("real/sub")
    pinned = broker_folders.resolve(f"{tmp_path}/link/../rel", "the root")
    try:
        assert pinned.path == f"{tmp_path}/real/sub"
        assert os.path.samestat(os.fstat(pinned.fd), os.stat(tmp_path / "real" / "sub"))
        home = broker_folders.resolve(str(tmp_path), "the home")
        assert broker_folders.inside(pinned, home)
        assert not broker_folders.inside(home, pinned)
        home.close()
    finally:
        pinned.close()


@pytest.mark.parametrize("bad", ["relative/path", "/nowhere/at/all", "/etc/passwd", "/tmp/a\0b"])
def test_what_is_not_an_absolute_existing_folder_is_a_400(bad):
    with pytest.raises(InvalidRequest):
        broker_folders.resolve(bad, "the root")


def test_a_loop_of_links_is_a_400_not_a_hang(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InvalidRequest, match="too many links"):
        broker_folders.resolve(str(tmp_path / "a"), "the root")


def test_a_pinned_folder_stays_what_was_checked_after_its_path_is_swapped(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("not yours")
    pinned = broker_folders.resolve(str(tmp_path / "mine"), "the root")
    try:
        (tmp_path / "mine").rename(tmp_path / "moved")
        (tmp_path / "mine").symlink_to(tmp_path / "secret")  # what a racing user would do after the check
        assert os.listdir(f"/proc/self/fd/{pinned.fd}") == ["notes.txt"]
    finally:
        pinned.close()


@root_only
def test_staging_mounts_the_pinned_folder_and_is_undone_after(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("not yours")
    staging = broker_folders.prepare_staging(str(tmp_path / "staging"))
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o700
    pinned = broker_folders.resolve(str(tmp_path / "mine"), "the root")
    try:
        with broker_folders.staged(staging, {pinned.path: pinned}) as sources:
            (tmp_path / "mine").rename(tmp_path / "moved")
            (tmp_path / "mine").symlink_to(tmp_path / "secret")
            # what Docker is given: a root-only path whose content is the checked folder, whatever the path says
            assert os.listdir(sources[str(tmp_path / "mine")]) == ["notes.txt"]
        assert os.listdir(staging) == []
    finally:
        pinned.close()


@root_only
def test_a_folder_made_for_a_user_is_theirs_and_a_link_in_its_place_is_refused(tmp_path):
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = broker_folders.open_folder(parent, "k1", mode=0o700, owner=(4242, 4242))
        info = os.fstat(fd)
        os.close(fd)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4242, 0o700)
        secret = tmp_path / "rootfile"
        secret.write_text("root's")
        secret.chmod(0o600)
        (tmp_path / "k2").symlink_to(secret)
        with pytest.raises(NotPermitted):
            broker_folders.open_folder(parent, "k2", mode=0o700, owner=(4242, 4242))
        assert secret.stat().st_uid == 0 and stat.S_IMODE(secret.stat().st_mode) == 0o600
        (tmp_path / "other").mkdir()
        os.chown(tmp_path / "other", 4343, 4343)
        with pytest.raises(NotPermitted, match="4343"):
            broker_folders.open_folder(parent, "other", mode=0o700, owner=(4242, 4242), make=False)
    finally:
        os.close(parent)


@root_only
@pytest.mark.parametrize("kind", ["fifo", "large", "link to /dev/zero", "another owner's"])
def test_root_reads_a_users_file_only_when_regular_theirs_and_small(tmp_path, kind):
    target = tmp_path / "connection.json"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "large":
        with open(target, "wb") as f:
            f.truncate(1 << 30)  # sparse: no disk, but 1 GiB to a reader
    elif kind == "link to /dev/zero":
        target.symlink_to("/dev/zero")
    else:
        target.write_text("{}")
    if kind != "link to /dev/zero":
        os.chown(target, 4242 if kind != "another owner's" else 4343, 4242)
    with pytest.raises(OSError):
        broker_folders.read_user_file(str(tmp_path), "connection.json", 4242, 1 << 16)


@root_only
def test_a_users_small_regular_file_is_read(tmp_path):
    (tmp_path / "connection.json").write_text('{"iopub_port": 1}')
    os.chown(tmp_path / "connection.json", 4242, 4242)
    assert broker_folders.read_user_file(str(tmp_path), "connection.json", 4242, 1 << 16) == b'{"iopub_port": 1}'


def _gpu(index: int) -> GpuSample:
    return GpuSample(index=index, uuid=f"GPU-{index}", name="H100")


def test_an_exclusive_restart_does_not_keep_a_gpu_another_kernel_shares():
    held = Holdings()
    held.add("GPU-0", "someone-elses", exclusive=False)
    with pytest.raises(NoFreeGpu):
        choose(GpuPolicy("exclusive", 1), [_gpu(0), _gpu(1)], held, keep=["GPU-0"])
    assert [g.uuid for g in choose(GpuPolicy("count", 1), [_gpu(0), _gpu(1)], held, keep=["GPU-0"])] == ["GPU-0"]


def test_refusals_are_logged_a_few_times_a_minute_per_caller(caplog):
    refusals = Refusals(burst=5, window=60)
    assert sum(refusals.allow("uid 1001") for _ in range(500)) == 5
    assert refusals.allow("uid 1002")  # another caller is not silenced by the first
    refusals._seen["uid 1001"] = (refusals._seen["uid 1001"][0] - 61, 5, 495)  # a minute later
    with caplog.at_level(logging.WARNING, logger="jupyter_gpuenv.broker.daemon"):
        assert refusals.allow("uid 1001")
    assert "495 more refusals of uid 1001" in caplog.text
