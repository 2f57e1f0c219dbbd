"""The package's import graph keeps the shape README's "Layout" section draws: wings on floors, every import going
down or sideways, no circle, and the adapters (Docker's SDK, tornado, jupyter_server) each in its own wing.

Read from the source with ``ast`` (imports inside functions count: a lazy import is still a tie), so a change
that breaks a rule fails here with the file and the import that broke it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jupyter_gpuenv"
P = "jupyter_gpuenv"

# Lower floors never import higher ones. A wing is a sub-package, or a top-level module.
FLOORS = {
    "errors": 0,
    "_version": 0,
    "config": 1,
    "host": 1,
    "gpus": 2,
    "environments": 2,
    "containers": 2,
    "pulls": 2,
    "parking": 2,
    "usage": 2,
    "engines": 3,
    "server": 4,
    "broker": 4,
    "cli": 5,
    "__init__": 5,
}
# Wings that decide without touching the outside world: they import no adapter and no engine.
PURE = ("environments", "containers")
# Where an outside library may be imported (by its top-level name).
ADAPTERS = {
    # the Swarm engine is a second adapter of the same outside system: services, tasks and nodes are Engine API
    # calls, translated by the Docker adapter's one translation point (engines.docker.engine.translated)
    "docker": ("engines/docker/", "engines/swarm/"),
    "tornado": ("server/", "broker/daemon.py", "broker/metrics.py"),
    "jupyter_server": ("server/",),
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "labextension" in path.parts or "examples" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] if rel.parts[-1] == "__init__" else list(rel.parts)
        out[".".join([P, *parts])] = path
    return out


MODULES = modules()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``; ``from X import name`` counts X.name when that is
    a module of the package, else X."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; this package imports absolutely"
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.append((node.lineno, full if full in MODULES else node.module))
    return found


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def where(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_every_import_goes_down_or_sideways():
    upward = [
        f"{where(path)}:{line} imports {target} (floor {FLOORS[wing(target)]} above {FLOORS[wing(name)]})"
        for name, path in MODULES.items()
        for line, target in imports(path)
        if target.startswith(P + ".") and FLOORS[wing(target)] > FLOORS[wing(name)]
    ]
    assert upward == []


def test_no_import_circle():
    graph = {
        name: {t for _, t in imports(path) if t in MODULES and t != name and not t.startswith(name + ".")}
        for name, path in MODULES.items()
    }
    graph = {n: {t for t in ts if not n.startswith(t + ".") or t == P} - {P} for n, ts in graph.items()}
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_an_outside_library_is_imported_in_its_own_wing_only(library):
    places = ADAPTERS[library]
    strays = [
        f"{where(path)}:{line} imports {target}"
        for path in MODULES.values()
        for line, target in imports(path)
        if target.split(".")[0] == library and not where(path).startswith(places)
    ]
    assert strays == []


def test_the_pure_wings_import_no_engine_server_broker_or_cli():
    strays = [
        f"{where(path)}:{line} imports {target}"
        for name, path in MODULES.items()
        if wing(name) in PURE
        for line, target in imports(path)
        if target.startswith(P + ".") and wing(target) in ("engines", "server", "broker", "cli")
    ]
    assert strays == []


def test_only_the_engines_wing_reads_the_broker_setting():
    """The local/broker choice is made once (``engines.connect``): everywhere else asks the engine."""
    readers = []
    for path in MODULES.values():
        if where(path).startswith(("engines/", "broker/", "cli/")):
            continue  # the CLI's --broker flag and the broker's own settings are other things
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "broker":
                owner = ast.unparse(node.value)
                if owner.endswith(("settings", "gpuenv")):
                    readers.append(f"{where(path)}:{node.lineno} reads {owner}.broker")
    assert readers == []


def test_only_broker_cluster_reads_the_cluster_setting():
    """One host or a cluster is decided once (``broker.cluster.connect``); the daemon asks what it was given."""
    readers = [
        f"{where(path)}:{node.lineno}"
        for path in MODULES.values()
        if where(path) not in ("broker/cluster.py", "broker/setup.py", "broker/settings.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "cluster" and ast.unparse(node.value).endswith("settings")
    ]
    assert readers == []
