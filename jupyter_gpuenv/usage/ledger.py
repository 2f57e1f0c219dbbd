"""The usage ledger: what GPU time each kernel used, as append-only JSON lines in a private folder.

Pure file work, no tornado: the server calls :meth:`Ledger.append` from a worker thread every
``c.GpuEnv.usage_flush_interval``; ``jupyter gpuenv usage`` and ``GET gpuenv/api/usage`` call :meth:`Ledger.read`
and :func:`summarize`. One line is one stretch of time of one kernel::

    {"start": 1733040000.0, "end": 1733040060.0, "user": "alice", "notebook": "train.ipynb",
     "kernel_id": "…", "environment": "pytorch", "gpu_seconds": 60.0, "gpu_memory_byte_seconds": 2.5e11}

Files are per month (``usage-2025-12.jsonl``, by the UTC month a record starts in). Bounded: a file that has grown
is compacted to one record per kernel and hour, and months older than the retention are deleted. Writers take an
``flock`` so that two servers of one user cannot interleave a compaction with an append; readers need no lock
(a compaction replaces the file atomically, a torn last line is skipped). :func:`usage_query` reads the period a
person asks for, the same for the command and the REST API.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

from jupyter_gpuenv import host

BY = ("user", "notebook")  # what a report adds up by
COMPACT_BYTES = 256 * 1024  # a file is compacted when it grows past this (or twice its last compacted size)
_LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: later times cannot be written as dates
_FILE = re.compile(r"^usage-(\d{4})-(\d{2})\.jsonl$")


@dataclass(frozen=True)
class UsageRecord:
    start: float  # seconds since the epoch
    end: float
    user: str
    notebook: str
    kernel_id: str
    environment: str
    gpu_seconds: float
    gpu_memory_byte_seconds: float

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.user, self.notebook, self.kernel_id, self.environment)

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> UsageRecord | None:
        """A record, or None for a line that is torn or not ours."""
        try:
            raw = json.loads(line)
            return cls(**{f.name: _TYPES[f.type](raw[f.name]) for f in fields(cls)})
        except (ValueError, TypeError, KeyError):
            return None


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


# field annotations are strings (from __future__ import annotations)
_TYPES: dict[object, Callable[[Any], Any]] = {"float": _finite, "str": str}


class _UsageTotals(TypedDict):
    user: str
    gpu_seconds: float
    gpu_hours: float
    gpu_memory_byte_seconds: float
    gpu_memory_gib_hours: float


class UsageRow(_UsageTotals, total=False):
    """One line of a report (:func:`summarize`): a user's totals, or a user's totals for one notebook."""

    notebook: str


def _month(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m")


class Ledger:
    def __init__(self, folder: str | os.PathLike[str], *, retention_days: float = 400.0) -> None:
        self.folder = Path(folder)
        self.retention_days = retention_days
        self._compacted_size: dict[str, int] = {}  # file name -> its size after our last compaction

    # -- writing (a worker thread) ------------------------------------------------------------------
    def append(self, records: Iterable[UsageRecord], now: float | None = None) -> None:
        by_file: dict[str, list[str]] = {}
        for record in records:
            by_file.setdefault(f"usage-{_month(record.start)}.jsonl", []).append(record.to_line())
        if not by_file:
            return
        host.private_folder(str(self.folder), parents=True)
        with self._locked():
            for name, lines in by_file.items():
                path = self.folder / name
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    # a line torn by a crash must not swallow the next record: start on a line of our own
                    torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                    os.write(fd, ("\n" * torn + "".join(lines)).encode())  # one write per batch
                finally:
                    os.close(fd)
            # the records are written; tidying that fails (a full disk) is tried again at the next append
            with contextlib.suppress(OSError):
                for name in by_file:
                    if (self.folder / name).stat().st_size > max(COMPACT_BYTES, 2 * self._compacted_size.get(name, 0)):
                        self._compacted_size[name] = compact(self.folder / name)
                self._prune(time.time() if now is None else now)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return host.locked_file(str(self.folder / ".lock"))

    def _prune(self, now: float) -> None:
        """Delete month files that ended more than ``retention_days`` ago."""
        horizon = now - self.retention_days * 86400
        for path in self.folder.iterdir():
            match = _FILE.match(path.name)
            if not match:
                continue
            year, month = int(match[1]), int(match[2])
            month_end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
            if month_end < horizon:
                path.unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------------
    def read(self, since: float | None = None, until: float | None = None) -> list[UsageRecord]:
        """Records that overlap ``[since, until)``; either bound may be None."""
        if not self.folder.is_dir():
            return []
        first = _month(since - 86400) if since is not None else ""  # a record may start in the month before
        last = _month(until) if until is not None else "9999-99"
        found = []
        for path in sorted(self.folder.iterdir()):
            match = _FILE.match(path.name)
            if not match or not first <= f"{match[1]}-{match[2]}" <= last:
                continue
            found += [r for r in read_file(path) if _overlap(r, since, until) > 0]
        return found


def read_file(path: Path) -> list[UsageRecord]:
    try:
        text = path.read_text()
    except FileNotFoundError:  # pruned meanwhile by another server of this user
        return []
    return [r for r in (UsageRecord.from_line(line) for line in text.splitlines()) if r is not None]


def compact(path: Path) -> int:
    """Merge the file's records to one per kernel and UTC hour; returns the new size. Caller holds the lock."""
    merged: dict[tuple[str, str, str, str, int], UsageRecord] = {}
    for r in read_file(path):
        key = (*r.key, int(r.start // 3600))
        old = merged.get(key)
        if old is not None:
            r = UsageRecord(
                start=min(old.start, r.start),
                end=max(old.end, r.end),
                user=r.user,
                notebook=r.notebook,
                kernel_id=r.kernel_id,
                environment=r.environment,
                gpu_seconds=old.gpu_seconds + r.gpu_seconds,
                gpu_memory_byte_seconds=old.gpu_memory_byte_seconds + r.gpu_memory_byte_seconds,
            )
        merged[key] = r
    text = "".join(r.to_line() for r in sorted(merged.values(), key=lambda r: r.start))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(text.encode())


def _overlap(r: UsageRecord, since: float | None, until: float | None) -> float:
    """The share of ``r`` inside ``[since, until)``, assuming its use was spread evenly over its stretch."""
    if r.end <= r.start:
        inside = (since is None or r.start >= since) and (until is None or r.start < until)
        return 1.0 if inside else 0.0
    lo = r.start if since is None else max(r.start, since)
    hi = r.end if until is None else min(r.end, until)
    return max(0.0, hi - lo) / (r.end - r.start)


def summarize(records: Iterable[UsageRecord], since: float | None, until: float | None, by: str) -> list[UsageRow]:
    """GPU-hours per user (``by="user"``) or per user and notebook (``by="notebook"``), largest first."""
    if by not in BY:
        raise ValueError(f"by must be 'user' or 'notebook', got {by!r}")
    totals: dict[tuple[str, str], list[float]] = {}
    for r in records:
        share = _overlap(r, since, until)
        if share <= 0:
            continue
        key = (r.user, "" if by == "user" else r.notebook)
        acc = totals.setdefault(key, [0.0, 0.0])
        acc[0] += r.gpu_seconds * share
        acc[1] += r.gpu_memory_byte_seconds * share
    rows: list[UsageRow] = []
    for key, (gpu_seconds, byte_seconds) in totals.items():
        row = UsageRow(
            user=key[0],
            notebook=key[1],
            gpu_seconds=gpu_seconds,
            gpu_hours=gpu_seconds / 3600,
            gpu_memory_byte_seconds=byte_seconds,
            gpu_memory_gib_hours=byte_seconds / 2**30 / 3600,
        )
        if by == "user":
            del row["notebook"]
        rows.append(row)
    return sorted(rows, key=lambda row: (-row["gpu_seconds"], row["user"], row.get("notebook", "")))


# -- the period asked for (REST API and CLI) ------------------------------------------------------------
def parse_time(text: str, name: str) -> float:
    """Seconds since the epoch from ``1733040000``, ``2025-12-01`` (local midnight) or ``2025-12-01T08:00:00Z``."""
    problem = (
        f"{name} must be a date (2025-12-01), a date and time (2025-12-01T08:00:00+00:00) or seconds since the "
        f"epoch, got {text!r}"
    )
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()  # naive: local time
        except (ValueError, OverflowError, OSError):
            raise ValueError(problem) from None
    if not (math.isfinite(value) and 0 <= value <= _LATEST):
        raise ValueError(problem)
    return value


def month_start(t: float) -> float:
    """Local midnight of the first day of the month ``t`` falls in."""
    return datetime.fromtimestamp(t).replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def usage_query(
    since: str | None, until: str | None, by: str | None, now: float | None = None
) -> tuple[float, float, str]:
    """``(since, until, by)`` from what a user typed; None takes the default. Raises ValueError with a sentence."""
    until_t = parse_time(until, "until") if until is not None else time.time() if now is None else now
    since_t = parse_time(since, "since") if since is not None else month_start(max(until_t - 1e-3, 0))
    if since_t >= until_t:
        raise ValueError(f"since ({local_time(since_t)}) must be before until ({local_time(until_t)})")
    by = "user" if by is None else by
    if by not in BY:
        raise ValueError(f"by must be 'user' or 'notebook', got {by!r}")
    return since_t, until_t, by


def local_time(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
