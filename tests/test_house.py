"""What the reorganisation promised beyond moving code: the stats() schema, clipped cosine scores,
the store layout as the one authority on file names, and the lazy package."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.store.layout import CorruptStoreError

DIM = 32


@pytest.fixture(scope="module")
def small():
    x = np.random.default_rng(5).standard_normal((1500, DIM)).astype(np.float32)
    index = MemoryIndex(DIM, IndexConfig(train_threshold=1024, nlist=16, seed=1))
    index.add(x, contents=[f"m{i}" for i in range(1500)], tags=[["a"] if i % 2 else ["b"] for i in range(1500)])
    return index, x


def test_stats_is_one_schema(small):
    index, _ = small
    st = index.stats()
    assert {"count", "rows", "deleted", "ann_dead", "dim", "dim_out", "phase", "nlist", "pq_m", "coarse", "backend",
            "vector_storage", "gpu_resident", "memory", "bytes_per_memory", "process", "content",
            "tag_vocabulary", "namespaces", "expired", "train_seconds", "tuning", "capabilities", "config", "links",
            "dedup"} == set(st)
    mem = st["memory"]
    for place in ("anon", "mapped", "disk", "gpu"):
        assert mem[f"{place}_bytes"] == sum(mem[place].values())
    assert st["bytes_per_memory"] == pytest.approx((mem["anon_bytes"] + mem["mapped_bytes"]) / st["count"])
    assert mem["logical"]["vectors_int8"] == 1500 * DIM
    assert st["content"]["raw_bytes"] > 0 and st["content"]["stored_bytes"] > 0
    json.dumps(st, default=str)  # serialisable as the CLI prints it


def test_cosine_scores_never_exceed_one(small):
    index, x = small
    for kw in ({}, {"nprobe": 16}, {"where": lukhas_gpu.Filter(tags_all=["a"])}):
        res = index.search(x[:200], 5, **kw)
        assert float(np.max(res.scores)) <= 1.0
    exact = MemoryIndex(DIM)
    exact.add(x[:500])
    assert float(np.max(exact.search(x[:500], 3).scores)) <= 1.0


def _store(tmp_path):
    path = tmp_path / "s"
    index = MemoryIndex.create(path, DIM)
    index.add(np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32))
    index.checkpoint()
    index.close()
    return path


def test_a_damaged_current_names_the_file(tmp_path):
    path = _store(tmp_path)
    (path / layout.CURRENT).write_bytes(b"\xff\xfegen-000002\n")
    with pytest.raises(CorruptStoreError, match=layout.CURRENT):
        MemoryIndex.open(path)
    (path / layout.CURRENT).write_text("../../etc\n")
    with pytest.raises(CorruptStoreError, match="does not name a generation"):
        MemoryIndex.open(path)


@pytest.mark.parametrize("name", ["../../secret.txt", "/etc/passwd", "extra.bin"])
def test_the_manifest_cannot_name_files_outside_the_format(tmp_path, name):
    path = _store(tmp_path)
    gen = layout.current_generation(path)
    manifest = json.loads((gen / layout.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": 0, "crc32": 0}
    (gen / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match="not a file of this format"):
        MemoryIndex.open(path)


def test_a_manifest_missing_a_required_file_is_refused(tmp_path):
    path = _store(tmp_path)
    gen = layout.current_generation(path)
    manifest = json.loads((gen / layout.MANIFEST).read_text())
    del manifest["files"][layout.TAGS]
    (gen / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match=layout.TAGS):
        MemoryIndex.open(path)


def test_importing_the_package_loads_neither_torch_nor_faiss():
    code = ("import sys, lukhas_gpu\nfrom lukhas_gpu import MemoryIndex, IndexConfig, plan\n"
            "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_first_index_to_use_the_vectors_is_charged_the_runtime():
    code = ("import numpy as np, lukhas_gpu\n"
            "a, b = lukhas_gpu.MemoryIndex(8), lukhas_gpu.MemoryIndex(8)\n"
            "x = np.random.default_rng(0).standard_normal((10, 8)).astype('float32')\n"
            "a.add(x); b.add(x)\n"
            "print(a.stats()['memory']['anon'].get('runtime_libraries', 0) > 0,"
            " 'runtime_libraries' in b.stats()['memory']['anon'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# -- the facade's state is declared in one place -----------------------------------------------------
PACKAGE = pathlib.Path(lukhas_gpu.__file__).parent
FACADE_NAMES = ("index", "ix")  # what modules call the MemoryIndex they are handed


def _facade_classes() -> list[type]:
    return [c for c in MemoryIndex.__mro__ if c.__module__.startswith("lukhas_gpu.index")]


def _declared() -> set[str]:
    """What MemoryIndex declares: the attributes its ``__init__`` assigns, and the names of its
    classes (methods, properties, class-level annotations)."""
    init = ast.parse(textwrap.dedent(inspect.getsource(MemoryIndex.__init__)))
    names = {t.attr for node in ast.walk(init) if isinstance(node, (ast.Assign, ast.AnnAssign))
             for tgt in (node.targets if isinstance(node, ast.Assign) else [node.target])
             for t in ast.walk(tgt) if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
             and t.value.id == "self"}
    for cls in _facade_classes():
        names |= set(vars(cls)) | set(getattr(cls, "__annotations__", {}))
    return names


#: Rooms below the index never hold a MemoryIndex (their ``index`` is a TagIndex, an IVF...).
BELOW_THE_INDEX = ("util", "vectors", "records", "store", "tools", "sparse", "query", "monitor", "capacity")


def _sources(*, holding_the_facade: bool = False):
    for p in sorted(PACKAGE.rglob("*.py")):
        if holding_the_facade and p.parent.name in BELOW_THE_INDEX:
            continue
        yield p, ast.parse(p.read_text())


def _targets(node) -> list:
    if isinstance(node, ast.Assign):
        return [t for tgt in node.targets for t in ast.walk(tgt)]
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return list(ast.walk(node.target))
    return []


def _is_facade(value, names=FACADE_NAMES) -> bool:
    return isinstance(value, ast.Name) and value.id in names


def test_nothing_adds_attributes_to_the_facade():
    """Every attribute a module sets on the index it is handed (``index.x = ``, ``setattr(index,
    "x", ...)``), or a facade method sets on ``self`` outside ``__init__``, is one the facade
    declares; the mutable bookkeeping is ``IndexState``'s fields (``index.state.x``)."""
    from lukhas_gpu.index.parts import IndexState

    declared = _declared()
    fields = {f.name for f in dataclasses.fields(IndexState)}
    facade_files = {pathlib.Path(inspect.getsourcefile(c)).resolve() for c in _facade_classes()}
    bad = []
    for path, tree in _sources(holding_the_facade=True):
        for node in ast.walk(tree):
            for t in _targets(node):
                if not isinstance(t, ast.Attribute):
                    continue
                if _is_facade(t.value) and t.attr not in declared:
                    bad.append(f"{path.name}:{t.lineno} sets index.{t.attr}")
                on_state = isinstance(t.value, ast.Attribute) and t.value.attr == "state" \
                    and _is_facade(t.value.value, FACADE_NAMES + ("self",))
                if on_state and t.attr not in fields:
                    bad.append(f"{path.name}:{t.lineno} sets state.{t.attr}, not a field of IndexState")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("setattr", "getattr") and len(node.args) >= 2 \
                    and _is_facade(node.args[0]) and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value not in declared:
                bad.append(f"{path.name}:{node.lineno} {node.func.id}(index, {node.args[1].value!r})")
        if path.resolve() not in facade_files:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name != "__init__":
                for node in ast.walk(fn):
                    for t in _targets(node):
                        if isinstance(t, ast.Attribute) and _is_facade(t.value, ("self",)) and t.attr not in declared:
                            bad.append(f"{path.name}:{t.lineno} {fn.name} sets self.{t.attr} outside __init__")
    assert bad == [], bad


