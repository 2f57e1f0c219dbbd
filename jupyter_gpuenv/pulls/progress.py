"""Image pulls: what an engine's pull events add up to, why a pull failed, and one pull per image for everyone.

``PullTally`` folds the engine's per-layer events ("Downloading 12 MB / 31 MB", "Pull complete", …) into one
``PullProgress``: bytes done and total, percent, rate, time left, layers. It is pure: the caller gives the time.
``failure`` turns what an engine or registry said into an ``errors`` class with a sentence that says what to do.
``Pulls`` runs at most one pull per image, in its own thread, and lets every caller wait for it: the kernels of
one server, or (through the broker) of every user of a host. ``PullJournal`` notes the pulls under way in a
private folder, so a server that was stopped in the middle of one says so after its restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_gpuenv import errors, host

# phases of a pull, in order
RESOLVING, DOWNLOADING, EXTRACTING, DONE, FAILED = "resolving", "downloading", "extracting", "done", "failed"
RATE_WINDOW = 10.0  # seconds of history the rate is measured over

# what the engine says of one layer: its state afterwards
_LAYER_STATES = {
    "Pulling fs layer": "waiting",
    "Waiting": "waiting",
    "Downloading": "downloading",
    "Verifying Checksum": "downloaded",
    "Download complete": "downloaded",
    "Extracting": "extracting",
    "Pull complete": "done",
    "Already exists": "present",
}
_DOWNLOADED = {"downloaded", "extracting", "done"}
_ORDER = ["waiting", "downloading", "downloaded", "extracting", "done", "present"]


@dataclass(frozen=True)
class PullProgress:
    """Where a pull stands (``GET environments``'s ``pull_progress``); ``error`` set when it failed."""

    image: str
    phase: str
    bytes_done: int = 0
    bytes_total: int | None = None  # None until the size of every layer to download is known
    percent: float | None = None
    rate_bytes_per_s: float | None = None
    eta_s: float | None = None
    layers_done: int = 0
    layers_total: int | None = None
    started_at: float = 0.0  # seconds since the epoch
    error: str | None = None
    error_code: str | None = None

    @property
    def active(self) -> bool:
        return self.phase not in (DONE, FAILED)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Layer:
    state: str = "waiting"
    size: int | None = None  # compressed bytes
    downloaded: int = 0
    unpacked: int = 0


class PullTally:
    """The events of one pull, folded. One thread feeds it; ``progress`` may be read from others."""

    def __init__(self, image: str, now: float, wall: float | None = None) -> None:
        self.image = image
        self._layers: dict[str, _Layer] = {}  # by the engine's short layer id (12 hex digits of its digest)
        self._sizes: dict[str, int] = {}  # the same ids -> sizes, when the registry told them before the pull
        self._started = wall if wall is not None else now
        self._activity = now  # when bytes last moved or a layer was finished
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])  # (time, bytes done), for the rate
        self._outcome: tuple[str, errors.GpuEnvError | None] | None = None
        self._lock = threading.Lock()

    def expect_layers(self, sizes: dict[str, int]) -> None:
        """Compressed layer sizes by digest (``sha256:…``), from the registry's manifest."""
        with self._lock:
            self._sizes = {digest.split(":")[-1][:12]: size for digest, size in sizes.items()}

    def feed(self, event: dict, now: float) -> None:
        """One event of the engine's pull stream (``{"status", "id", "progressDetail"}``); errors are the caller's."""
        state = _LAYER_STATES.get(str(event.get("status") or ""))
        layer_id = event.get("id")
        if state is None or not isinstance(layer_id, str):
            return
        detail = event.get("progressDetail") or {}
        with self._lock:
            layer = self._layers.setdefault(layer_id, _Layer(size=self._sizes.get(layer_id)))
            if _ORDER.index(state) < _ORDER.index(layer.state):  # a late message never takes a layer back
                return
            before = (layer.state, layer.downloaded, layer.unpacked)
            if state == "downloading":
                layer.downloaded = int(detail.get("current") or layer.downloaded)
                layer.size = int(detail.get("total") or 0) or layer.size
            elif state == "extracting":
                layer.unpacked = int(detail.get("current") or layer.unpacked)
            if state in _DOWNLOADED:  # a small layer may finish with no "Downloading" event: its size is what came
                layer.size = layer.size if layer.size is not None else layer.downloaded
                layer.downloaded = layer.size
            layer.state = state
            if (layer.state, layer.downloaded, layer.unpacked) != before and state != "waiting":
                self._activity = now
            done = self._bytes_done()
            if done != self._samples[-1][1]:
                self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()

    def mark_active(self, now: float) -> None:
        """Something moved that is not an event (the engine answered): idle counts from here."""
        with self._lock:
            self._activity = now

    def finish(self, error: errors.GpuEnvError | None = None) -> None:
        with self._lock:
            self._outcome = (FAILED if error else DONE, error)

    def idle_for(self, now: float) -> float:
        """Seconds since bytes last moved (downloaded or unpacked) or a layer was finished."""
        with self._lock:
            return now - self._activity

    def _bytes_done(self) -> int:
        return sum(layer.downloaded for layer in self._layers.values() if layer.state != "present")

    def progress(self, now: float) -> PullProgress:
        with self._lock:
            layers_total: int | None
            if self._layers:  # the engine names every layer at the start: from then on, its list counts
                layers = [layer for layer in self._layers.values() if layer.state != "present"]
                sizes = [layer.size for layer in layers]
                layers_total = len(self._layers)
                layers_done = layers_total - sum(1 for layer in layers if layer.state != "done")
            else:
                layers, sizes = [], list(self._sizes.values())
                layers_total, layers_done = len(sizes) or None, 0
            total = sum(s for s in sizes if s is not None) if sizes and None not in sizes else None
            done = self._bytes_done()
            if self._outcome is not None:
                phase, error = self._outcome
            elif not self._layers:
                phase, error = RESOLVING, None
            elif any(layer.state not in _DOWNLOADED for layer in layers):
                phase, error = DOWNLOADING, None
            else:
                phase, error = EXTRACTING, None
            rate = None
            t0, b0 = self._samples[0]
            if phase == DOWNLOADING and now - t0 >= 1.0:
                rate = max(0.0, (done - b0) / (now - t0))
            percent = round(min(100.0, 100.0 * done / total), 1) if total else (100.0 if total == 0 else None)
            eta = round(max(0, total - done) / rate, 1) if phase == DOWNLOADING and total is not None and rate else None
            return PullProgress(
                image=self.image,
                phase=phase,
                bytes_done=done,
                bytes_total=total,
                percent=percent,
                rate_bytes_per_s=round(rate, 1) if rate is not None else None,
                eta_s=eta,
                layers_done=layers_done,
                layers_total=layers_total,
                started_at=self._started,
                error=str(error) if error else None,
                error_code=error.code if error else None,
            )


