"""The broker's configuration, read and checked as a whole: what `jupyter gpuenv broker` starts from.

    load_config(path)      the settings, or ConfigProblems naming every problem of the file at once
    example_config()       the example that ships in the wheel (`jupyter gpuenv broker --example-config`)

A broker that starts with a wrong setting serves a host the administrator did not mean: a misspelt name
(``c.Broker.enviroments``) silently leaves every environment out, and a policy that names an environment the
host does not have lets nobody use what was meant. Both are refused here, with everything else that is wrong,
in one report, before anything starts.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

from jupyter_gpuenv.broker.metrics import is_loopback
from jupyter_gpuenv.broker.policy import Policy
from jupyter_gpuenv.broker.settings import Broker
from jupyter_gpuenv.environments.definition import Environment, parse_environment
from jupyter_gpuenv.errors import InvalidEnvironment

DEFAULT_CONFIG = "/etc/jupyter-gpuenv/broker_config.py"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "broker_config.py"


class ConfigProblems(Exception):
    """The configuration file is missing or wrong; ``str()`` is what the administrator reads (one line per
    problem)."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        if len(problems) == 1:
            text = f"{path}: {problems[0]}"
        else:
            text = f"{len(problems)} problems in {path}:" + "".join(f"\n  {p}" for p in problems)
        super().__init__(text)


def example_config() -> str:
    return EXAMPLE.read_text()


def _read(path: str) -> Config:
    loader = PyFileConfigLoader(os.path.basename(path), os.path.dirname(os.path.abspath(path)))
    try:
        return loader.load_config()
    except ConfigFileNotFound:
        raise ConfigProblems(
            path,
            ["no such configuration file: write one with `jupyter gpuenv broker install` (or "
             f"`jupyter gpuenv broker --example-config > {path}` and edit it)"],
        ) from None  # fmt: skip
    except SyntaxError as exc:
        raise ConfigProblems(path, [f"line {exc.lineno}: {exc.msg}"]) from None
    except Exception as exc:  # the file is Python: whatever it raised, say where and what
        line = _line_in(exc, path)
        raise ConfigProblems(path, [f"{line}{type(exc).__name__}: {exc}"]) from None


def _line_in(exc: BaseException, path: str) -> str:
    tb, line = exc.__traceback__, ""
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = f"line {tb.tb_lineno}: "
        tb = tb.tb_next
    return line


def check(config: Config) -> list[str]:
    """Every problem of a broker configuration, each a sentence naming the setting; [] when it is sound."""
    problems: list[str] = []
    known = set(Broker.class_traits(config=True))
    for section in sorted(config):
        if section != "Broker":
            guess = difflib.get_close_matches(section, ["Broker"], n=1)
            hint = " (did you mean c.Broker?)" if guess else ""
            problems.append(f"c.{section} is not part of the broker's configuration{hint}: its settings are c.Broker.*")
    section = config.get("Broker", Config())
    bad = set()
    for key in sorted(section):
        if key not in known:
            guess = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean c.Broker.{guess[0]}?" if guess else ""
            problems.append(f"c.Broker.{key} is not a setting of the broker{hint}")
            bad.add(key)
            continue
        try:
            Broker(config=Config({"Broker": {key: section[key]}}))
        except TraitError as exc:
            problems.append(f"c.Broker.{key}: {exc}")
            bad.add(key)
    settings = Broker(config=Config({"Broker": {k: v for k, v in section.items() if k not in bad}}))
    problems += _out_of_range(settings, set(section) - bad)
    environments: dict[str, Environment | None] = {}  # None: invalid (said in problems)
    for name, raw in settings.environments.items():
        if not isinstance(name, str):
            problems.append(f"c.Broker.environments: the name {name!r} must be a string such as 'pytorch'")
            continue
        try:
            environments[name] = parse_environment(name, raw, "c.Broker.environments")
        except InvalidEnvironment as exc:
            environments[name] = None
            problems.append(str(exc))
    try:
        policy = Policy.parse(settings.policy)
    except ValueError as exc:
        problems.append(str(exc))
    else:
        problems += _unknown_in_policy(policy, environments)
    problems += _cluster_problems(settings, environments)
    problems += _warm_problems(settings, environments, set(section) - bad)
    if settings.metrics_port and not is_loopback(settings.metrics_address) and not settings.metrics_public:
        problems.append(
            f"c.Broker.metrics_address = {settings.metrics_address!r} is not a loopback address: the metrics name "
            "every user's notebooks. Set c.Broker.metrics_public = True to serve them there anyway"
        )
    return problems


