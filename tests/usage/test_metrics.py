"""GPU usage you can graph and account for: /metrics, the usage ledger, `jupyter gpuenv usage`, a real Prometheus.

The server tests run a real Jupyter server with a real ipykernel behind a notebook session; the recorded NVML puts
that kernel's pid on GPU 0 with 1 GiB, as a GPU process of the notebook would be.
"""

import argparse
import asyncio
import importlib.util
import json
import re
import stat
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from container_harness import until
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import require_prometheus, running_prometheus
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jupyter_gpuenv.cli import usage as cli_usage
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.usage import counter as usage
from jupyter_gpuenv.usage import ledger, metrics
from jupyter_gpuenv.usage.counter import KernelUsage, UsageMeter, View
from jupyter_gpuenv.usage.ledger import Ledger, UsageRecord, summarize, usage_query

GIB = 1024**3
NOTEBOOK = "projects/analysis.ipynb"
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hub_targets = load_example("jupyterhub_prometheus_targets")


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["GpuEnv"]["usage_flush_interval"] = 0.2
    return jp_server_config


@pytest.fixture
def jp_base_url():
    return "/user/alice/"  # what a single-user server behind JupyterHub has


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(found: list, metric: str, /, **labels) -> list[float]:
    return [s.value for s in found if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]


async def scrape(jp_fetch) -> list:
    response = await jp_fetch("metrics")
    return samples(response.body.decode())


@pytest.fixture
def notebook_on_gpu(fake_nvml, gpuenv_sampler, jp_fetch, jp_serverapp):
    """Starts (awaited in the test) a notebook session whose real ipykernel the recording puts on GPU 0 with 1 GiB."""
    return lambda: start_notebook_on_gpu(fake_nvml, gpuenv_sampler, jp_fetch, jp_serverapp)


async def start_notebook_on_gpu(fake_nvml, gpuenv_sampler, jp_fetch, jp_serverapp) -> dict:
    response = await jp_fetch(
        "api",
        "sessions",
        method="POST",
        body=json.dumps(
            {"path": NOTEBOOK, "type": "notebook", "name": "analysis.ipynb", "kernel": {"name": "python3"}}
        ),
    )
    session = json.loads(response.body)
    kernel_id = session["kernel"]["id"]
    pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    fake_nvml.recording["devices"][0]["nvmlDeviceGetComputeRunningProcesses"] = [{"pid": pid, "usedGpuMemory": GIB}]
    await until(lambda: kernel_id in {p.kernel_id for p in gpu0_processes(gpuenv_sampler)}, what="attributed")
    return {"session_id": session["id"], "kernel_id": kernel_id, "placed_at": time.time()}


def gpu0_processes(sampler) -> list:
    gpus = sampler.latest.gpus
    return gpus[0].processes if gpus else []


