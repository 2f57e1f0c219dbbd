"""Twenty kernel starts at once from four people on two GPUs: the broker decides for the whole host, so no GPU
is granted twice, and every start it refuses leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from .conftest import USERS, wait_until

STARTS_PER_USER = 5


def test_twenty_starts_at_once_get_two_gpus_and_refusals_leave_nothing(clean_site):
    site = clean_site

    starts = [user for user in USERS for _ in range(STARTS_PER_USER)]
    ready = threading.Barrier(len(starts))  # every request leaves at the same moment

    def start(user: str):
        ready.wait(30)
        r = site.start_kernel(user, "gpu", 120)
        return user, r.status_code, r.json()

    async def all_at_once():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(starts)) as pool:  # one thread each: none waits for another's answer
            return await asyncio.gather(*(loop.run_in_executor(pool, start, user) for user in starts))

    answers = asyncio.run(all_at_once())
    statuses = Counter(status for _, status, _ in answers)
    granted = [(user, body["id"]) for user, status, body in answers if status == 201]
    assert len(granted) == 2, (statuses, answers)
    refused = [(user, status, body.get("message", "")) for user, status, body in answers if status != 201]
    for user, status, message in refused:
        # 409: both GPUs are held; 403: this person already holds as many GPUs as the policy lets them
        assert status in (403, 409), (user, status, message)
        assert len(message.split()) >= 5, (user, status, message)

    gpus = {}
    for user, kernel_id in granted:
        rows = [k for k in site.gpuenv_kernels(user) if k["kernel_id"] == kernel_id]
        assert len(rows) == 1 and len(rows[0]["gpus"]) == 1, rows
        gpus[kernel_id] = rows[0]["gpus"][0]
    assert len(set(gpus.values())) == 2, f"a GPU granted twice: {gpus}"

    # what exists is exactly what was granted: every refused start left nothing
    kept = {kernel_id for _, kernel_id in granted}
    for user in USERS:
        assert {k["id"] for k in site.kernels(user)} <= kept
    host = site.leftovers()
    assert {kernel_id for kernel_id, _ in host["containers"]} == kept, host
    assert {folder.split("/")[-1] for folder in host["socket_folders"]} == kept, host
    assert set(host["leases"]) == kept, host
    assert all(status == "running" for _, status in host["containers"]), host

    for user, kernel_id in granted:
        site.shutdown_kernel(user, kernel_id)
    wait_until(
        lambda: site.leftovers() == {"containers": [], "socket_folders": [], "leases": []},
        15,
        "nothing left once the two kernels were shut down",
    )
