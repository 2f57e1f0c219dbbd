"""The broker's Prometheus endpoint and usage ledger: every user's kernels on a shared GPU host, the admin's view.

A single-user server exports its own kernels (usage.metrics); on a shared host the broker knows every kernel, so one
scrape target per host tells who holds which GPU. The series, the meter and the ledger are the server's own
(usage/); only the rows differ: one per lease in the broker's book, named by its owner, environment, container and
notebook. GPU memory is found by container: the sampler thread reads each GPU
process's cgroup (:func:`attribute`), and a lease names its container (:func:`kernel_usages`, pure).

The endpoint listens on loopback unless the administrator says otherwise, and asks for a bearer token that only
root can read: the series name every user's notebooks. A scrape reads memory only (the view of the last tick).
Its default port is a privileged one, so no user can listen there while the broker is down and collect the token
Prometheus sends; a port that is taken is tried again every BIND_RETRY seconds, and kernels are served meanwhile.
Idle connections are closed after IDLE_TIMEOUT seconds and at most MAX_CONNECTIONS are served at once: no one who
can reach the port can take the broker's files.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.web import Application, RequestHandler

from jupyter_gpuenv import host
from jupyter_gpuenv.broker.leases import KernelLease
from jupyter_gpuenv.gpus import attribution
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.usage.counter import KernelUsage, UsageCounter
from jupyter_gpuenv.usage.ledger import Ledger
from jupyter_gpuenv.usage.metrics import PREFIX, Collector

log = logging.getLogger("jupyter_gpuenv.broker")
BIND_RETRY = 10.0
IDLE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
FIRST_FLUSH = 5.0  # seconds after start before the ledger is first written
UNAUTHORIZED = (
    "The broker's metrics need its token: send 'Authorization: Bearer <token>', the token being the contents of "
    "c.Broker.metrics_token_file on the GPU host.\n"
)


def attribute(
    snapshot: Snapshot, leases: Iterable[KernelLease], cgroup_of: Callable[[int], str] = attribution.read_cgroup
) -> None:
    """Name each GPU process's container, and its kernel where a lease holds that container (the sampler thread:
    it reads ``/proc``)."""
    index = attribution.KernelIndex(by_container={k.container_id: k.kernel_id for k in leases if k.container_id})
    attribution.attribute(snapshot, index, cgroup_of=cgroup_of, parent_of=lambda pid: None)  # containers only


def kernel_usages(leases: Iterable[KernelLease], snapshot: Snapshot) -> list[KernelUsage]:
    """What every started kernel holds, from a snapshot :func:`attribute` has named; pure."""
    index_of = {g.uuid: g.index for g in snapshot.gpus}
    memory: dict[str, int] = {}
    for gpu in snapshot.gpus:
        for proc in gpu.processes:
            if proc.container_id:
                memory[proc.container_id] = memory.get(proc.container_id, 0) + (proc.used_memory or 0)
    return [
        KernelUsage(
            kernel_id=lease.kernel_id,
            notebook=lease.notebook,
            environment=lease.environment,
            container=lease.container_id[:12],
            user=lease.user,
            gpus=tuple(index_of.get(uuid, -1) for uuid in lease.gpus),  # -1: held, its index unknown without NVML
            gpu_memory=memory.get(lease.container_id, 0) if snapshot.available else None,
            parked=bool(getattr(lease, "parked", False)),
        )
        for lease in leases
        if lease.container_id  # started: a start under way holds nothing yet
    ]


class BrokerUsage(UsageCounter):
    """Every kernel in the broker's lease book, each under its owner's name."""

    def __init__(self, *, book: Iterable[KernelLease], **kwargs) -> None:
        super().__init__(**kwargs)
        self.book = book

    def start(self) -> None:
        self._callback = PeriodicCallback(self.tick, self.sampler.interval * 1000)
        self._callback.start()

    async def usages(self, snapshot: Snapshot) -> list[KernelUsage]:
        return kernel_usages(self.book, snapshot)


class WarmCollector:
    """Warm containers by environment, everyone's (broker/warm.py): not anyone's kernel, so never in the kernel
    series nor in the ledger, which charge nothing for them."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(PREFIX + "warm_kernels", "Warm kernel containers kept ready on this host "
                                   "(no one's kernel until a start takes one)", labels=["environment"])  # fmt: skip
        for environment, count in sorted(self.counts().items()):
            family.add_metric([environment], count)
        return [family]


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def read_or_make_token(path: str) -> str:
    """The token in ``path``; made (64 hex digits, 0600, this user's) if there is none. One readable by everyone,
    or writable by anyone else, is refused: it would let every user of the host read everyone's usage."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        log.info("gpuenv broker: made the metrics token %s (give Prometheus a copy, or chgrp prometheus)", path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:  # a symbolic link, a folder
        raise SystemExit(f"gpuenv broker: cannot read the metrics token {path}: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o027:
            raise SystemExit(
                f"gpuenv broker: the metrics token {path} must be a file of the broker's own user that no one else "
                "may change and not everyone may read: chmod 0600 (or 0640 with group prometheus)"
            )
        token = f.read().strip()
    if not token:
        raise SystemExit(f"gpuenv broker: the metrics token {path} is empty: remove it and the broker makes one")
    return token


class _Scrape(RequestHandler):
    def initialize(self, registry: CollectorRegistry, token: bytes) -> None:
        self.registry, self.token = registry, token

    def get(self) -> None:
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="jupyter-gpuenv broker"')
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(UNAUTHORIZED)
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.registry))


class BrokerMetrics:
    """The broker's counter of every kernel's usage, its ledger, and its /metrics on ``c.Broker.metrics_port``."""

    def __init__(
        self, settings, book: Iterable[KernelLease], sampler, warm: Callable[[], dict[str, int]] = dict
    ) -> None:
        self.settings = settings
        self.warm = warm
        if settings.metrics_port and not is_loopback(settings.metrics_address) and not settings.metrics_public:
            raise ValueError(
                f"c.Broker.metrics_address = {settings.metrics_address!r} is not a loopback address: the metrics "
                "name every user's notebooks. Set c.Broker.metrics_public = True to serve them there anyway, or "
                "scrape 127.0.0.1 from a Prometheus on this host."
            )
        ledger = Ledger(settings.usage_dir) if settings.usage_dir else None
        self.usage = BrokerUsage(
            book=book, sampler=sampler, ledger=ledger, flush_interval=settings.usage_flush_interval, log=log
        )
        self.server: HTTPServer | None = None
        self._binding: asyncio.Future | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.metrics_port or self.usage.ledger)

    async def start(self) -> None:
        if not self.enabled:
            return
        if self.usage.ledger is not None:
            # the folder from the start, so `usage --dir` finds a ledger (empty) rather than no folder; the first
            # records soon after, not a whole flush interval later
            host.private_folder(str(self.usage.ledger.folder), parents=True)
            self.usage.flush_soon(FIRST_FLUSH)
        self.usage.start()
        if not self.settings.metrics_port:
            return
        token = read_or_make_token(self.settings.metrics_token_file).encode()
        collector = Collector()
        collector.source = self.usage
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        registry.register(WarmCollector(self.warm))
        app = Application([("/metrics", _Scrape, {"registry": registry, "token": token})], log_function=_quiet)
        self.server = _BoundedServer(app, idle_connection_timeout=IDLE_TIMEOUT, body_timeout=IDLE_TIMEOUT)
        port = self.settings.metrics_port
        if port >= unprivileged_port_start():
            log.warning("gpuenv broker: metrics port %d is one any user may listen on while the broker is down, and "
                        "then receive Prometheus's token: a port below %d is safer (docs/metrics.md)", port,
                        unprivileged_port_start())  # fmt: skip
        self._binding = asyncio.ensure_future(self._bind())

    async def _bind(self) -> None:
        """Listen on the metrics port; while another process holds it, say so once and try again."""
        address, port = self.settings.metrics_address, self.settings.metrics_port
        said = False
        while self.server is not None:
            try:
                self.server.listen(port, address)
            except OSError as exc:
                if not said:
                    log.error("gpuenv broker: cannot serve metrics on %s:%d (%s): kernels are served meanwhile; "
                              "trying again every %.0f s", address, port, exc.strerror, BIND_RETRY)  # fmt: skip
                    said = True
                await asyncio.sleep(BIND_RETRY)
                continue
            log.info("gpuenv broker: metrics on http://%s:%d/metrics (bearer token in %s)", address, port,
                     self.settings.metrics_token_file)  # fmt: skip
            return

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            if self._binding is not None:
                self._binding.cancel()
            server.stop()
            await server.close_all_connections()
        if self.enabled:
            await self.usage.stop()  # writes what the ledger has not got yet


class _BoundedServer(HTTPServer):
    """At most MAX_CONNECTIONS at once: one more is closed as it comes (a scrape needs one)."""

    def handle_stream(self, stream, address) -> None:  # noqa: ANN001 - tornado's own signature
        if len(self._connections) >= MAX_CONNECTIONS:
            stream.close()
            return
        super().handle_stream(stream, address)


def unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    """The lowest port any user may listen on (1024 unless the host lowered it)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


def _quiet(handler: RequestHandler) -> None:
    """No access log: Prometheus scrapes every few seconds."""
