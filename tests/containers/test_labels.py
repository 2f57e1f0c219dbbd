"""What the engine records of a kernel, and what is read back: holdings and the orphan rule."""

from jupyter_gpuenv.containers import labels


def container(kernel_id, gpus=(), exclusive=False, active=True, **kw):
    written = labels.kernel_labels(
        kernel_id=kernel_id,
        server_host=kw.get("host", "h"),
        server_pid=kw.get("pid", 10),
        uid=kw.get("uid", 1000),
        environment="env",
        gpus=gpus,
        exclusive=exclusive,
        socket_dir=f"/run/user/1000/gpuenv-1000/{kernel_id}",
    )
    return labels.read(f"id-{kernel_id}", f"/gpuenv-{kernel_id}", written, active)


def test_labels_round_trip_and_never_hold_a_key():
    c = container("k1", gpus=["GPU-a", "GPU-b"], exclusive=True)
    assert (c.kernel_id, c.gpus, c.exclusive, c.name, c.uid) == ("k1", ("GPU-a", "GPU-b"), True, "gpuenv-k1", "1000")
    assert all(k.startswith(labels.PREFIX) for k in c.labels)
    assert not any("key" in k for k in c.labels)


def test_holdings_count_created_and_running_kernels_only():
    held = labels.holdings(
        [
            container("a", ["GPU-0"], exclusive=True),
            container("b", ["GPU-1"]),
            container("c", ["GPU-2"], exclusive=True, active=False),  # exited: holds nothing
        ]
    )
    assert held.exclusive == {"GPU-0": ["a"]} and held.shared == {"GPU-1": ["b"]}


def test_a_restarting_kernel_does_not_hold_against_itself():
    held = labels.holdings([container("a", ["GPU-0"], exclusive=True)], excluding="a")
    assert not held.held_by_anyone("GPU-0")


def test_orphan_rule():
    def alive(pid):
        return pid == 11

    assert labels.is_orphan(container("a", pid=10), "h", 1000, my_pid=99, alive=alive)
    assert not labels.is_orphan(container("a", pid=11), "h", 1000, my_pid=99, alive=alive)  # its server runs
    assert not labels.is_orphan(container("a", pid=99), "h", 1000, my_pid=99, alive=alive)  # this server's
    assert not labels.is_orphan(container("a", pid=10, host="other"), "h", 1000, my_pid=99, alive=alive)
    assert not labels.is_orphan(container("a", pid=10, uid=1001), "h", 1000, my_pid=99, alive=alive)