def test_rooms_above_the_index_read_no_private_name_of_the_facade():
    """Modules outside ``index/`` use MemoryIndex's public methods only (``contents_at``,
    ``memories_at``, ``state`` ...), never its ``_private`` attributes or methods."""
    private = {n for n in _declared() | set(dir(MemoryIndex)) if n.startswith("_") and not n.startswith("__")}
    assert {"_rows_for", "_memories_at"} <= private  # the check has teeth
    bad = []
    for path, tree in _sources():
        if path.parent.name == "index":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert bad == [], bad


def test_the_state_survives_a_readers_reload_and_starts_clean(tmp_path):
    index = MemoryIndex(DIM)
    assert index.state.wal is None and index.state.tuning_job is None and index.state.restructure_tried_at == 0
    w = MemoryIndex.create(tmp_path / "s", DIM)
    assert w.state.wal is not None and w.state.store_lock is not None
    w.add(np.random.default_rng(2).standard_normal((10, DIM)).astype(np.float32))
    r = MemoryIndex.open(tmp_path / "s")
    assert r.state.reader is not None and r.state.wal is None and len(r) == 10
    w.checkpoint()
    cursor = r.state.reader
    r.refresh()
    assert r.state.reader is not cursor and r.state.reader.generation == cursor.generation + 1
    w.close()
    assert w.state.wal is None


# -- optional dependencies: skipped locally, an error under CI -----------------------------------------
def test_a_missing_extra_fails_under_ci_and_skips_elsewhere(monkeypatch):
    from conftest import optional_import

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_of_lukhas"):
        optional_import("no_such_module_of_lukhas")
    assert optional_import("json") is json
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        optional_import("no_such_module_of_lukhas")


def test_test_modules_skip_extras_through_the_one_helper():
    tests = pathlib.Path(__file__).parent
    direct = sorted(p.name for p in tests.glob("test_*.py") for node in ast.walk(ast.parse(p.read_text()))
                    if isinstance(node, ast.Attribute) and node.attr == "importorskip")
    assert direct == [], f"use conftest.optional_import, not pytest.importorskip: {direct}"


def test_the_batch_accessors_take_rows_and_refuse_deleted_ones():
    index = MemoryIndex(DIM, IndexConfig(external_ids="str"))
    x = np.random.default_rng(3).standard_normal((6, DIM)).astype(np.float32)
    index.add(x, contents=[f"c{i}" for i in range(6)], ids=[f"u{i}" for i in range(6)])
    res = index.search(x[:2], 3)
    assert index.contents_at([4, 1]) == ["c4", "c1"] == index.contents(["u4", "u1"])
    assert [m.external_id for m in index.memories_at([2])] == ["u2"]
    assert res.contents()[0][0] == "c0" and res.memories()[1][0].id == 1
    index.delete(["u4"])
    with pytest.raises(ValueError):
        index.contents_at([4])
    with pytest.raises(ValueError):
        index.memories_at([4])
