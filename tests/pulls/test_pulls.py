"""Images from a registry: progress a person can watch, one pull for every waiting kernel, clear failures.

The folding of the engine's events, the reading of its errors and the sharing of pulls are tested on their own
first. Then the real thing: Debian's docker-registry on 127.0.0.1 (.ci/start-registry.sh), a several-layer image
pushed there, and a proxy in front of it that sets the pace, stalls, refuses or asks for credentials
(tests/registry_harness.py). Only 127.0.0.1 images are ever pulled.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import docker
import pytest
from container_harness import execute, install_spec, our_containers, start, start_error
from tornado.httpclient import HTTPClientError

from jupyter_gpuenv import errors
from jupyter_gpuenv.engines.docker.engine import DockerEngine, _insecure
from jupyter_gpuenv.pulls import progress as pulls
from jupyter_gpuenv.pulls import registry

pytestmark = pytest.mark.timeout(180)

MB = 1_000_000


# -- the events of one pull, folded -----------------------------------------------------------------------
def feed(tally, t, status, layer, current=None, total=None):
    event = {"status": status, "id": layer, "progressDetail": {}}
    if current is not None:
        event["progressDetail"] = {"current": current, "total": total}
    tally.feed(event, t)


def test_layer_events_add_up_to_bytes_percent_rate_and_time_left():
    tally = pulls.PullTally("127.0.0.1:5000/x:1", now=0.0)
    tally.expect_layers({"sha256:" + "a" * 64: 30 * MB, "sha256:" + "b" * 64: 10 * MB, "sha256:" + "c" * 64: 5 * MB})
    before = tally.progress(0.5)
    assert (before.phase, before.bytes_total, before.layers_total, before.percent) == ("resolving", 45 * MB, 3, 0.0)
    tally.feed({"status": "Pulling from x", "id": "1"}, 0.5)  # the tag, not a layer
    feed(tally, 0.6, "Already exists", "c" * 12)
    feed(tally, 0.6, "Pulling fs layer", "a" * 12)
    feed(tally, 0.6, "Waiting", "b" * 12)
    for t in range(1, 6):  # 5 MB/s on layer a
        feed(tally, float(t), "Downloading", "a" * 12, t * 5 * MB, 30 * MB)
    p = tally.progress(5.0)
    assert p.phase == "downloading" and p.bytes_done == 25 * MB and p.bytes_total == 40 * MB  # c is here already
    assert p.percent == 62.5 and p.layers_done == 1 and p.layers_total == 3
    assert p.rate_bytes_per_s == pytest.approx(5 * MB, rel=0.05)
    assert p.eta_s == pytest.approx(3.0, rel=0.05)  # 15 MB left at 5 MB/s
    feed(tally, 6.0, "Download complete", "a" * 12)
    feed(tally, 6.5, "Downloading", "b" * 12, 10 * MB, 10 * MB)
    feed(tally, 7.0, "Verifying Checksum", "b" * 12)
    feed(tally, 7.0, "Extracting", "a" * 12, 1 * MB, 30 * MB)
    p = tally.progress(7.0)
    assert (p.phase, p.bytes_done, p.percent, p.eta_s) == ("extracting", 40 * MB, 100.0, None)
    feed(tally, 8.0, "Pull complete", "a" * 12)
    feed(tally, 8.0, "Downloading", "a" * 12, 1, 30 * MB)  # a late event never takes a finished layer back
    feed(tally, 9.0, "Pull complete", "b" * 12)
    tally.finish()
    p = tally.progress(9.0)
    assert (p.phase, p.layers_done, p.bytes_done, p.active) == ("done", 3, 40 * MB, False)
    assert json.dumps(p.as_dict())  # what GET environments sends


def test_without_sizes_from_the_registry_the_total_waits_for_every_layer():
    tally = pulls.PullTally("x:1", now=0.0)
    feed(tally, 0.1, "Pulling fs layer", "a" * 12)
    feed(tally, 0.1, "Pulling fs layer", "b" * 12)
    feed(tally, 1.0, "Downloading", "a" * 12, 1 * MB, 4 * MB)
    p = tally.progress(1.0)
    assert (p.bytes_done, p.bytes_total, p.percent, p.eta_s) == (1 * MB, None, None, None)  # b's size is unknown
    feed(tally, 2.0, "Download complete", "b" * 12)  # a small layer may finish without "Downloading"
    assert tally.progress(2.0).bytes_total == 4 * MB


def test_idle_counts_from_the_last_byte_not_the_last_message():
    tally = pulls.PullTally("x:1", now=0.0)
    feed(tally, 1.0, "Downloading", "a" * 12, 1 * MB, 9 * MB)
    for t in range(2, 8):  # the engine retries a broken download: messages, no bytes
        tally.feed({"status": f"Retrying in {8 - t} seconds", "id": "a" * 12}, float(t))
        feed(tally, float(t), "Downloading", "a" * 12, 1 * MB, 9 * MB)
    assert tally.idle_for(8.0) == 7.0
    feed(tally, 8.5, "Extracting", "a" * 12, 2 * MB, 9 * MB)  # unpacking is progress too
    assert tally.idle_for(9.0) == 0.5


@pytest.mark.parametrize(
    "words, cls, says",
    [
        (
            "manifest for 127.0.0.1:5055/gpuenv-test/layered:nope not found: manifest unknown: manifest unknown",
            errors.UnknownImage,
            "no tag 'nope'",
        ),
        (
            'Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused',
            errors.RegistryUnreachable,
            "check that it runs",
        ),
        (
            'Head "http://127.0.0.1:5055/v2/x/manifests/v1": no basic auth credentials',
            errors.RegistryAuthRequired,
            "docker login",
        ),
        (
            "pull access denied for privateorg/x, repository does not exist or may require 'docker login': denied: "
            "requested access to the resource is denied",
            errors.RegistryAuthRequired,
            "check the image name",
        ),
        ("write /var/lib/docker/tmp/GetImageBlob1: no space left on device", errors.DiskTooSmall, "free space"),
        ("something else entirely", errors.PullFailed, "pulling 127.0.0.1:5055/gpuenv-test/layered:nope failed"),
    ],
)
def test_what_the_engine_says_becomes_a_sentence_with_what_to_do(words, cls, says):
    error = pulls.failure("127.0.0.1:5055/gpuenv-test/layered:nope", words)
    assert type(error) is cls and says in str(error)


def test_one_line_for_logs_and_terminals():
    p = pulls.PullProgress("x:1", "downloading", 48 * MB, 115 * MB, 41.7, 19.6 * MB, 125.0, 2, 5)
    assert pulls.describe(p) == "48 / 115 MB (42 %), 19.6 MB/s, 2 min 5 s left, layers 2/5"
    assert [pulls.duration(s) for s in (3, 60, 3720)] == ["3 s", "1 min", "1 h 2 min"]


def test_image_references_and_insecure_registries():
    assert registry.parse("ubuntu") == registry.Reference("registry-1.docker.io", "library/ubuntu", "latest")
    assert registry.parse("127.0.0.1:5055/a/b@sha256:ab") == registry.Reference("127.0.0.1:5055", "a/b", "sha256:ab")
    assert pulls.reference_key("127.0.0.1:5055/a/b") == "127.0.0.1:5055/a/b:latest"
    assert pulls.registry_of("pytorch/pytorch:2.6") == "docker.io"
    info = {
        "RegistryConfig": {
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {"reg.lan:5000": {"Secure": False}},
        }
    }
    assert _insecure(info, "127.0.0.1:5055") and _insecure(info, "reg.lan:5000") and not _insecure(info, "ghcr.io")


# -- one pull per image ------------------------------------------------------------------------------------
async def test_every_caller_shares_one_pull_and_a_failure_is_kept_until_the_next():
    release, calls = threading.Event(), []

    def run(pull):
        calls.append(pull.image)
        release.wait(10)
        if len(calls) == 1:
            raise errors.UnknownImage("no such tag")

    table = pulls.Pulls(run)
    first, second = table.start("127.0.0.1:1/x"), table.start("127.0.0.1:1/x:latest")
    assert first is second and table.progress("127.0.0.1:1/x").active
    waiters = [asyncio.ensure_future(pulls.wait(first, None)) for _ in range(3)]
    await asyncio.sleep(0.1)
    waiters[0].cancel()  # one gives up: the pull goes on for the others
    release.set()
    results = await asyncio.gather(*waiters[1:], return_exceptions=True)
    assert [type(r) for r in results] == [errors.UnknownImage] * 2 and calls == ["127.0.0.1:1/x:latest"]
    assert table.progress("127.0.0.1:1/x") is None and table.failure("127.0.0.1:1/x").error_code == "unknown-image"
    await pulls.wait(table.start("127.0.0.1:1/x"), None)  # a second pull starts afresh, and clears the failure
    assert len(calls) == 2 and table.failure("127.0.0.1:1/x") is None


async def test_a_stopping_server_releases_every_waiter_and_the_next_reports_it(tmp_path):
    journal = pulls.PullJournal(str(tmp_path))
    hung_up = threading.Event()

    def run(pull):
        pull.on_cancel = hung_up.set
        hung_up.wait(10)

    table = pulls.Pulls(run, journal)
    waiter = asyncio.ensure_future(pulls.wait(table.start("127.0.0.1:1/x:1"), None))
    await asyncio.sleep(0.1)
    table.cancel_all()
    with pytest.raises(errors.PullInterrupted):
        await asyncio.wait_for(waiter, 2)
    assert hung_up.is_set()
    assert pulls.PullJournal(str(tmp_path)).interrupted() == []  # this process lives: its pull is not "interrupted"
    # the same note, left by a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    note = next(tmp_path.glob("pull-*.json"))
    note.write_text(json.dumps({**json.loads(note.read_text()), "pid": int(dead.stdout)}))
    after_restart = pulls.Pulls(lambda pull: None, pulls.PullJournal(str(tmp_path)))
    assert after_restart.failure("127.0.0.1:1/x:1").error_code == "pull-interrupted"
    assert "did not finish" in after_restart.failure("127.0.0.1:1/x:1").error
    assert list(tmp_path.glob("pull-*.json")) == []  # reported once


# -- the real thing: a registry on 127.0.0.1 ----------------------------------------------------------------
@pytest.fixture
def tag(pull_tag):
    return pull_tag


@pytest.fixture
def proxy(registry_proxy):
    return registry_proxy


@pytest.fixture
def pull_settings():
    """GpuEnv settings of the server under test; a test changes them by parametrizing this fixture."""
    return {}


@pytest.fixture
def jp_server_config(jp_server_config, pull_settings):
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_gpuenv": True}},
        "GpuEnv": {
            "sample_interval": 0.1,
            "driver_retry_interval": 0.1,
            "pull_missing_images": True,
            "shared_network_namespace": False,  # its holder would run the pulled image on, and keep it from removal
            **pull_settings,
        },
    }


def containers_of(client, image):
    """Kernel containers of this image (other tests may run kernels of their own meanwhile)."""
    return [c.name for c in our_containers(client) if c.attrs["Config"]["Image"] == image]


async def environment(jp_fetch, name):
    rows = json.loads((await jp_fetch("gpuenv", "api", "environments")).body)["environments"]
    return next(r for r in rows if r["name"] == name)


def pull_events(client, since, image):
    found = client.events(
        since=since, until=int(time.time()) + 1, decode=True, filters={"type": "image", "event": "pull"}
    )
    return [e for e in found if e.get("id") == image]


async def test_kernels_wait_for_one_pull_and_the_api_shows_its_progress(
    jp_fetch, jp_serverapp, jp_data_dir, docker_client, tag, proxy
):
    image = proxy.image(tag)
    name = install_spec(jp_data_dir, "from-registry", {"image": image})
    row = await environment(jp_fetch, "from-registry")
    assert (row["state"], row["can_start"], row["pull_progress"]) == ("image-missing", True, None)

    since = int(time.time()) - 1
    starts = [asyncio.ensure_future(start(jp_fetch, name)) for _ in range(2)]  # two notebooks, one image
    seen = []
    while not all(s.done() for s in starts):
        row = await environment(jp_fetch, "from-registry")
        if row["pull_progress"]:
            assert row["state"] == "pulling" and row["can_start"]
            seen.append(row["pull_progress"])
        await asyncio.sleep(0.3)
    kernel_ids = [await s for s in starts]

    downloading = [p for p in seen if p["phase"] == "downloading" and p["rate_bytes_per_s"]]
    assert len(downloading) >= 3, seen
    assert all(p["image"] == image and p["layers_total"] == 5 for p in downloading)
    assert all(100 * MB < p["bytes_total"] < 130 * MB for p in downloading)  # the four new layers: 116 MB
    done = [p["bytes_done"] for p in downloading]
    assert done == sorted(done) and 0 < downloading[0]["percent"] < downloading[-1]["percent"] <= 100
    assert all(5 * MB < p["rate_bytes_per_s"] < 25 * MB and p["eta_s"] is not None for p in downloading)  # ~15 MB/s
    # one pull for both: the engine pulled once, asking the registry for the tag once
    assert len(pull_events(docker_client, since, image)) == 1 and proxy.manifest_requests(tag) == 1
    for kernel_id in kernel_ids:
        assert await execute(jp_serverapp, kernel_id, "print(6 * 7)") == ("42\n", None)
    row = await environment(jp_fetch, "from-registry")
    assert (row["state"], row["pull_progress"], row["pull_error"]) == ("ready", None, None)


async def test_prepare_pulls_ahead_and_answers_in_words(jp_fetch, jp_data_dir, docker_client, tag, proxy):
    image = proxy.image(tag)
    install_spec(jp_data_dir, "prepared", {"image": image})
    answer = await jp_fetch("gpuenv", "api", "environments", "prepared", "pull", method="POST", body="")
    assert answer.code == 202
    body = json.loads(answer.body)
    assert body["state"] == "pulling" and body["pull_progress"]["image"] == image
    assert (await environment(jp_fetch, "prepared"))["state"] == "pulling"
    deadline = time.monotonic() + 60
    while (await environment(jp_fetch, "prepared"))["state"] != "ready":
        assert time.monotonic() < deadline, "the prepared image never arrived"
        await asyncio.sleep(0.5)
    assert docker_client.images.get(image)
    again = await jp_fetch("gpuenv", "api", "environments", "prepared", "pull", method="POST", body="")
    assert (again.code, json.loads(again.body)["state"]) == (200, "present")

    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "environments", "no-such-env", "pull", method="POST", body="")
    assert err.value.code == 404 and "no environment 'no-such-env'" in json.loads(err.value.response.body)["message"]


@pytest.mark.parametrize("pull_settings", [{"pull_missing_images": False}])
async def test_prepare_is_refused_when_this_server_does_not_pull(jp_fetch, jp_data_dir, docker_client, pull_settings):
    install_spec(jp_data_dir, "not-pulled", {"image": "127.0.0.1:9/gpuenv-test/never:1"})
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "environments", "not-pulled", "pull", method="POST", body="")
    message = json.loads(err.value.response.body)["message"]
    assert err.value.code == 409 and "does not pull images" in message and "jupyter gpuenv pull not-pulled" in message


@pytest.mark.parametrize(
    "case, code, says",
    [
        ("unknown-tag", "unknown-image", "no tag 'no-such-tag'"),
        ("registry-down", "registry-unreachable", "cannot be reached"),
        ("credentials", "registry-auth", "docker login 127.0.0.1"),
    ],
)
async def test_a_pull_that_cannot_work_fails_in_seconds_with_what_to_do(
    case, code, says, jp_fetch, jp_serverapp, jp_data_dir, docker_client, tag, proxy
):
    image = proxy.image("no-such-tag" if case == "unknown-tag" else tag)
    if case == "registry-down":
        proxy.stop()
    if case == "credentials":
        proxy.auth_required = True
    name = install_spec(jp_data_dir, "failing", {"image": image})
    started = time.monotonic()
    status, message = await start_error(jp_fetch, name)
    assert time.monotonic() - started < 15
    assert status == 503 and says in message and image in message
    assert containers_of(docker_client, image) == [] and jp_serverapp.kernel_manager.list_kernel_ids() == []
    row = await environment(jp_fetch, "failing")
    assert (row["state"], row["pull_progress"]) == ("image-missing", None)  # never stuck in "pulling"
    assert row["pull_error"]["code"] == code and says in row["pull_error"]["message"]


@pytest.mark.parametrize("pull_settings", [{"pull_stall_timeout": 2.0}])
async def test_a_pull_that_stalls_is_abandoned(jp_fetch, jp_data_dir, docker_client, tag, proxy, pull_settings):
    proxy.rate = 5 * MB
    image = proxy.image(tag)
    name = install_spec(jp_data_dir, "stalling", {"image": image})
    starting = asyncio.ensure_future(start_error(jp_fetch, name))
    while not (await environment(jp_fetch, "stalling"))["pull_progress"]:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    proxy.pause()  # the registry stops sending mid-download
    status, message = await asyncio.wait_for(starting, 30)
    assert status == 503 and "no bytes arrived for 2 s" in message and "pull_stall_timeout" in message
    sent = proxy.sent
    proxy.resume()
    await asyncio.sleep(2)
    assert proxy.sent - sent < 2 * MB  # the engine dropped the pull: nothing more is fetched
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)
    assert (await environment(jp_fetch, "stalling"))["pull_error"]["code"] == "pull-stalled"


async def test_an_image_too_big_for_the_disk_is_refused_before_pulling(
    jp_fetch, jp_data_dir, docker_client, tag, proxy, monkeypatch
):
    monkeypatch.setattr(DockerEngine, "_free_bytes", lambda self, root: 50 * MB)
    install_spec(jp_data_dir, "too-big", {"image": proxy.image(tag)})
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "environments", "too-big", "pull", method="POST", body="")
    message = json.loads(err.value.response.body)["message"]
    assert err.value.code == 409 and "needs about 361 MB" in message and "has 50 MB free" in message
    assert proxy.blob_requests() == 0 and proxy.manifest_requests(tag) == 0  # the engine was never asked to pull


def test_jupyter_gpuenv_pull_shows_progress_and_exits_0(tmp_path, docker_client, tag, proxy):
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "share"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    env.pop("JUPYTER_DATA_DIR", None)
    install_spec(tmp_path / "share", "cli-pull", {"image": proxy.image(tag)})
    install_spec(tmp_path / "share", "cli-bad", {"image": proxy.image("no-such-tag")})
    cli = [sys.executable, "-m", "jupyter_gpuenv.cli.main", "pull"]
    done = subprocess.run([*cli, "cli-pull"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"Pulling {proxy.image(tag)}" and lines[-1] == f"Pulled {proxy.image(tag)}"
    bars = [line for line in lines if "] " in line and " MB (" in line and "layers " in line]
    assert bars and any("MB/s" in line for line in bars), done.stdout
    assert docker_client.images.get(proxy.image(tag))

    failed = subprocess.run([*cli, "cli-bad"], capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 2 and "no tag 'no-such-tag'" in failed.stderr
    unknown = subprocess.run([*cli, "nothing-here"], capture_output=True, text=True, env=env, timeout=60)
    assert unknown.returncode == 2 and "no environment 'nothing-here'" in unknown.stderr


def test_a_pull_cut_short_by_a_server_restart_is_reported_never_stuck(tmp_path, docker_client, tag, monkeypatch):
    """A kernel waits for a slow pull; the server is stopped: it stops at once, the engine drops the pull,
    and the next server says what happened instead of showing the environment as "pulling" forever."""
    from browser.lab_harness import LabServer
    from registry_harness import RegistryProxy

    proxy = RegistryProxy(rate=3 * MB)  # ~40 s for the image: the stop comes in the middle
    sockets = tempfile.mkdtemp(prefix="gp", dir="/tmp")  # short: unix socket paths; this server's own journal
    install_spec(tmp_path / "share", "restart", {"image": proxy.image(tag)})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    args = [f"--GpuEnv.socket_root={sockets}", "--GpuEnv.shared_network_namespace=False"]
    first = LabServer(tmp_path / "first", extra_args=args)
    try:
        answers = []
        waiting = threading.Thread(
            target=lambda: answers.append(_try(first.api, "POST", "api/kernels", {"name": "gpuenv-restart"}))
        )
        waiting.start()
        deadline = time.monotonic() + 30
        while not ((row := _row(first, "restart"))["pull_progress"] or {}).get("bytes_done"):
            assert time.monotonic() < deadline, row
            time.sleep(0.3)
        stopping = time.monotonic()
        first.stop()  # SIGTERM: a graceful stop, as a restart does
        assert time.monotonic() - stopping < 10  # the waiting start did not hold the shutdown up
        waiting.join(10)
        assert answers and isinstance(answers[0], Exception)  # that start failed; nothing half-started is left
        sent = proxy.sent
        time.sleep(2)
        assert proxy.sent - sent < MB  # the engine dropped the pull with its client
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(proxy.image(tag))
        assert containers_of(docker_client, proxy.image(tag)) == []

        second = LabServer(tmp_path / "second", extra_args=args)
        try:
            row = _row(second, "restart")
            assert (row["state"], row["pull_progress"]) == ("image-missing", None)
            assert row["pull_error"]["code"] == "pull-interrupted" and "did not finish" in row["pull_error"]["message"]
        finally:
            second.stop()
    finally:
        first.stop()
        proxy.stop()
        shutil.rmtree(sockets, ignore_errors=True)


def _row(server, name):
    return next(r for r in server.api("GET", "gpuenv/api/environments")["environments"] if r["name"] == name)


def _try(call, *args):
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - the answer under test may be any failure
        return exc