def describe(progress: PullProgress) -> str:
    """One line for a log or a terminal: "48 / 115 MB (42 %), 19.6 MB/s, 3 s left, layers 2/5"."""
    mb = progress.bytes_done / 1e6
    parts = [f"{mb:.0f} / {progress.bytes_total / 1e6:.0f} MB" if progress.bytes_total else f"{mb:.0f} MB"]
    if progress.percent is not None:
        parts[0] += f" ({progress.percent:.0f} %)"
    if progress.rate_bytes_per_s:
        parts.append(f"{progress.rate_bytes_per_s / 1e6:.1f} MB/s")
    if progress.eta_s is not None:
        parts.append(f"{duration(progress.eta_s)} left")
    if progress.layers_total:
        parts.append(f"layers {progress.layers_done}/{progress.layers_total}")
    if progress.phase in (RESOLVING, EXTRACTING):
        parts.append("asking the registry" if progress.phase == RESOLVING else "unpacking")
    return ", ".join(parts)


def size(n: float) -> str:
    """361 MB, 7.6 GB (decimal units, as registries and docker pull count)."""
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def duration(seconds: float) -> str:
    """3 s, 2 min 5 s, 1 h 3 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


# -- why a pull failed ---------------------------------------------------------------------------------------
def registry_of(image: str) -> str:
    """The registry host of an image reference, as the engine resolves it ("docker.io" for bare names)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def reference_key(image: str) -> str:
    """One spelling per image: ``name`` and ``name:latest`` are the same pull."""
    last = image.rsplit("/", 1)[-1]
    return image if (":" in last or "@" in last) else f"{image}:latest"


_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "dial tcp",
    "network is unreachable",
    "no route to host",
    "tls handshake",
    "server gave http response to https client",
    "x509:",
    "connection reset",
    "timeout exceeded",
    "eof",
)
_AUTH = ("no basic auth credentials", "unauthorized", "authentication required", "access denied", "forbidden")
_UNKNOWN = ("manifest unknown", "not found", "name unknown", "does not exist", "invalid reference format")


