"""Warm kernels on a shared host: each person's, made ahead as their next kernel would be, handed only to them.

``c.Broker.warm_kernels = {"torch": 1}`` asks for that many warm containers of each named environment **per
person**, within ``c.Broker.max_warm_kernels`` for the whole host (shared out one at a time in turn, :func:`shares`).

Who gets them (:func:`live`): a person whose Jupyter server runs. Every server announces itself (``keep_warm`` with
its root folder, every few seconds, from its own process: SO_PEERCRED names it); the broker remembers that process
by pid and start time, and the person stops counting the moment that process is gone (a reused pid is another
process). A person's first live server keeps the pool; a second one of theirs (named servers) starts cold, and a
new process replaces a dead one at most every QUIET seconds (announcing from throwaway processes buys nothing). Only
environments their policy allows are kept, and only in peer mode (hub-token servers share one uid: not built).

What a warm kernel is: a container made by the same request a cold start of theirs would make (their uid and gid,
their home and the server's root pinned and staged by descriptor, no network, the environment's limits), running
``containers.warm.WARM_LAUNCHER``, in its own socket folder ``sockets/<user>/warm-<hex>/``, which the broker makes
root's, fills (FIFO, client lock) and only then gives to the person (``folders.make_warm_folder``).

The client lock: a kernel ends when its client's lock goes (``containers.spec.CLIENT_LOCK``). While warm, the
broker is the client: it holds the lock, so a warm kernel ends by itself if the broker dies, whatever the way. A
start takes it over without a gap: the broker sends its open lock to the person's server with the answer
(SCM_RIGHTS); the server's descriptor is the same open file, so the lock is never free, and from then on it is that
server's, as for a cold start. The broker's dead-client check (``daemon._client_gone``) reads the lease book, which
has no warm kernel until a start binds one (then with the taker's pid).

A start (``take_warm``) binds it: kernel id, notebook, server pid and GPUs go into the lease book at that moment
(never into labels, which keep the warm name); the pool refills in the background. Policy applies as for a cold
start (a warm kernel is not a kernel until taken; the take is refused when the start would be). A warm kernel whose
environment definition or image changed, whose person's policy no longer allows it, or whose person's server ended,
is removed, and so is one a start of theirs could not take now (they are at their max_kernels or max_gpus).
Exclusive environments: a warm kernel is made on a GPU no lease and no other warm kernel holds, and
holds only a soft claim: a cold start may take that GPU (warm kernels are not in the book), the warm one is then
discarded and made again on another free GPU. The broker's stop removes every warm container; its start removes
any it finds (no lease names them: ``daemon.recover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_gpuenv import host
from jupyter_gpuenv.broker import folders as broker_folders
from jupyter_gpuenv.broker.leases import RUNNING, KernelLease
from jupyter_gpuenv.broker.policy import Rule, check_start
from jupyter_gpuenv.containers import labels
from jupyter_gpuenv.containers.claims import PREFIX
from jupyter_gpuenv.containers.spec import CLIENT_LOCK, AssignedGpu
from jupyter_gpuenv.containers.warm import FIFO, command, definition
from jupyter_gpuenv.engines.base import KernelRequest, image_facts_of
from jupyter_gpuenv.environments import preflight, runtime
from jupyter_gpuenv.environments.definition import Environment
from jupyter_gpuenv.errors import GpuEnvError, NotPermitted

log = logging.getLogger("jupyter_gpuenv.broker")
REFILL_INTERVAL = 2.0  # seconds between two looks at the pools (an announce or a take looks at once)
QUIET = 10.0  # seconds a person's announcing process must have been theirs before another may replace it


# -- the rules (pure) ----------------------------------------------------------------------------------------------
@dataclass
class Presence:
    """A person's running server, as it announced itself."""

    user: str
    pid: int
    started: int  # the process's start time (clock ticks since boot) when it announced
    root_dir: str
    caller: Any  # the daemon's Caller for that process: who the warm kernels are made as
    at: float = 0.0  # when it was first heard (time.monotonic)


def announce(presences: dict[str, Presence], new: Presence, start_of: Callable[[int], int], now: float) -> bool:
    """Record ``new``; False (not recorded) when another live server of the same person keeps the pool, or when the
    person's process changed less than QUIET seconds ago: one that announces and exits, again and again, cannot make
    the broker make containers faster than that (a real server announces again 3 s later anyway)."""
    current = presences.get(new.user)
    if current is not None and current.pid == new.pid:
        new.at = current.at
    elif current is not None and (start_of(current.pid) == current.started or now - current.at < QUIET):
        return False
    else:
        new.at = now
    presences[new.user] = new
    return True