# -- the server's /metrics -------------------------------------------------------------------------------
async def test_metrics_per_gpu_and_per_notebook_kernel(notebook_on_gpu, jp_fetch):
    notebook = await notebook_on_gpu()
    kernel_id = notebook["kernel_id"]
    found = await until(lambda: _holding_a_gpu(jp_fetch, kernel_id), what="the kernel's series on its GPU")
    gpu0 = {"gpu": "0", "uuid": "GPU-5f3c1a2b-0000-4c1e-9a7d-1b2c3d4e5f60", "name": "NVIDIA H100 80GB HBM3"}
    assert values(found, "jupyter_gpuenv_nvml_available") == [1]
    assert values(found, "jupyter_gpuenv_gpu_memory_total_bytes", **gpu0) == [85520809984]
    assert values(found, "jupyter_gpuenv_gpu_utilization_ratio", **gpu0) == [0.87]
    assert values(found, "jupyter_gpuenv_gpu_power_watts", **gpu0) == [312.456]
    assert values(found, "jupyter_gpuenv_gpu_temperature_celsius", **gpu0) == [54]
    assert sorted(s.labels["gpu"] for s in found if s.name == "jupyter_gpuenv_gpu_memory_used_bytes") == ["0", "1"]

    user = usage.server_user()
    kernel = {"kernel_id": kernel_id, "notebook": NOTEBOOK, "environment": "", "container": "", "user": user}
    assert values(found, "jupyter_gpuenv_kernel_gpus", **kernel) == [1]
    assert values(found, "jupyter_gpuenv_kernel_gpu_memory_bytes", **kernel) == [GIB]
    assert values(found, "jupyter_gpuenv_kernel_parked", **kernel) == [0]
    assert values(found, "jupyter_gpuenv_gpu_kernel_memory_bytes", gpu="0", kernel_id=kernel_id, notebook=NOTEBOOK) == [
        GIB
    ]

    # GPU-seconds grow with the time the GPU is held, and memory-seconds with them
    first = values(found, "jupyter_gpuenv_gpu_seconds_total", kernel_id=kernel_id, notebook=NOTEBOOK, user=user)
    await asyncio.sleep(1.5)
    later = await scrape(jp_fetch)
    elapsed = time.time() - notebook["placed_at"]
    second = values(later, "jupyter_gpuenv_gpu_seconds_total", kernel_id=kernel_id, notebook=NOTEBOOK, user=user)
    assert len(first) == len(second) == 1 and second[0] > first[0] + 0.5
    assert 0.5 * (elapsed - 1.5) < second[0] <= elapsed + 0.5  # one GPU held for about the time it was placed
    byte_seconds = values(later, "jupyter_gpuenv_gpu_memory_byte_seconds_total", kernel_id=kernel_id)
    assert byte_seconds == [pytest.approx(second[0] * GIB, rel=1e-9)]

    # the kernel ends: one scrape shows its final totals, the next has no series of it
    await jp_fetch("api", "sessions", notebook["session_id"], method="DELETE")
    final = await until(
        lambda: _without_kernel(jp_fetch, kernel_id, "jupyter_gpuenv_kernel_gpus"), what="the kernel gauges gone"
    )
    assert values(final, "jupyter_gpuenv_gpu_seconds_total", kernel_id=kernel_id)[0] >= second[0]
    await until(lambda: _without_kernel(jp_fetch, kernel_id, "jupyter_gpuenv_gpu_seconds_total"), timeout=5)
    gone = await scrape(jp_fetch)
    assert not [s for s in gone if s.labels.get("kernel_id") == kernel_id]


async def _holding_a_gpu(jp_fetch, kernel_id):
    found = await scrape(jp_fetch)  # the tracker publishes on its next tick after the sampler saw the process
    return found if values(found, "jupyter_gpuenv_kernel_gpus", kernel_id=kernel_id, notebook=NOTEBOOK) == [1] else None


async def _without_kernel(jp_fetch, kernel_id, name):
    found = await scrape(jp_fetch)
    return None if values(found, name, kernel_id=kernel_id) else found


async def test_metrics_need_the_token(fake_nvml, gpuenv_sampler, http_server_client, jp_base_url):
    response = await http_server_client.fetch(f"{jp_base_url}metrics", raise_error=False)
    assert response.code == 403 and b"jupyter_gpuenv" not in response.body


# -- the usage ledger, its REST answer and `jupyter gpuenv usage` ------------------------------------------
async def test_usage_is_accounted_per_notebook_and_user(notebook_on_gpu, jp_fetch, jp_data_dir, capsys):
    notebook = await notebook_on_gpu()

    async def by_notebook():
        body = json.loads((await jp_fetch("gpuenv", "api", "usage", params={"by": "notebook"})).body)
        rows = [r for r in body["usage"] if r["notebook"] == NOTEBOOK]
        return rows if rows and rows[0]["gpu_seconds"] > 0.5 else None

    rows = await until(by_notebook, what="usage of the notebook")
    assert rows[0]["user"] == usage.server_user()
    assert rows[0]["gpu_hours"] == pytest.approx(rows[0]["gpu_seconds"] / 3600)
    assert rows[0]["gpu_memory_byte_seconds"] == pytest.approx(rows[0]["gpu_seconds"] * GIB, rel=1e-6)
    by_user = json.loads((await jp_fetch("gpuenv", "api", "usage")).body)
    assert by_user["by"] == "user" and [r["user"] for r in by_user["usage"]] == [usage.server_user()]
    assert by_user["since"] < notebook["placed_at"] < by_user["until"]

    folder = Path(jp_data_dir) / "gpuenv" / "usage"
    await until(lambda: sum(r.gpu_seconds for r in Ledger(folder).read()) > 0.5, what="the ledger written")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.glob("usage-*.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # the command reads the ledger alone, without a server
    assert run_usage_command("--by", "notebook", "--dir", str(folder)) == 0
    out = capsys.readouterr().out
    assert NOTEBOOK in out and usage.server_user() in out and "GPU-HOURS" in out
    assert run_usage_command("--json", "--dir", str(folder)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usage"][0]["user"] == usage.server_user() and report["usage"][0]["gpu_seconds"] > 0.5


@pytest.mark.parametrize(
    "params, message",
    [
        ({"since": "last tuesday"}, "since must be a date"),
        ({"since": ""}, "since must be a date"),
        ({"until": "nan"}, "until must be a date"),
        ({"until": "1e400"}, "until must be a date"),
        ({"since": "99999-01-01"}, "since must be a date"),
        ({"since": "2025-12-02", "until": "2025-12-01"}, "must be before until"),
        ({"by": "kernel"}, "by must be 'user' or 'notebook'"),
    ],
)
async def test_usage_rejects_bad_parameters(fake_nvml, jp_fetch, params, message):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("gpuenv", "api", "usage", params=params)
    assert err.value.code == 400
    assert message in json.loads(err.value.response.body)["message"]


def run_usage_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="jupyter gpuenv")
    cli_usage.add_usage_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["usage", *argv])
    return args.func(args)


