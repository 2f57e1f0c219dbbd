"""What /proc says about a GPU process (host memory, start, command, user), and what another person may see."""

import os

from jupyter_gpuenv.gpus.nvml import GpuProcess, GpuSample, Snapshot
from jupyter_gpuenv.gpus.processes import (
    ProcessFacts,
    boot_time,
    describe,
    read_facts,
    real_uid,
    resident_bytes,
    short_command,
)

STATUS = "Name:\tpython3\nState:\tS (sleeping)\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t  2097152 kB\n"
# the command name holds a space and a parenthesis; start time (field 22) is 4200 ticks
STAT = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 1 0 0 20 0 9 0 4200 1000 500 " + "0 " * 30


def test_parsers_read_the_fields_nvitop_shows():
    assert resident_bytes(STATUS) == 2 * 1024**3
    assert real_uid(STATUS) == 1000
    assert resident_bytes("Name:\tkthreadd\nUid:\t0\t0\t0\t0\n") is None  # a kernel thread has no RSS
    assert boot_time("cpu  1 2 3\nbtime 1764700000\nprocesses 9\n") == 1764700000.0


def test_a_command_line_reads_as_one_short_line():
    argv = b"/opt/conda/bin/python3\0-m\0ipykernel_launcher\0-f\0/run/k/kernel-1.json\0"
    assert short_command(argv) == "python3 -m ipykernel_launcher -f /run/k/kernel-1.json"
    long = short_command(b"python\0" + b"x" * 200 + b"\0", limit=20)
    assert long == "python " + "x" * 12 + "…" and len(long) == 20
    assert short_command(b"") is None


def test_facts_of_a_process_from_its_proc_files(tmp_path):
    folder = tmp_path / "4242"
    folder.mkdir()
    (folder / "status").write_text(STATUS)
    (folder / "stat").write_text(STAT)
    (folder / "cmdline").write_bytes(b"/usr/bin/python3\0train.py\0")
    facts = read_facts(4242, proc=str(tmp_path), boot=1_764_700_000.0, ticks=100)
    assert facts == ProcessFacts(
        host_memory=2 * 1024**3, started_at=1_764_700_042.0, command="python3 train.py", uid=1000
    )
    assert read_facts(999, proc=str(tmp_path), boot=1.0, ticks=100) == ProcessFacts(None, None, None, None)


def test_this_servers_own_process_on_the_real_proc():
    facts = read_facts(os.getpid(), boot=1.0)
    assert facts.uid == os.getuid() and facts.host_memory and facts.host_memory > 1024**2
    assert facts.command and "python" in facts.command and facts.started_at and facts.started_at > 1.0


def snapshot() -> Snapshot:
    mine = GpuProcess(pid=1, used_memory=1, type="compute", kernel_id="k1")
    theirs = GpuProcess(pid=2, used_memory=1, type="compute", user="bob")
    return Snapshot(available=True, gpus=[GpuSample(index=0, processes=[mine, theirs])])


FACTS = {
    1: ProcessFacts(host_memory=10, started_at=100.0, command="python3 -m ipykernel_launcher", uid=1000),
    2: ProcessFacts(host_memory=20, started_at=200.0, command="python3 secret-project/train.py", uid=1001),
}
NAMES = {1000: "alice", 1001: "bob"}


def test_on_one_persons_machine_every_process_is_shown_as_ps_shows_it():
    snap = snapshot()
    describe(snap, me=1000, shared_host=False, facts=FACTS.__getitem__, name_of=NAMES.__getitem__)
    mine, theirs = snap.gpus[0].processes
    assert (mine.host_memory, mine.started_at, mine.command, mine.owner) == (
        10,
        100.0,
        "python3 -m ipykernel_launcher",
        "alice",
    )
    assert (theirs.command, theirs.owner) == ("python3 secret-project/train.py", "bob")


def test_on_a_shared_host_another_users_process_keeps_its_numbers_not_its_command():
    """Their name is the broker's to give (GpuProcess.user, as c.Broker.show_other_users says), not /proc's."""
    snap = snapshot()
    describe(snap, me=1000, shared_host=True, facts=FACTS.__getitem__, name_of=NAMES.__getitem__)
    mine, theirs = snap.gpus[0].processes
    assert (mine.command, mine.owner) == ("python3 -m ipykernel_launcher", "alice")
    assert (theirs.host_memory, theirs.started_at) == (20, 200.0)
    assert (theirs.command, theirs.owner, theirs.user) == (None, None, "bob")