def live(presences: dict[str, Presence], start_of: Callable[[int], int]) -> dict[str, Presence]:
    """The people whose announcing server still runs: the same pid with the same start time."""
    return {user: p for user, p in presences.items() if p.started and start_of(p.pid) == p.started}


def shares(wants: dict[str, list[tuple[str, int]]], cap: int) -> dict[tuple[str, str], int]:
    """How many warm kernels each (person, environment) gets of ``cap`` in all. In rounds: each person, in the order
    they announced, gets one more of the first environment they still want more of; so everyone has one before
    anyone has two, and one person's many cannot crowd out another's one."""
    given: dict[tuple[str, str], int] = {}
    total = 0
    while total < cap:
        before = total
        for user, envs in wants.items():
            want = next(((user, env) for env, count in envs if given.get((user, env), 0) < count), None)
            if want is not None and total < cap:
                given[want] = given.get(want, 0) + 1
                total += 1
        if total == before:
            break
    return given


def wanted(warm_kernels: dict[str, int], environments: dict[str, Environment], rule: Rule) -> list[tuple[str, int]]:
    """The (environment, count) one person's policy lets them keep warm."""
    return [(name, count) for name, count in sorted(warm_kernels.items())
            if count > 0 and name in environments and rule.allows(name) and rule.max_kernels != 0]  # fmt: skip


# -- the pool ------------------------------------------------------------------------------------------------------
@dataclass
class WarmContainer:
    name: str  # warm-<hex>: its container's kernel id label and its socket folder's name
    user: str
    environment: str
    definition: str  # containers.warm.definition of the environment it was made of
    image_id: str | None
    root_dir: str  # the announcing server's root folder: only a start from that root takes it
    folder: str
    container_id: str
    gpu_mode: str
    gpus: list[AssignedGpu] = field(default_factory=list)
    exclusive: bool = False
    lock: int | None = None  # the broker's open client lock, until a start takes it over

    def close_lock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


@dataclass
class HandedLock:
    """An answer that carries an open file to the caller (sent with SCM_RIGHTS by the daemon, then closed here)."""

    answer: dict[str, Any]
    fd: int


