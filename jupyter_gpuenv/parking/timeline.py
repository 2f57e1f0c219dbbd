"""Where the time of one park or resume went: its phases, in order, each with its start and its seconds.

A park is the driver's lock and checkpoint, then the wait for the allocation lock and the book write that releases
the GPU; a resume is the allocation lock, the holdings read, the driver's restore and unlock, the book write. The
driver's steps are timed in the checkpoint thread (``checkpoint.Outcome.steps``) on the same monotonic clock, so
the timeline shows what the driver took and what we added around it. The park row shows the last park and the
last resume; the log gives one line per operation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# what started an operation: a person's request, the idle policy, a cell run in a parked kernel, the release of
# the GPU a waiting cell needed, or the background round (the fallback for a release this process cannot see)
REQUEST, POLICY, CELL, RELEASE, ROUND = "request", "idle policy", "cell", "release", "round"


@dataclass
class Phase:
    name: str
    start: float  # seconds after the operation began
    seconds: float


@dataclass
class Timeline:
    action: str  # "park" or "resume"
    trigger: str = REQUEST
    host_memory: int = 0  # bytes moved
    at: float = field(default_factory=time.time)  # epoch seconds it began
    began: float = field(default_factory=time.monotonic)
    phases: list[Phase] = field(default_factory=list)
    seconds: float | None = None  # the whole operation, once it ended
    error: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, start, time.monotonic() - start)

    def add(self, name: str, start: float, seconds: float) -> None:
        """A phase that began at ``start`` (``time.monotonic()``, as the driver steps are timed)."""
        self.phases.append(Phase(name, start - self.began, seconds))

    def end(self, error: str | None = None) -> Timeline:
        self.seconds, self.error = time.monotonic() - self.began, error
        self.phases.sort(key=lambda p: p.start)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "trigger": self.trigger,
            "at": self.at,
            "seconds": self.seconds,
            "host_memory": self.host_memory,
            "error": self.error,
            "phases": [
                {"phase": p.name, "start": round(p.start, 6), "seconds": round(p.seconds, 6)} for p in self.phases
            ],
        }

    def summary(self) -> str:
        """``lock 0.01 s, checkpoint 2.31 s, …, other 0.02 s``: ``other`` is what no phase accounts for."""
        named = sum(p.seconds for p in self.phases)
        parts = [f"{p.name} {p.seconds:.3f} s" for p in self.phases]
        if self.seconds is not None:
            parts.append(f"other {max(self.seconds - named, 0):.3f} s")
        return ", ".join(parts)