def test_usage_command_explains_a_bad_date(capsys):
    assert run_usage_command("--since", "yesterday-ish", "--dir", "/nonexistent") == 2
    assert "since must be a date (2025-12-01)" in capsys.readouterr().err


# -- the pure parts --------------------------------------------------------------------------------------
def held(kernel_id="k1", gpus=(0,), memory=GIB, **names) -> KernelUsage:
    return KernelUsage(kernel_id, gpus=gpus, gpu_memory=memory, user="alice", **names)


def test_meter_counts_time_between_samples_capped_and_not_while_parked_or_blind():
    meter = UsageMeter(max_gap=10.0)
    meter.observe(100.0, [held(gpus=(0, 1))])  # the first sample only starts the clock
    meter.observe(101.0, [held(gpus=(0, 1))])
    meter.observe(103.0, [held(gpus=(0, 1))])
    meter.observe(103.0, [held(gpus=(0, 1))])  # the same sample seen twice counts once
    (totals,) = meter.totals()
    assert totals.gpu_seconds == 6.0 and totals.gpu_memory_byte_seconds == 3.0 * GIB
    meter.observe(1000.0, [held(gpus=(0, 1))])  # a suspended machine: the gap counts as 10 s at most
    meter.observe(1001.0, [held(gpus=(0, 1), parked=True)])
    meter.pause()  # NVML stopped answering
    meter.observe(5000.0, [held(gpus=(0, 1))])
    assert meter.totals()[0].gpu_seconds == 26.0
    (record,) = meter.take_pending()
    assert (record.start, record.end, record.gpu_seconds, record.user) == (100.0, 1000.0, 26.0, "alice")
    assert meter.take_pending() == []


def test_a_kernel_counts_from_the_first_sample_that_sees_it_not_from_the_one_before():
    meter = UsageMeter(max_gap=30.0)
    meter.observe(100.0, [held(kernel_id="old")])
    meter.observe(120.0, [held(kernel_id="old"), held(kernel_id="new")])  # a slow sample: "new" may be 1 s old
    meter.observe(121.0, [held(kernel_id="old"), held(kernel_id="new")])
    totals = {t.labels.kernel_id: t.gpu_seconds for t in meter.totals()}
    assert totals == {"old": 21.0, "new": 1.0}


def test_an_ended_kernel_is_scraped_once_with_its_final_totals_then_dropped():
    meter = UsageMeter(max_gap=10.0, retired_grace=60.0)
    collector = metrics.Collector()
    collector.source = source = type("Tracker", (), {"meter": meter})()
    meter.observe(1.0, [held("k1"), held("k2")])
    meter.observe(3.0, [held("k1"), held("k2")])
    meter.observe(4.0, [held("k2")])  # k1 ended

    def tick_and_scrape(now):  # what the tracker does each sample, then a scrape
        meter.purge(now)
        source.view = View(Snapshot(available=True), [held("k2")], meter.totals())
        found = [s for f in collector.collect() if f.name == "jupyter_gpuenv_gpu_seconds" for s in f.samples]
        return {s.labels["kernel_id"]: s.value for s in found}

    assert tick_and_scrape(4.5) == {"k1": 2.0, "k2": 3.0}
    assert tick_and_scrape(5.0) == {"k2": 3.0}
    meter.observe(6.0, [])  # k2 ended and nothing scrapes: it goes after the grace period
    meter.purge(6.0 + 59.0)
    assert [t.labels.kernel_id for t in meter.totals()] == ["k2"]
    meter.purge(6.0 + 61.0)
    assert meter.totals() == []


def test_label_values_are_bounded():
    path = "deep/" * 300 + "train.ipynb"
    view = View(Snapshot(available=True), [held(notebook=path)], [])
    (sample,) = [s for f in metrics.families(view) if f.name == "jupyter_gpuenv_kernel_gpus" for s in f.samples]
    assert len(sample.labels["notebook"]) == metrics.LABEL_MAX and sample.labels["notebook"].endswith("/train.ipynb")