POSITIVE = ("sample_interval", "orphan_interval", "usage_flush_interval", "docker_timeout", "park_timeout")
AT_LEAST_ZERO = ("park_idle_minutes", "park_min_gpu_memory_gib", "hub_uid", "hub_gid", "max_warm_kernels")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _out_of_range(settings: Broker, given: set[str]) -> list[str]:
    """Values of the right type that the broker still cannot work with (a 0 s sample interval divides by 0)."""
    out = [f"c.Broker.{k} must be more than 0, not {getattr(settings, k)!r}"
           for k in POSITIVE if k in given and not getattr(settings, k) > 0]  # fmt: skip
    out += [f"c.Broker.{k} must be 0 or more, not {getattr(settings, k)!r}"
            for k in AT_LEAST_ZERO if k in given and not getattr(settings, k) >= 0]  # fmt: skip
    if "metrics_port" in given and not 0 <= settings.metrics_port <= 65535:
        out.append(f"c.Broker.metrics_port must be a port (1 to 65535), or 0 for none, not {settings.metrics_port}")
    return out


GPU_KIND = re.compile(r"GPU(-[A-Za-z0-9]+)*")


def _cluster_problems(settings: Broker, environments: dict[str, Environment | None]) -> list[str]:
    """With c.Broker.cluster = 'swarm': every environment that wants GPUs names a GPU model, as a count (Swarm's
    GPUs are whole and each one kernel's), and the person's files are folders (a Docker volume is one host's)."""
    if settings.cluster != "swarm":
        given = [k for k in ("cluster_manager_url", "cluster_gpu_kinds") if getattr(settings, k)]
        return [f"c.Broker.{k} is set but c.Broker.cluster is not 'swarm': set both, or neither" for k in given]
    out = []
    if settings.identify == "hub-token":
        out.append("c.Broker.cluster = 'swarm' needs c.Broker.identify = 'peer': in hub-token mode a person's files "
                   "are a Docker volume, which only one host has")  # fmt: skip
    if settings.warm_kernels:
        out.append("c.Broker.warm_kernels are containers of this host, which a cluster does not place: not with "
                   "c.Broker.cluster = 'swarm' yet (docs/multi-host.md)")  # fmt: skip
    if not 0 < settings.relay_port < 65536:
        out.append(f"c.Broker.relay_port must be a port (1 to 65535), not {settings.relay_port}")
    for name, kind in sorted(settings.cluster_gpu_kinds.items()):
        if name not in environments:
            out.append(f"c.Broker.cluster_gpu_kinds names the environment {name!r}, which c.Broker.environments "
                       "does not define")  # fmt: skip
        if not isinstance(kind, str) or not GPU_KIND.fullmatch(kind):
            out.append(f"c.Broker.cluster_gpu_kinds[{name!r}] = {kind!r} is not a GPU model as hosts advertise it "
                       "(e.g. 'GPU-H200')")  # fmt: skip
    for name, env in sorted(environments.items()):
        if env is None or not env.gpus.wants_gpus:
            continue
        if env.gpus.kind not in ("count", "exclusive"):
            out.append(f"environment {name!r}: gpus {str(env.gpus)!r} has no meaning across hosts (c.Broker.cluster = "
                       "'swarm'): give a count, such as '1' or 'exclusive:2'")  # fmt: skip
        elif name not in settings.cluster_gpu_kinds:
            out.append(f"environment {name!r} wants GPUs: c.Broker.cluster_gpu_kinds must say which model "
                       f"(e.g. {{{name!r}: 'GPU-H200'}})")  # fmt: skip
    return out


def _unknown_in_policy(policy: Policy, environments: dict) -> list[str]:
    defined = ", ".join(sorted(environments)) or "none"
    rules = [("c.Broker.policy['default']", policy.default)]
    rules += [(f"c.Broker.policy['groups'][{g!r}]", r) for g, r in policy.groups]
    rules += [(f"c.Broker.policy['users'][{u!r}]", r) for u, r in policy.users]
    out = []
    for where, rule in rules:
        for name in sorted(rule.environments or ()):
            if name not in environments:
                out.append(f"{where} names the environment {name!r}, which c.Broker.environments does not define "
                           f"(defined: {defined})")  # fmt: skip
    return out


def _warm_problems(settings: Broker, environments: dict, given: set[str]) -> list[str]:
    """Warm kernels of environments the host does not have, or counts and imports that are not what they must be."""
    out = []
    for key in ("warm_kernels", "warm_imports"):
        for name in getattr(settings, key) if key in given else ():
            if name not in environments:
                out.append(f"c.Broker.{key} names the environment {name!r}, which c.Broker.environments does not "
                           f"define (defined: {', '.join(sorted(map(str, environments))) or 'none'})")  # fmt: skip
    for name, count in settings.warm_kernels.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            out.append(f"c.Broker.warm_kernels[{name!r}] must be a whole number of at least 0, not {count!r}")
    for name, modules in settings.warm_imports.items():
        if not isinstance(modules, list) or not all(isinstance(m, str) and _MODULE.fullmatch(m) for m in modules):
            out.append(f"c.Broker.warm_imports[{name!r}] must be a list of module names such as ['torch']")
    return out


def load_config(path: str | None) -> Broker:
    """The broker's settings from ``path`` (default :data:`DEFAULT_CONFIG`); ConfigProblems if it is missing or
    anything in it is wrong."""
    path = os.path.abspath(path or DEFAULT_CONFIG)
    config = _read(path)
    problems = check(config)
    if problems:
        raise ConfigProblems(path, problems)
    return Broker(config=config)
