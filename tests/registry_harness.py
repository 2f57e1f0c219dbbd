"""What the pull tests share: the CI registry, a several-layer test image in it, and a proxy in front of it.

Loaded as a pytest plugin by conftest.py (fixtures ``pull_tag`` and ``registry_proxy``).

The registry is Debian's docker-registry that .ci/start-registry.sh serves on 127.0.0.1 (GPUENV_TEST_REGISTRY).
Nothing here ever names another registry: every image that could be pulled is ``127.0.0.1:<port>/gpuenv-test/…``.

The test image is the kernel image plus four layers of seeded random bytes with fixed times, so the layers have
the same digests on every run: the registry stores them once, however often the tests push. Pulled from the
registry itself it takes a second; through :class:`RegistryProxy` it arrives at a chosen rate (so progress can
be watched), can stall, can refuse connections (a registry that is down) or can ask for credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import docker
import pytest

REGISTRY = os.environ.get("GPUENV_TEST_REGISTRY", "127.0.0.1:5055")
BASE_IMAGE = os.environ.get("GPUENV_TEST_IMAGE", "gpuenv-test-kernel:latest")
REPOSITORY = "gpuenv-test/layered"
LABEL = "io.jupyter.gpuenv.test-pull"
LAYER_MB = (20, 25, 30, 35)  # random, so incompressible: ~110 MB to download

assert re.fullmatch(r"127\.0\.0\.1:\d+", REGISTRY), "the test registry must be on 127.0.0.1"


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=3) as response:
            return response.headers.get("Docker-Distribution-Api-Version") is not None
    except OSError:
        return False


def need_registry() -> None:
    if registry_answers():
        return
    message = f"no registry answers on {REGISTRY}: bash .ci/start-registry.sh starts the CI one"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def remove_test_images(client: docker.DockerClient) -> None:
    """Every local copy of the test image, by its label: tagged by any test, or left untagged by one whose
    kernel still ran when its tags were removed (its layers would make the next pull find them "Already exists")."""
    for image in client.images.list(all=True, filters={"label": LABEL}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # in use by a container still
            client.api.remove_image(image.id, force=True)


def layered_tag(client: docker.DockerClient) -> str:
    """The test image's tag in the registry, pushed unless it is there already (one per kernel image build)."""
    tag = "v2-" + client.images.get(BASE_IMAGE).id.split(":")[-1][:12]
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{REPOSITORY}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5):
            return tag
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    push_layered_image(client, tag)
    return tag


def push_layered_image(client: docker.DockerClient, tag: str) -> str:
    """Build the test image from the kernel image (one ``docker commit`` per layer), push it, drop it here.

    Returns its name in the registry. Afterwards only the registry has the random layers, so a pull downloads
    them (the base layer is the kernel image's, which stays: "Already exists").
    """
    image = BASE_IMAGE
    built = []
    for i, mb in enumerate(LAYER_MB):
        code = (
            f"import os, random; random.seed({i}); d = '/gpuenv-pull-test'; os.makedirs(d, exist_ok=True); "
            f"p = d + '/layer{i}'; open(p, 'wb').write(random.randbytes({mb} << 20)); "
            "os.utime(p, (0, 0)); os.utime(d, (0, 0))"
        )
        container = client.containers.create(image, ["python3", "-c", code], network_mode="none")
        try:
            container.start()
            assert container.wait(timeout=120)["StatusCode"] == 0
            image = container.commit(changes=[f"LABEL {LABEL}=1"]).id
            built.append(image)
        finally:
            container.remove(force=True)
    name = f"{REGISTRY}/{REPOSITORY}:{tag}"
    client.api.tag(image, f"{REGISTRY}/{REPOSITORY}", tag)
    for event in client.api.push(f"{REGISTRY}/{REPOSITORY}", tag=tag, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(f"pushing {name} failed: {event['error']}")
    client.api.remove_image(name)
    for image_id in reversed(built):
        with contextlib.suppress(docker.errors.NotFound):  # gone with the tag already
            client.api.remove_image(image_id)
    return name


@dataclass
class RegistryProxy:
    """A TCP proxy on 127.0.0.1 in front of the test registry, in its own thread.

    ``rate``: bytes per second from the registry to the engine (all connections together). ``paused``: forward
    nothing (a registry that stalls). ``auth_required``: answer every request 401 with a Basic challenge, as a
    registry that wants a login does. ``stop()`` closes it: the port then refuses connections.
    """

    rate: float = 20e6
    auth_required: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen from the engine

    def __post_init__(self) -> None:
        self.upstream_host, upstream_port = REGISTRY.split(":")
        self.upstream_port = int(upstream_port)
        self._unpaused: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="registry-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def image(self, tag: str) -> str:
        return f"{self.address}/{REPOSITORY}:{tag}"

    def manifest_requests(self, tag: str, method: str = "HEAD") -> int:
        """Requests for the tag's manifest: the engine asks with HEAD, once per pull it makes."""
        return sum(1 for m, path in self.requests if m == method and path.endswith(f"/manifests/{tag}"))

    def blob_requests(self) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and "/blobs/sha256:" in path)

    def pause(self) -> None:
        self._loop.call_soon_threadsafe(self._unpaused.clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._unpaused.set)

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- the proxy's own loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._tokens, self._stamp = 0.0, time.monotonic()
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        if not re.match(rb"[A-Z]+ /", first):  # a TLS hello (clients try https first): a plain-http server hangs up
            writer.close()
            return
        if self.auth_required:
            await self._ask_for_credentials(first, reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._upstream(first, reader, up_writer), self._downstream(up_reader, writer))

    async def _upstream(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = first
        try:
            while data or (data := await reader.read(65536)):
                for method, path in re.findall(rb"(?m)^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r$", data):
                    self.requests.append((method.decode(), path.decode()))
                writer.write(data)
                await writer.drain()
                data = b""
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(16384):
                await self._unpaused.wait()
                await self._take(len(data))
                writer.write(data)
                await writer.drain()
                self.sent += len(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _take(self, n: int) -> None:
        """A token bucket shared by every connection: at most ``rate`` bytes per second in all."""
        while True:
            now = time.monotonic()
            self._tokens = min(self.rate / 4, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= n:
                self._tokens -= n
                return
            await asyncio.sleep((n - self._tokens) / self.rate)

    async def _ask_for_credentials(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}'
        buffered = first
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    more = await reader.read(65536)
                    if not more:
                        return
                    buffered += more
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode(errors="replace").split(" ")
                if len(request_line) >= 2:
                    self.requests.append((request_line[0], request_line[1]))
                writer.write(
                    b"HTTP/1.1 401 Unauthorized\r\n"
                    b"Content-Type: application/json; charset=utf-8\r\n"
                    b"Docker-Distribution-Api-Version: registry/2.0\r\n"
                    b'Www-Authenticate: Basic realm="gpuenv-test"\r\n'
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
def pull_tag(docker_client):
    """The test image's tag in the CI registry; no copy of it on the engine before or after the test."""
    need_registry()
    remove_test_images(docker_client)
    yield layered_tag(docker_client)
    remove_test_images(docker_client)


@pytest.fixture
def registry_proxy():
    """The registry at 15 MB/s: a pull of the test image takes ~8 s, long enough to watch."""
    proxy = RegistryProxy(rate=15e6)
    yield proxy
    proxy.stop()