def record(start, end, gpu_seconds, notebook="a.ipynb", user="alice", kernel_id="k1") -> UsageRecord:
    return UsageRecord(start, end, user, notebook, kernel_id, "", gpu_seconds, gpu_seconds * GIB)


def test_ledger_is_private_prorated_compacted_and_pruned(tmp_path, monkeypatch):
    folder = tmp_path / "usage"
    folder.mkdir(mode=0o755)
    book = Ledger(folder, retention_days=40)
    now = 1764547200.0  # 2025-12-01T00:00:00Z
    book.append([record(now - 3600, now - 3540, 60.0), record(now, now + 60, 120.0, notebook="b.ipynb")], now=now)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # tightened
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["usage-2025-11.jsonl", "usage-2025-12.jsonl"]
    with open(folder / "usage-2025-12.jsonl", "a") as f:
        f.write('{"start": 1764547300, "end": ')  # a torn line (a crash mid-write) is skipped
    rows = summarize(book.read(now - 3570, now + 30), now - 3570, now + 30, "notebook")
    assert [(r["notebook"], r["gpu_seconds"]) for r in rows] == [("b.ipynb", 60.0), ("a.ipynb", 30.0)]

    monkeypatch.setattr(ledger, "COMPACT_BYTES", 2000)
    book.append([record(now + 120 + 60 * i, now + 180 + 60 * i, 60.0, notebook="b.ipynb") for i in range(30)], now=now)
    lines = (folder / "usage-2025-12.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one record per kernel and hour
    (merged,) = book.read(now, now + 3600)
    assert (merged.start, merged.end, merged.gpu_seconds) == (now, now + 1920, 1920.0)

    book.append([record(now + 86400 * 45, now + 86400 * 45 + 60, 60.0)], now=now + 86400 * 45)
    assert not (folder / "usage-2025-11.jsonl").exists()  # November ended more than 40 days before
    assert (folder / "usage-2025-12.jsonl").exists()


def test_usage_query_defaults_and_sentences():
    now = time.mktime((2025, 12, 15, 12, 0, 0, 0, 0, -1))
    since, until, by = usage_query(None, None, None, now=now)
    assert (since, until, by) == (time.mktime((2025, 12, 1, 0, 0, 0, 0, 0, -1)), now, "user")
    since, until, _ = usage_query(None, "2025-12-01", "notebook")  # --until alone: the month before it
    assert since == time.mktime((2025, 11, 1, 0, 0, 0, 0, 0, -1))
    assert usage_query("2025-12-01T08:00:00Z", "1764590400", None)[:2] == (1764576000.0, 1764590400.0)
    for bad in ("tomorrow", "inf", "-5", "2025-13-01"):
        with pytest.raises(ValueError, match="since must be a date"):
            usage_query(bad, None, None)


# -- a real Prometheus scraping the server -------------------------------------------------------------------
@pytest.fixture
def prometheus(fake_nvml, tmp_path, jp_http_port, jp_base_url, jp_serverapp):
    """Debian's prometheus on a free loopback port, scraping the test server every second with its token: once as
    docs/examples/prometheus-single-server.yml says (job "jupyter"), once as prometheus-jupyterhub.yml says, with
    the target list that jupyterhub_prometheus_targets.py makes from the hub's answer (job "jupyterhub-user-servers").
    """
    require_prometheus()
    token = tmp_path / "token"
    token.write_text(jp_serverapp.identity_provider.token + "\n")
    token.chmod(0o600)
    single = yaml.safe_load((EXAMPLES / "prometheus-single-server.yml").read_text())["scrape_configs"][0]
    single["metrics_path"] = f"{jp_base_url}metrics"
    single["static_configs"] = [{"targets": [f"127.0.0.1:{jp_http_port}"]}]
    hub = yaml.safe_load((EXAMPLES / "prometheus-jupyterhub.yml").read_text())["scrape_configs"][0]
    hub["file_sd_configs"][0]["files"] = [str(tmp_path / "targets.json")]
    hub_answer = [  # GET /hub/api/users?state=active, as JupyterHub answers it
        {"name": "alice", "servers": {"": {"ready": True, "url": jp_base_url}}},
        {"name": "bob", "servers": {"": {"ready": False, "url": "/user/bob/"}}},
    ]
    (tmp_path / "targets.json").write_text(
        json.dumps(hub_targets.file_sd(hub_answer, f"http://127.0.0.1:{jp_http_port}"))
    )
    for job in (single, hub):
        job["authorization"]["credentials_file"] = str(token)
    with running_prometheus(tmp_path, [single, hub]) as running:
        yield running


async def promql(prometheus, query: str) -> list:
    """The result of an instant query (an async request: the server under test must keep answering scrapes)."""
    assert prometheus["proc"].poll() is None, prometheus["log"].read_text()
    response = await AsyncHTTPClient().fetch(f"{prometheus['url']}/api/v1/query?{urlencode({'query': query})}")
    body = json.loads(response.body)
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_scrapes_gpu_usage_per_notebook(prometheus, notebook_on_gpu, jp_fetch, jp_http_port):
    notebook = await notebook_on_gpu()
    kernel_id = notebook["kernel_id"]
    await until(lambda: _ready(prometheus), timeout=60, what="Prometheus ready")
    await until(lambda: promql(prometheus, 'up{job="jupyter"} == 1'), what="the single-server target up")
    instance = f"127.0.0.1:{jp_http_port}/user/alice/"
    hub_job = f'up{{job="jupyterhub-user-servers", instance="{instance}"}} == 1'
    await until(lambda: promql(prometheus, hub_job), what="the hub-listed target up")
    assert len(await promql(prometheus, 'up{job="jupyterhub-user-servers"}')) == 1  # bob's server is not ready

    selector = f'jupyter_gpuenv_gpu_seconds_total{{job="jupyter", kernel_id="{kernel_id}"}}'
    (first,) = await until(lambda: promql(prometheus, selector), what="the kernel's GPU-seconds in Prometheus")
    assert first["metric"]["notebook"] == NOTEBOOK and first["metric"]["user"] == usage.server_user()
    gpus = await promql(prometheus, 'jupyter_gpuenv_gpu_memory_total_bytes{job="jupyter"}')
    assert sorted(g["metric"]["gpu"] for g in gpus) == ["0", "1"]
    memory = await promql(prometheus, f'jupyter_gpuenv_gpu_kernel_memory_bytes{{kernel_id="{kernel_id}"}}')
    assert {(m["metric"]["gpu"], m["metric"]["instance"], float(m["value"][1])) for m in memory} == {
        ("0", f"127.0.0.1:{jp_http_port}", GIB),
        ("0", instance, GIB),
    }

    # GPU-seconds grow with the time the GPU is held: about one GPU-second per second with one GPU
    await until(lambda: _grown(prometheus, selector, float(first["value"][1]) + 2), what="GPU-seconds to grow by 2")
    (rate,) = await promql(prometheus, f"rate({selector}[5s])")
    assert 0.5 < float(rate["value"][1]) < 1.5

    # every query of the example Grafana dashboard parses and finds its series
    for expr in dashboard_queries():
        assert await promql(prometheus, expr), expr
    for expr in docs_queries():
        await promql(prometheus, expr)  # answers (a query Prometheus cannot parse is a 400)

    # a deleted kernel's series disappear
    await jp_fetch("api", "sessions", notebook["session_id"], method="DELETE")
    await until(lambda: _absent(prometheus, f'{{kernel_id="{kernel_id}"}}'), what="the kernel's series gone")


def docs_queries() -> list[str]:
    """The PromQL examples of docs/metrics.md."""
    text = (EXAMPLES.parent / "metrics.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, re.S)
    queries = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    assert len(queries) == 4
    return queries


def dashboard_queries() -> list[str]:
    """The dashboard's PromQL with Grafana's variables as a person would pick them (all servers, all users, GPU 0)."""
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exprs = [re.sub(r"label_values\((.*), (\w+)\)$", r"group by (\2) (\1)", e) for e in exprs]
    substitutions = {'=~"$instance"': '=~".*"', '=~"$user"': '=~".*"', '="$gpu"': '="0"', "$__range": "1m"}
    for old, new in substitutions.items():
        exprs = [e.replace(old, new) for e in exprs]
    assert len(exprs) == 10 and not [e for e in exprs if "$" in e]
    return exprs


async def _ready(prometheus) -> bool:
    assert prometheus["proc"].poll() is None, prometheus["log"].read_text()
    try:
        await AsyncHTTPClient().fetch(f"{prometheus['url']}/-/ready")
    except (ConnectionError, HTTPClientError):
        return False
    return True


async def _grown(prometheus, selector, at_least):
    result = await promql(prometheus, selector)
    return result if result and float(result[0]["value"][1]) >= at_least else None


async def _absent(prometheus, selector):
    return await promql(prometheus, selector) == []