class BrokerWarm:
    """Every person's warm kernels on this host (``daemon`` is the ``BrokerDaemon``)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.presences: dict[str, Presence] = {}
        self.kernels: list[WarmContainer] = []
        self._wake = asyncio.Event()
        self._said: set[str] = set()
        self._stopped = False

    @property
    def enabled(self) -> bool:
        s = self.daemon.settings
        return bool(s.warm_kernels) and s.max_warm_kernels > 0 and s.identify == "peer"

    # -- what people ask -------------------------------------------------------------------------------------------
    def keep_warm(self, caller: Any, root_dir: str, start_of: Callable[[int], int]) -> None:
        if not self.enabled or caller.uid == 0 or caller.volume:
            return
        presence = Presence(caller.name, caller.pid, start_of(caller.pid), os.path.abspath(root_dir), caller)
        known = self.presences.get(caller.name)
        if announce(self.presences, presence, start_of, time.monotonic()) and (
            known is None or known.pid != presence.pid
        ):
            self._wake.set()

    def ready(self, user: str, environment: str) -> int:
        """How many of ``user``'s warm kernels of ``environment`` a start would take now."""
        return sum(1 for w in self.kernels if w.user == user and w.environment == environment and self._ready(w))

    def counts(self) -> dict[str, int]:
        """Warm containers by environment, everyone's (the metrics)."""
        out: dict[str, int] = {}
        for w in self.kernels:
            out[w.environment] = out.get(w.environment, 0) + 1
        return out

    @staticmethod
    def _ready(w: WarmContainer) -> bool:
        # lstat: the folder is the person's; a link they put there is not followed, and only says "not ready"
        with contextlib.suppress(OSError):
            os.lstat(os.path.join(w.folder, FIFO + ".ready"))
            return True
        return False

    async def take(
        self, caller: Any, kernel_id: str, env: Environment, root_dir: str, notebook: str, start_of: Callable
    ) -> HandedLock | None:
        """The caller's ready warm kernel of ``env``, bound to ``kernel_id`` now; None when there is none, or when
        the policy would refuse this start (the cold start that follows says why)."""
        d = self.daemon
        if d.book.get(caller.name, kernel_id) is not None:
            return None  # a restart keeps its own folder
        root_dir = os.path.abspath(root_dir)
        rule = d.policy.rule_for(caller.name, list(caller.groups))
        async with d.lock:
            for w in [
                w for w in self.kernels if (w.user, w.environment, w.root_dir) == (caller.name, env.name, root_dir)
            ]:
                if w.definition != definition(env) or not self._ready(w):
                    continue
                mine = d.book.of_user(caller.name)
                try:
                    check_start(
                        rule, caller.name, env.name, d.gpus_wanted(env), sum(len(k.gpus) for k in mine), len(mine)
                    )
                except NotPermitted:
                    return None
                if w.exclusive and any(d.book.holdings().held_by_anyone(g.uuid) for g in w.gpus):
                    continue  # its soft claim was taken: the refill replaces it
                lease = KernelLease(kernel_id, caller.uid, caller.name, env.name, w.folder, state=RUNNING,
                                    container_id=w.container_id, gpus=[g.uuid for g in w.gpus], exclusive=w.exclusive,
                                    server_pid=caller.pid, server_started=start_of(caller.pid),
                                    notebook=notebook[:1000])  # fmt: skip
                d.book.put(lease)
                d.bound_folders[(caller.name, kernel_id)] = w.folder
                d.released.pop((caller.name, kernel_id), None)
                self.kernels.remove(w)
                break
            else:
                return None
        self._wake.set()
        log.info("gpuenv broker: %s's kernel %s took warm kernel %s (%s)", caller.name, kernel_id, w.name, env.name)
        answer = {"name": w.name, "socket_dir": w.folder, "container_id": w.container_id, "gpu_mode": w.gpu_mode,
                  "gpus": [asdict(g) for g in w.gpus]}  # fmt: skip
        fd, w.lock = w.lock, None
        assert fd is not None
        return HandedLock(answer, fd)

    # -- the background --------------------------------------------------------------------------------------------
    async def tend(self, stop: asyncio.Event, start_of: Callable[[int], int]) -> None:
        while not stop.is_set() and self.enabled:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REFILL_INTERVAL)
            self._wake.clear()
            try:
                await self.refill(start_of)
            except Exception:  # a round that failed must not end the pools: say so, look again later
                self._say("refill", "gpuenv broker: a round of warm kernels failed", exc_info=True)

    async def refill(self, start_of: Callable[[int], int]) -> None:
        """Drop what no one may have any more, then make what is missing (within the host's cap)."""
        d = self.daemon
        people = live(self.presences, start_of)
        wants = {user: self._wanted(user, p) for user, p in people.items()}
        share = shares(wants, d.settings.max_warm_kernels)
        images: dict[str, str | None] = {}
        for name in {env for _, env in share}:
            with contextlib.suppress(GpuEnvError):
                images[name] = (await image_facts_of(d.docker, d.environments[name])).id
        held = d.book.holdings()
        kept: dict[tuple[str, str], int] = {}
        for w in list(self.kernels):
            owner, env = people.get(w.user), d.environments.get(w.environment)
            key = (w.user, w.environment)
            gone = (
                owner is None
                or owner.root_dir != w.root_dir
                or env is None
                or definition(env) != w.definition
                or (w.environment in images and images[w.environment] != w.image_id)
                or kept.get(key, 0) >= share.get(key, 0)
                or (w.exclusive and any(held.held_by_anyone(g.uuid) for g in w.gpus))
                or not await self._alive(w)
            )
            if gone:
                await self.discard(w)
            else:
                kept[key] = kept.get(key, 0) + 1
        for (user, name), count in share.items():
            while kept.get((user, name), 0) < count and not self._stopped:
                try:
                    self.kernels.append(await self._make(self.presences[user], d.environments[name], images.get(name)))
                except (GpuEnvError, OSError) as exc:
                    self._say(f"{user}/{name}/{exc}", f"gpuenv broker: no warm kernel of {name!r} for {user}: {exc}")
                    break
                kept[(user, name)] = kept.get((user, name), 0) + 1

    def _wanted(self, user: str, p: Presence) -> list[tuple[str, int]]:
        """What ``user`` may keep warm: what their policy allows, and only what a start of theirs could take now (a
        person at their max_kernels or max_gpus would be refused: a warm kernel for them would only hold a GPU)."""
        d = self.daemon
        rule = d.policy.rule_for(user, list(p.caller.groups))
        mine = d.book.of_user(user)
        out = []
        for name, count in wanted(d.settings.warm_kernels, d.environments, rule):
            try:
                check_start(rule, user, name, d.gpus_wanted(d.environments[name]), sum(len(k.gpus) for k in mine),
                            len(mine))  # fmt: skip
            except NotPermitted:
                continue
            out.append((name, count))
        return out

    async def _alive(self, w: WarmContainer) -> bool:
        try:
            return (await self.daemon.docker.state(w.container_id)).running
        except GpuEnvError:
            return True  # the engine did not answer: look again next time

    def _say(self, key: str, message: str, **kwargs: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, **kwargs)

    async def _make(self, p: Presence, env: Environment, image_id: str | None) -> WarmContainer:
        d, caller = self.daemon, p.caller
        verdict = await d._verdict(env)
        if verdict.state != preflight.READY:  # a missing image is pulled by a start, not by a warm kernel
            raise NotPermitted(verdict.reason or verdict.state)
        name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        folder, lock = self._folder(caller, name)
        warm = WarmContainer(name, caller.name, env.name, definition(env), image_id, p.root_dir, folder, "", "none",
                             exclusive=env.gpus.kind == "exclusive", lock=lock)  # fmt: skip
        try:
            pinned = d._pin_folders(caller, p.root_dir, caller.home)
            try:
                root_dir = next(iter(pinned))
                held = d.book.holdings()
                for other in self.kernels:  # a soft claim is still no place for two warm kernels
                    for g in other.gpus if other.exclusive else ():
                        held.add(g.uuid, other.name, True)
                with broker_folders.staged(d.staging, pinned) as sources:
                    request = KernelRequest(
                        environment=env,
                        kernel_id=name,
                        user=host.User(caller.name, caller.uid, caller.gid, caller.home),
                        server=host.Server(d.hostname, caller.pid),
                        root_dir=root_dir,
                        cwd=root_dir,
                        socket_dir=folder,
                        connection_file=os.path.join(folder, "connection.json"),
                        inventory=list(d.sampler.latest.gpus),
                        runtime_dir=runtime.runtime_path(d.settings.kernel_runtime_dir, verdict.runtime_version)
                        if verdict.runtime_version
                        else None,
                        labels={labels.BROKER: d.settings.socket},
                        held=held,
                        shared_network_namespace=d.settings.shared_network_namespace,
                        command=command(
                            env, os.path.join(folder, FIFO), list(d.settings.warm_imports.get(env.name, []))
                        ),
                        sources=sources,
                    )
                    placement = await d.docker.start_kernel(request)
            finally:
                for pin in pinned.values():
                    pin.close()
        except BaseException:
            warm.close_lock()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        warm.container_id, warm.gpu_mode, warm.gpus = placement.container_id, placement.gpu_mode, list(placement.gpus)
        log.info("gpuenv broker: a warm kernel of %r for %s in %s", env.name, caller.name, placement.container_id[:12])
        return warm

    def _folder(self, caller: Any, name: str) -> tuple[str, int]:
        """sockets/<user>/<name>, made through descriptors (``folders.make_warm_folder``); its lock's descriptor."""
        sockets = os.open(self.daemon.sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mine = broker_folders.open_folder(sockets, caller.folder, mode=0o711, owner=(0, 0), adopt=True)
        finally:
            os.close(sockets)
        try:
            lock = broker_folders.make_warm_folder(mine, name, (caller.uid, caller.gid), FIFO, CLIENT_LOCK)
        finally:
            os.close(mine)
        return os.path.join(self.daemon.sockets, caller.folder, name), lock

    async def discard(self, w: WarmContainer) -> None:
        with contextlib.suppress(ValueError):
            self.kernels.remove(w)
        with contextlib.suppress(GpuEnvError):
            await self.daemon.docker.remove(w.container_id)
        shutil.rmtree(w.folder, ignore_errors=True)
        w.close_lock()

    async def stop(self) -> None:
        """The broker stops: no warm container stays behind."""
        self._stopped = True
        for w in list(self.kernels):
            await self.discard(w)
