"""One background thread per server that samples NVML; requests only read what it left in memory.

NVML calls go through ctypes, which releases the GIL, so sampling never holds up the tornado loop. The
thread keeps the latest snapshot (already serialised, so a request costs no JSON work) and a ring buffer of
compact history. When the driver is missing it retries every ``driver_retry_interval``; when the driver
vanishes while running it starts over. Each change of condition is logged once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from jupyter_gpuenv.gpus import nvml
from jupyter_gpuenv.gpus.nvml import LibraryGone, NvmlReader, Snapshot
from jupyter_gpuenv.gpus.visibility import Visibility

Attributor = Callable[[Snapshot], None]


def history_entry(snapshot: Snapshot) -> dict[str, Any]:
    """The numbers the panel's charts and a GPU's dashboard draw, per GPU."""
    return {
        "t": snapshot.sampled_at,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "memory_used": g.memory.used,
                "memory_total": g.memory.total,
                "utilization_gpu": g.utilization.gpu,
                "utilization_memory": g.utilization.memory,
                "temperature_c": g.temperature_c,
                "power_w": g.power_w,
                "pcie_mb_s": g.pcie_mb_s,
            }
            for g in snapshot.gpus
        ],
    }


class Sampler:
    def __init__(
        self,
        *,
        interval: float,
        history_length: int,
        visibility: Visibility,
        retry_interval: float = 30.0,
        pcie: bool = False,
        attribute: Attributor | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.interval = interval
        self.retry_interval = retry_interval
        self.visibility = visibility
        self.attribute = attribute
        self.log = log or logging.getLogger(__name__)
        self.pcie = pcie
        self._reader: NvmlReader | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=history_length)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_condition: str | None = None
        self._latest = Snapshot(available=False, reason="GPUs have not been sampled yet")
        self._latest_json = json.dumps(self._latest.to_json())
        self.samples_taken = 0

    # -- what requests read ------------------------------------------------------------------------
    @property
    def latest(self) -> Snapshot:
        return self._latest

    @property
    def latest_json(self) -> str:
        return self._latest_json

    @property
    def window(self) -> float:
        """Seconds of history kept: the panel's charts cover all of it."""
        return self.interval * (self._history.maxlen or 0)

    def history(self, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._history)
        if since is None:
            return entries
        return [e for e in entries if e["t"] > since]

    # -- the thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuenv-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._reader is not None:
            self._reader.shutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval if self.sample_once() else self.retry_interval
            self._stop.wait(wait)

    def sample_once(self) -> bool:
        """Take one sample. Returns False when NVML is not usable (the caller waits longer)."""
        if self._reader is None:
            reader = NvmlReader(nvml.load_pynvml(), pcie=self.pcie)
            reason = reader.init()
            if reason is not None:
                self._publish(Snapshot(available=False, reason=reason, sampled_at=time.time()))
                return False
            self._reader = reader
        try:
            snapshot = self._reader.read(self.visibility.allows)
        except LibraryGone as exc:
            self._reader = None
            self._publish(Snapshot(available=False, reason=str(exc), sampled_at=time.time()))
            return False
        except Exception as exc:  # an unexpected NVML error must not kill the thread for good
            self.log.exception("gpuenv: sampling GPUs failed")
            self._publish(Snapshot(available=False, reason=f"sampling GPUs failed: {exc}", sampled_at=time.time()))
            return True
        if self.attribute is not None:
            try:
                self.attribute(snapshot)
            except Exception:
                self.log.exception("gpuenv: could not attribute GPU processes to kernels")
        self._publish(snapshot)
        return True

    def _publish(self, snapshot: Snapshot) -> None:
        self._log_condition(snapshot)
        text = json.dumps(snapshot.to_json())
        with self._lock:
            self._latest, self._latest_json = snapshot, text
            if snapshot.available:
                self._history.append(history_entry(snapshot))
            self.samples_taken += 1

    def _log_condition(self, snapshot: Snapshot) -> None:
        if snapshot.available:
            lost = [g.index for g in snapshot.gpus if g.error]
            condition = f"ok:{len(snapshot.gpus)}:{lost}"
            message = (
                f"gpuenv: {len(snapshot.gpus)} GPU(s) visible ({self.visibility.source}), "
                f"driver {snapshot.driver_version}, CUDA {snapshot.cuda_driver_version}"
            )
            if lost:
                message += f"; GPU(s) {lost} report errors"
        else:
            condition = f"off:{snapshot.reason}"
            message = f"gpuenv: no GPU information: {snapshot.reason}"
        if condition != self._last_condition:
            self._last_condition = condition
            (self.log.info if snapshot.available and "report errors" not in message else self.log.warning)(message)