def failure(image: str, words: str) -> errors.GpuEnvError:
    """What the engine said of a failed pull, as the error a person can act on."""
    registry, low = registry_of(image), words.lower()
    if "no space left on device" in low:
        return errors.DiskTooSmall(
            f"the Docker engine ran out of disk space while pulling {image}: free space in its data folder "
            "(docker system prune removes unused images), then try again"
        )
    if "does not exist or may require" in low:
        return errors.RegistryAuthRequired(
            f"{registry} has no image {image}, or gives it only with credentials ({words}): check the image name, "
            f"or log in once on this machine as the user who runs the server (docker login {registry})"
        )
    if any(k in low for k in _AUTH):
        return errors.RegistryAuthRequired(
            f"{registry} gives {image} only with credentials ({words}): log in once on this machine as the user "
            f"who runs the server (docker login {registry}); notebooks never send credentials"
        )
    if any(k in low for k in _UNKNOWN):
        _, _, tag = reference_key(image).rpartition(":")
        return errors.UnknownImage(
            f"{registry} has no image {image} (no such repository, or no tag {tag!r}): check the image name and "
            "tag in the environment's definition"
        )
    if any(k in low for k in _UNREACHABLE):
        return errors.RegistryUnreachable(
            f"the registry {registry} cannot be reached to pull {image} ({words}): check that it runs and that "
            "the Docker engine's host reaches it, then try again"
        )
    return errors.PullFailed(f"pulling {image} failed: {words}")


def stalled(image: str, seconds: float, progress: PullProgress) -> errors.GpuEnvError:
    got = (
        f"{progress.bytes_done / 1e6:.0f} of {progress.bytes_total / 1e6:.0f} MB" if progress.bytes_total else "nothing"
    )
    return errors.PullStalled(
        f"the pull of {image} was abandoned: no bytes arrived for {seconds:.0f} s ({got} downloaded). The registry "
        f"{registry_of(image)} may be overloaded or unreachable: try again later, or raise c.GpuEnv.pull_stall_timeout"
    )


def interrupted(image: str, since: float | None = None) -> errors.GpuEnvError:
    when = f" (started {time.strftime('%H:%M', time.localtime(since))})" if since else ""
    return errors.PullInterrupted(
        f"the pull of {image}{when} did not finish: the server (or `jupyter gpuenv pull`) that ran it stopped. "
        "Start the kernel again, or press Prepare, to pull it; layers already downloaded are kept"
    )


# -- one pull per image --------------------------------------------------------------------------------------
@dataclass
class SharedPull:
    """A pull under way and everyone waiting for it."""

    image: str
    tally: PullTally
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None  # set by the runner: unblocks its read


