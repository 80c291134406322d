"""The house's rules, checked on the source: imports flow one way, no cycles, modules stay small.

Layers, lowest first (a module may import its own subpackage and any lower layer, never a
higher one nor a sibling of its own layer); every room (a subpackage or a top-level module) has
one, and imports inside functions count like the others:

    util  <-  config  <-  vectors, records, store, tools, sparse  <-  query, monitor, capacity  <-  index
                  <-  ingest, integrations  <-  serve  <-  distributed, client  <-  cli
"""
from __future__ import annotations

import ast
import pathlib

import pytest

import lukhas_gpu

ROOT = pathlib.Path(lukhas_gpu.__file__).parent
LAYERS = {"util": 0, "config": 0.5, "vectors": 1, "records": 1, "store": 1, "tools": 1, "sparse": 1,
          "query": 2, "monitor": 2, "capacity": 2, "index": 3, "ingest": 4, "integrations": 4,
          "serve": 5, "distributed": 6, "client": 6, "cli": 7}
MAX_LINES, FACADE_MAX_LINES = 600, 500


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("lukhas_gpu",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        out[name] = p
    return out


def _imports(name: str, path: pathlib.Path, *, top_level_only: bool = False) -> set[str]:
    """The lukhas_gpu modules ``name`` imports (``from . import x`` resolved to modules), by default
    every import statement of the file, those inside functions included (a function-level import
    is a dependency too: it only runs later)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lukhas_gpu")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("lukhas_gpu"):
                continue
            found.add(mod)
            for a in node.names:  # `from .pkg import module`
                found.add(f"{mod}.{a.name}")
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = _modules()


def test_at_least_six_rooms():
    rooms = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert len(rooms & set(LAYERS)) >= 6, rooms


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_flow_downward(name):
    room = _room(name)
    if room is None:  # the package's own __init__ (public names, resolved lazily)
        return
    assert room in LAYERS, f"{name}: room {room!r} has no layer in LAYERS (add it, and to ARCHITECTURE.md)"
    for target in _imports(name, MODULES[name]):
        other = _room(target)
        if other is None or other == room or target not in MODULES:
            continue
        assert other in LAYERS, f"{name} imports {target}: room {other!r} has no layer in LAYERS"
        assert LAYERS[other] < LAYERS[room], f"{name} imports {target}: {other} is not below {room}"


def test_every_room_has_a_layer():
    rooms = {_room(name) for name in MODULES} - {None}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}"


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_files():
    """No two files import each other, directly or round a circle, counting the imports inside
    functions too (a circle there is the same tangle, only deferred)."""
    known = set(MODULES)
    graph = {name: {t for t in _imports(name, p) if t in known and t != name}
             for name, p in MODULES.items()}
    # a package's __init__ re-exporting a submodule is not a cycle with that submodule
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles = _cycles(graph)
    assert len(graph) > 50 and cycles == [], cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    limit = FACADE_MAX_LINES if name == "lukhas_gpu.index.facade" else MAX_LINES
    assert lines <= limit, f"{name} has {lines} lines (at most {limit})"