class Pulls:
    """At most one pull per image; every caller of ``start`` for that image gets the same ``SharedPull``.

    ``run(pull)`` does the work in a daemon thread (a server that exits never waits for a pull; the engine
    cancels a pull whose client went away) and raises a ``GpuEnvError`` when it fails. The last failure per
    image is kept until the next pull of it starts, so a person who pressed "Prepare" sees why it failed.
    """

    def __init__(
        self,
        run: Callable[[SharedPull], None],
        journal: PullJournal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run, self._journal, self._clock = run, journal, clock
        self._lock = threading.Lock()
        self._running: dict[str, SharedPull] = {}
        self._failed: dict[str, PullProgress] = {}
        self.started = 0  # pulls begun (their threads are named by it)
        if journal is not None:
            for image, since in journal.interrupted():
                self.note_failure(image, interrupted(image, since))

    def start(self, image: str) -> SharedPull:
        key = reference_key(image)
        with self._lock:
            pull = self._running.get(key)
            if pull is not None:
                return pull
            pull = SharedPull(key, PullTally(key, self._clock(), time.time()))
            pull.future.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel it for the others
            self._running[key] = pull
            self._failed.pop(key, None)
            self.started += 1
        if self._journal is not None:
            self._journal.begin(key)
        threading.Thread(target=self._work, args=(pull,), name=f"gpuenv-pull-{self.started}", daemon=True).start()
        return pull

    def _work(self, pull: SharedPull) -> None:
        try:
            self._run(pull)
        except errors.GpuEnvError as exc:
            self._end(pull, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must still release every waiter, with words
            self._end(pull, errors.PullFailed(f"pulling {pull.image} failed unexpectedly: {exc!r}"))
        else:
            self._end(pull, None)

    def _end(self, pull: SharedPull, error: errors.GpuEnvError | None) -> None:
        pull.tally.finish(error)
        with self._lock:
            if self._running.get(pull.image) is pull:
                del self._running[pull.image]
            if error is not None and not pull.cancelled.is_set():
                self._failed[pull.image] = pull.tally.progress(self._clock())
        if self._journal is not None and not pull.cancelled.is_set():
            self._journal.end(pull.image)  # a cancelled pull stays noted: the next server reports it
        if not pull.future.done():
            if error is None:
                pull.future.set_result(None)
            else:
                pull.future.set_exception(error)

    def progress(self, image: str) -> PullProgress | None:
        with self._lock:
            pull = self._running.get(reference_key(image))
        return pull.tally.progress(self._clock()) if pull is not None else None

    def failure(self, image: str) -> PullProgress | None:
        with self._lock:
            return self._failed.get(reference_key(image))

    def note_failure(self, image: str, error: errors.GpuEnvError) -> None:
        key = reference_key(image)
        tally = PullTally(key, self._clock(), time.time())
        tally.finish(error)
        with self._lock:
            self._failed[key] = tally.progress(self._clock())

    def cancel_all(self) -> None:
        """The server stops: every waiter is told at once; the engine drops the pulls as their connections close."""
        with self._lock:
            pulls = list(self._running.values())
            self._running.clear()
        for pull in pulls:
            pull.cancelled.set()
            if pull.on_cancel is not None:
                pull.on_cancel()
            pull.tally.finish(interrupted(pull.image))
            if not pull.future.done():
                pull.future.set_exception(interrupted(pull.image))


async def wait(pull: SharedPull, on_progress: Callable[[PullProgress], None] | None, every: float = 0.5) -> None:
    """Wait for a shared pull; a waiter that is cancelled leaves the pull running for the others."""
    future = asyncio.wrap_future(pull.future)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # a waiter gone: nobody else reads it
    while True:
        done, _ = await asyncio.wait({future}, timeout=every)
        if done:
            future.result()
            return
        if on_progress is not None:
            on_progress(pull.tally.progress(time.monotonic()))


# -- the journal ---------------------------------------------------------------------------------------------
def _start(value: object) -> int | None:
    """A process start as a journal records it (older journals wrote it as a string)."""
    try:
        return int(value)  # type: ignore[call-overload]  # whatever a file said: a bad one reads as no process
    except (TypeError, ValueError):
        return None


class PullJournal:
    """One small file per pull under way, in a folder of this user's; what a dead process left was interrupted.

    ``make_folder`` makes the folder (private to this user) at the first pull, not before.
    """

    def __init__(self, folder: str, make_folder: Callable[[str], object] | None = None) -> None:
        self.folder, self._make_folder = folder, make_folder

    def _path(self, image: str) -> str:
        return os.path.join(self.folder, f"pull-{hashlib.sha256(image.encode()).hexdigest()[:16]}.json")

    def begin(self, image: str) -> None:
        record = {"image": image, "pid": os.getpid(), "start": host.process_start(os.getpid()), "since": time.time()}
        try:
            if self._make_folder is not None:
                self._make_folder(self.folder)
            tmp = self._path(image) + f".{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self._path(image))
        except (OSError, errors.GpuEnvError):
            pass  # the journal only improves a report; a pull does not fail for it

    def end(self, image: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(image))

    def interrupted(self) -> list[tuple[str, float | None]]:
        """Pulls noted by processes that are gone (their notes are removed), oldest first."""
        found = []
        try:
            if os.lstat(self.folder).st_uid != os.getuid():
                return []  # not a folder of ours: nothing in it is ours to report
            names = [n for n in os.listdir(self.folder) if n.startswith("pull-") and n.endswith(".json")]
        except OSError:
            return []
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                with open(path) as f:
                    record = json.load(f)
                pid = int(record["pid"])
                if host.process_start(pid) is not None and host.process_start(pid) == _start(record.get("start")):
                    continue  # still pulling (another server, or `jupyter gpuenv pull`)
                os.unlink(path)
                found.append((str(record["image"]), record.get("since")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda item: item[1] or 0)


def progress_row(progress: PullProgress) -> dict[str, Any]:
    """What the panel shows of a pull under way: bytes done and total, percent, rate, time left, layers."""
    row = progress.as_dict()
    del row["error"], row["error_code"]  # a pull under way has none; a failed one is pull_error
    return row
