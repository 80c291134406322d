"""Memory accounting (``stats()["memory"]``) and the capacity planner (``plan``, ``max_count``)."""
from __future__ import annotations

import doctest
import json
import os

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu import IndexConfig, MemoryIndex, Plan, max_count, plan
from lukhas_gpu.capacity.accounting import PLACES, aligned_capacity, fastscan_list_bytes, fastscan_resident
from lukhas_gpu.capacity.sizing import list_sizes, measure_content_ratio, parse_size
from lukhas_gpu.records.tags import TAG_OBJECT_BYTES

DIM, N = 32, 4000
# capacity sizes the IVF as plan() does: auto_nlist(4000) lists, trained once all 4000 arrived
CFG = IndexConfig(train_threshold=2048, capacity=N, nprobe=16)


def _fill(index, xb, start=0):
    rng = np.random.default_rng(start)
    for s in range(0, len(xb), 1000):
        m = min(1000, len(xb) - s)
        index.add(xb[s: s + m], contents=[f"memory number {start + s + i} about things" for i in range(m)],
                  tags=[[f"t{(start + s + i) % 7}", "all"] for i in range(m)],
                  timestamps=1.7e9 + rng.random(m), importance=rng.random(m))


@pytest.fixture(scope="module")
def xb():
    from conftest import make_clustered

    return make_clustered(N, DIM, seed=3)[0]


@pytest.fixture(scope="module")
def built(xb):
    index = MemoryIndex(DIM, CFG)
    _fill(index, xb)
    assert index.is_trained
    index.search(xb[:1100], 5)  # fills the probe's query sample, which plan() assumes full
    return index


@pytest.fixture(scope="module")
def store(xb, tmp_path_factory):
    root = tmp_path_factory.mktemp("acct") / "store"
    index = MemoryIndex.create(root, DIM, CFG)
    _fill(index, xb)
    index.checkpoint()
    index.close()
    return root


def _check_totals(st):
    mem = st["memory"]
    for place in PLACES:
        assert mem[f"{place}_bytes"] == sum(mem[place].values())
        assert mem["per_memory"][place] == pytest.approx(mem[f"{place}_bytes"] / st["count"])
        assert all(isinstance(v, int) and v >= 0 for v in mem[place].values())
    # the logical sizes are there too, and agree where the place holds exactly the structure
    logical = mem["logical"]
    for name in ("vectors_int8", "metadata", "content_offsets", "tags_start", "ann_codes", "ann_ids"):
        if name in logical:
            where = mem["anon"] if name in mem["anon"] else mem["mapped"]
            assert where[name] == logical[name], name
    return mem


def _du(root) -> int:
    total = 0
    for d, _, files in os.walk(root):
        total += sum(os.stat(os.path.join(d, f)).st_blocks * 512 for f in files)
    return total


# -- accounting ----------------------------------------------------------------------------------
def test_components_sum_to_totals(built):
    st = built.stats()
    mem = _check_totals(st)
    anon = mem["anon"]
    assert anon["vectors_int8"] == N * DIM and anon["metadata"] == 11 * N
    assert anon["content_offsets"] == 12 * N and anon["tags_start"] == 4 * N and anon["tags_count"] == N
    assert anon["tags_flat"] == 4 * 2 * N and anon["ann_ids"] == 8 * N
    assert anon["probe"] == built.parts.probe.nbytes()
    assert mem["mapped_bytes"] == 0 and mem["disk_bytes"] == 0 and mem["gpu_bytes"] == 0  # no store, CPU
    assert mem["ann_state"] == "built"
    assert mem["anon_bytes"] > sum(mem["logical"].values())  # capacities, probe, pools: more than the logical sizes


def test_fast_scan_lists_counted_at_their_capacity(built):
    st = built.stats()
    anon, ann = st["memory"]["anon"], built.parts.ann
    codes = fastscan_list_bytes(ann.list_sizes(), ann.pq_m)
    assert anon["ann_codes"] == codes.sum()
    assert anon["ann_codes"] + anon["ann_codes_slack"] == aligned_capacity(codes).sum()


def _component_usages(index, state):
    p = index.parts
    out = [p.vectors.memory_usage(), p.encoder.memory_usage(), p.contents.memory_usage(), p.meta.memory_usage(),
           p.tags.memory_usage(), p.probe.memory_usage(), p.drift.memory_usage(), p.hashes.memory_usage(),
           p.links.memory_usage(), p.tagdrift.memory_usage()]
    if p.ann is not None:
        out.append(p.ann.memory_usage(state))
    if p.mirror is not None:
        out.append(p.mirror.memory_usage())
    return out


def _agrees_with_components(index):
    """Every component's ``memory_usage()`` is what ``breakdown()`` reports for it, name by name."""
    mem = index.stats()["memory"]
    seen = set()
    for usage in _component_usages(index, mem["ann_state"]):
        assert set(usage) <= {"anon", "mapped", "gpu", "reserved"}
        for place, parts in usage.items():
            for name, v in parts.items():
                assert isinstance(v, int) and v >= 0, (place, name, v)
                if place == "reserved":
                    assert mem["reserved"].get(name, 0) == v, name
                else:
                    assert mem[place][name] == v, (place, name)
                    seen.add(name)
    # all that the components do not report: what no single one holds
    rest = {name for place in ("anon", "mapped", "gpu") for name in mem[place]} - seen
    assert rest <= {"tombstones", "calibration", "python_pools", "tensors", "runtime_libraries"}, rest  # the process's
    return mem


def test_component_memory_usage_agrees_with_breakdown(built, store):
    mem = _agrees_with_components(built)
    assert mem["ann_state"] == "built" and "content_zstd_contexts" in mem["anon"]
    ro = MemoryIndex.open(store, mode="r")
    mem = _agrees_with_components(ro)
    assert mem["ann_state"] == "opened" and ro.parts.ann.memory_usage() == ro.parts.ann.memory_usage("opened")
    assert mem["mapped"]["content_records"] == ro.parts.contents.memory_usage()["mapped"]["content_records"]
    ro.close()


def test_component_memory_usage_names_are_breakdowns(xb):
    """The contract's shape on a fresh index and one in the exact phase (no IVF yet)."""
    index = MemoryIndex(DIM, CFG)
    _agrees_with_components(index)
    index.add(xb[:100], contents=["a few words"] * 100, tags=[["t"]] * 100)
    mem = _agrees_with_components(index)
    assert mem["ann_state"] is None and not any(k.startswith("ann_") for k in mem["anon"])
    p = index.parts
    assert p.tags.memory_usage()["anon"]["tags_vocab"] == 1 + TAG_OBJECT_BYTES
    assert p.meta.memory_usage() == {"anon": {"metadata": 1100}, "reserved": {"metadata": 1024 * 11 - 1100}}
    assert p.tags.small_objects()[0] == "t" and p.contents.small_objects() == [b"a few words"] * 100


def test_aligned_capacity_and_residency():
    assert aligned_capacity(0) == 0 and aligned_capacity(1) == 256 and aligned_capacity(256) == 256
    assert aligned_capacity(257) == 512 and aligned_capacity(4096) == 4096 and aligned_capacity(4097) == 8192
    np.testing.assert_array_equal(aligned_capacity(np.array([0, 3000, 2**20 + 1])), [0, 4096, 2**21])
    codes = fastscan_list_bytes(np.array([0, 1, 32, 33, 1000]), 96)  # 1536 B per block of 32
    np.testing.assert_array_equal(codes, [0, 1536, 1536, 3072, 32 * 1536])
    np.testing.assert_array_equal(fastscan_resident(codes, "built"), [0, 2048, 2048, 4096, 65536])
    np.testing.assert_array_equal(fastscan_resident(codes, "opened"), [0, 2048, 2048, 4096, 49152 + 4096])
    with pytest.raises(ValueError, match="state"):
        fastscan_resident(codes, "closed")


def test_mmap_vectors_are_mapped_and_spilled(xb, tmp_path):
    index = MemoryIndex(DIM, CFG.replace(vector_storage="mmap", spill_dir=str(tmp_path)))
    _fill(index, xb[:1500])
    mem = _check_totals(index.stats())
    assert mem["mapped"] == {"vectors_int8": 1500 * DIM}
    assert "vectors_int8" not in mem["anon"]
    assert 0 < mem["disk"]["vectors_spill"] <= 4096 * DIM  # sparse: rows written only


def test_opened_store_maps_vectors_and_content(store):
    ro = MemoryIndex.open(store, mode="r")
    mem = _check_totals(ro.stats())
    mapped, disk = mem["mapped"], mem["disk"]
    assert mapped["vectors_int8"] == N * DIM
    assert mapped["content_records"] == ro.parts.contents.nbytes()["records"] > 0
    assert "vectors_int8" not in mem["anon"] and "content_records" not in mem["anon"]
    assert mem["ann_state"] == "opened"
    for part in ("vectors_int8", "ann", "content_records", "metadata", "tags", "manifest", "previous_generation"):
        assert disk[part] > 0, part
    assert mem["disk_bytes"] == _du(store)
    ro.close()


def test_writer_maps_its_rows_and_counts_its_wal(store, xb):
    w = MemoryIndex.open(store, mode="w")
    mem0 = w.stats()["memory"]
    assert "vectors_work" not in mem0["disk"] and not (store / "vectors.work").exists()
    # the published rows mapped copy-on-write (vector_storage="memory"): page cache, not anonymous
    assert mem0["mapped"]["vectors_int8"] == N * DIM and "vectors_int8" not in mem0["anon"]
    w.add(xb[:300], contents=["x" * 2000] * 300)
    mem1 = w.stats()["memory"]
    assert mem1["disk"]["wal"] >= mem0["disk"]["wal"] + 300 * (DIM * 4 + 2000)
    assert mem1["ann_state"] == "built"  # its lists grew after the read
    assert mem1["anon"]["vectors_int8"] == 300 * DIM and mem1["mapped"]["vectors_int8"] == N * DIM
    # the published records stay mapped under the appended ones (a private overlay, no copy)
    records = w.parts.contents.nbytes()["records"]
    assert mem1["mapped"]["content_records"] == mem0["mapped"]["content_records"] > 0
    assert mem1["anon"]["content_records"] == records - mem0["mapped"]["content_records"]
    before, texts = w.search(xb[:50], 10), [m.content for m in w.get(np.arange(N - 5, N + 300))]
    w.checkpoint()  # the rows and records written since become the new generation's files, mapped
    mem2 = w.stats()["memory"]
    assert mem2["disk"]["wal"] < mem0["disk"]["wal"] + 4096  # restarted
    assert mem2["mapped"]["vectors_int8"] == (N + 300) * DIM and "vectors_int8" not in mem2["anon"]
    assert mem2["mapped"]["content_records"] == records and "content_records" not in mem2["anon"]
    after = w.search(xb[:50], 10)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert [m.content for m in w.get(np.arange(N - 5, N + 300))] == texts
    w.add(xb[300:310], contents=["y" * 500] * 10)  # appended after the checkpoint: overlay again
    assert w.stats()["memory"]["mapped"]["content_records"] == records
    assert [m.content for m in w.get(np.arange(N - 5, N + 310))] == texts + ["y" * 500] * 10
    w.close()


# -- the libraries' runtime: measured once per process -------------------------------------------
RUNTIME_CHILD = """
import json, sys
import numpy as np
import lukhas_gpu
from lukhas_gpu.index.tuning import wait
from lukhas_gpu.util import runtime
assert "torch" not in sys.modules
cfg = lukhas_gpu.IndexConfig(train_threshold=2048, capacity=3000, threads=1)
x = np.random.default_rng(0).standard_normal((3000, 16)).astype("float32")
a = lukhas_gpu.MemoryIndex(16, cfg)
a.add(x[:100])
exact = runtime.measured()
a.add(x[100:])
trained = runtime.measured()
a.search(x[:100], 5)
first = runtime.measured()
b = lukhas_gpu.MemoryIndex(16, cfg)
b.add(x)
b.search(x[:100], 5)
again = runtime.measured()
tcfg = lukhas_gpu.IndexConfig(train_threshold=2048, capacity=3000, threads=1, target_recall=0.9)
c = lukhas_gpu.MemoryIndex(16, tcfg)
c.add(x)
wait(c)
print(json.dumps({"exact": exact, "trained_": trained, "first": first, "again": again, "trained": a.is_trained,
                  "tuned": runtime.measured(), "tuning": c.tuning() is not None,
                  "a": a.stats()["memory"]["anon"].get("runtime_libraries"),
                  "b": "runtime_libraries" in b.stats()["memory"]["anon"],
                  "plan": lukhas_gpu.plan(3000, 16, config=cfg).memory["anon"]["runtime_libraries"],
                  "plan_tuned": lukhas_gpu.plan(3000, 16, config=tcfg).memory["anon"]["runtime_libraries"],
                  "plan_exact": lukhas_gpu.plan(100, 16, config=cfg).memory["anon"]["runtime_libraries"],
                  "plan_off": "runtime_libraries" in lukhas_gpu.plan(3000, 16, config=cfg,
                                                                     runtime=False).memory["anon"],
                  "planned": runtime.planned(True, True)}))
"""


def test_runtime_measured_once_on_first_use_and_reported():
    import subprocess
    import sys

    env = {**os.environ, "LUKHAS_GPU_BACKEND": "cpu"}
    out = subprocess.run([sys.executable, "-c", RUNTIME_CHILD], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(r["exact"]) == {"import_torch", "import_faiss", "encode"}  # train not yet
    assert r["exact"]["import_torch"] > 20 << 20  # torch's import alone is tens of MB
    assert r["trained"] and set(r["trained_"]) == {"import_torch", "import_faiss", "encode", "train"}
    assert set(r["first"]) == set(r["trained_"]) | {"search"}
    assert r["again"] == r["first"]  # a second index measures nothing again
    assert r["tuning"] and set(r["tuned"]) == set(r["first"]) | {"tune"}  # the first background run
    assert {k: v for k, v in r["tuned"].items() if k != "tune"} == r["first"]
    assert all(v >= 0 for v in r["tuned"].values())
    # charged to the first index only, every window included (the tuning run came later, on another index)
    assert r["a"] == sum(r["tuned"].values()) > 0 and not r["b"]
    assert r["plan_tuned"] == r["planned"] == r["a"] and not r["plan_off"]  # plan() adds this process's figures
    assert r["plan"] == r["a"] - r["tuned"]["tune"]  # no recall target: no background run planned
    assert r["plan_exact"] == r["plan"] - r["tuned"]["train"]


def test_runtime_caller_imports_are_not_charged():
    import subprocess
    import sys

    code = ("import lukhas_gpu, torch, faiss\nfrom lukhas_gpu.util import runtime\n"
            "print(sorted(runtime.measured()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_default_and_windows(monkeypatch):
    import threading

    from lukhas_gpu.util import runtime

    monkeypatch.setattr(runtime, "_bytes", {})
    monkeypatch.setattr(runtime, "_absorbed", set())
    d = runtime.DEFAULT_BYTES
    exact = d["import_torch"] + d["import_faiss"] + d["encode"] + d["search"]
    assert runtime.planned(False) == exact and runtime.total() == 0
    assert runtime.planned(True, True) == exact + d["train"] + d["tune"]
    assert plan(5000, DIM, config=CFG, backend="cpu").memory["anon"]["runtime_libraries"] == \
        runtime.planned(True, CFG.target_recall is not None and CFG.auto_tune)
    with runtime.first_use("encode") as use:
        use.held = 1 << 40  # more than grew: never negative
    with runtime.first_use("encode") as use:
        pass  # a second window of the same name is not measured
    assert runtime.measured() == {"encode": 0}
    runtime._bytes.update(import_torch=100 << 20, import_faiss=5 << 20)
    assert runtime.planned(False) == (105 << 20) + d["search"]  # measured here: this process's figures
    assert runtime.planned(True) == (105 << 20) + d["search"] + d["train"]  # its first training not yet seen
    with pytest.raises(ValueError, match="window"):
        with runtime.first_use("import_torch"):
            pass
    with pytest.raises(RuntimeError):  # a window whose block fails is not recorded
        with runtime.first_use("train"):
            raise RuntimeError
    assert "train" not in runtime.measured()
    # while a window is open in another thread (the background tuner's), a first search is not measured
    opened, release = threading.Event(), threading.Event()

    def tuner():
        with runtime.first_use("tune"):
            opened.set()
            release.wait(10)

    t = threading.Thread(target=tuner)
    t.start()
    opened.wait(10)
    with runtime.first_use("search"):
        pass
    release.set()
    t.join()
    assert "search" not in runtime.measured() and runtime.measured()["tune"] >= 0
    assert runtime.planned(False) == 105 << 20  # its cost was read by the tuner's window: no default added
    with runtime.first_use("search"):  # the next one is
        pass
    assert runtime.measured()["search"] >= 0 and not runtime._open


# -- plan ----------------------------------------------------------------------------------------
def test_plan_agrees_with_stats_on_exact_components(built):
    st = built.stats()
    p = plan(N, DIM, avg_content_bytes=30, tags_per_memory=2, config=CFG, backend="cpu")
    assert (p.nlist, p.pq_m, p.dim_out, p.coarse) == (st["nlist"], st["pq_m"], st["dim_out"], st["coarse"])
    a, b = p.memory["anon"], st["memory"]["anon"]
    for name in ("vectors_int8", "metadata", "content_offsets", "tags_flat", "tags_start", "tags_count",
                 "ann_ids", "ann_centroids", "encoder", "probe"):
        assert a[name] == b[name], name
    # the ANN codes are exact given the list sizes; plan draws the sizes, so they agree loosely
    assert a["ann_codes"] == pytest.approx(b["ann_codes"], rel=0.1)
    assert list_sizes(N, p.nlist, 1.3).sum() == N


def test_plan_opened_state_and_presets():
    prod = plan(1_000_000, 384, avg_content_bytes=100, tags_per_memory=1, config="production", backend="cpu")
    opened = plan(1_000_000, 384, avg_content_bytes=100, tags_per_memory=1, config="production",
                  state="opened", backend="cpu")
    adv = plan(1_000_000, 384, config="advanced", backend="cpu")
    ultra = plan(1_000_000, 384, config="ultra", backend="cpu")
    assert prod.memory["anon"]["vectors_int8"] == 384_000_000 and "vectors_int8" not in prod.memory["mapped"]
    assert opened.memory["mapped"]["vectors_int8"] == 384_000_000
    assert opened.memory["mapped"]["content_records"] == pytest.approx(1_000_000 * 100 * 0.72)
    assert opened.memory["anon"]["ann_codes_slack"] < prod.memory["anon"]["ann_codes_slack"]
    assert opened.disk_bytes == prod.disk_bytes
    assert adv.memory["mapped"]["vectors_int8"] == 384_000_000
    assert (ultra.dim_out, ultra.pq_m) == (256, 32) and ultra.anon_bytes < adv.anon_bytes < prod.anon_bytes
    assert prod.gpu_bytes == 0
    cuda = plan(1_000_000, 384, config="production", backend="cuda", faiss_gpu=True)
    assert cuda.memory["gpu"]["encoder"] > 0 and cuda.memory["gpu"]["ann"] > 0 and "encoder" not in cuda.memory["anon"]
    small = plan(1000, 384, config="production", backend="cpu")
    assert small.nlist is None and not any(k.startswith("ann_") for k in small.memory["anon"])  # exact phase


def test_plan_is_frozen_and_serialises():
    p = plan(50_000, 64, avg_content_bytes=80, tags_per_memory=3, backend="cpu")
    assert isinstance(p, Plan)
    with pytest.raises(AttributeError):
        p.count = 3
    d = json.loads(json.dumps(p.to_dict()))
    assert d["anon_bytes"] == p.anon_bytes and d["memory"]["disk"] == p.memory["disk"]
    assert p.per_memory["anon"] == pytest.approx(p.anon_bytes / 50_000)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"count": -1}, ValueError, "count"),
    ({"count": 1.5}, TypeError, "count"),
    ({"count": True}, TypeError, "count"),
    ({"dim": 0}, ValueError, "dim"),
    ({"avg_content_bytes": -3}, ValueError, "avg_content_bytes"),
    ({"avg_content_bytes": float("nan")}, ValueError, "avg_content_bytes"),
    ({"tags_per_memory": 300}, ValueError, "tags_per_memory"),
    ({"content_ratio": 0}, ValueError, "content_ratio"),
    ({"tag_vocabulary": 0}, ValueError, "tag_vocabulary"),
    ({"list_imbalance": 0.5}, ValueError, "list_imbalance"),
    ({"state": "closed"}, ValueError, "state"),
    ({"config": 3}, TypeError, "config"),
    ({"config": "nonexistent"}, ValueError, "unknown preset"),
    ({"backend": "tpu"}, ValueError, "backend"),
])
def test_plan_validates_inputs(kwargs, error, match):
    args = {"count": 1000, "dim": 64, **kwargs}
    with pytest.raises(error, match=match):
        plan(args.pop("count"), args.pop("dim"), **args)


@pytest.mark.parametrize("budget, kwargs", [
    (2**30, {"config": "production"}),
    ("4G", {"config": "advanced", "avg_content_bytes": 120, "tags_per_memory": 2}),
    (300 << 20, {"config": "ultra", "state": "opened"}),
])
def test_max_count_inverts_plan(budget, kwargs):
    kwargs = {"dim": 384, "backend": "cpu", **kwargs}
    c = max_count(budget, **kwargs)
    b = parse_size(budget)
    dim = kwargs.pop("dim")
    assert 0 < c < 2**32 - 1
    assert plan(c, dim, **kwargs).anon_bytes <= b < plan(c + 1, dim, **kwargs).anon_bytes


def test_max_count_edges_and_errors():
    assert max_count(10, dim=384, backend="cpu") == 0  # not even an empty index fits
    assert max_count(2**62, dim=8, backend="cpu") == 2**32 - 1
    gpu = max_count(gpu_bytes="1G", dim=384, backend="cuda", faiss_gpu=True)
    assert plan(gpu, 384, backend="cuda", faiss_gpu=True).gpu_bytes <= 2**30
    with pytest.raises(ValueError, match="ram_bytes, gpu_bytes"):
        max_count(dim=384)
    with pytest.raises(TypeError, match="dim"):
        max_count("1G")
    with pytest.raises(TypeError, match="count"):
        max_count("1G", dim=384, count=5)
    with pytest.raises(ValueError, match="16G"):
        max_count("lots", dim=384)


def test_parse_size_and_doctests():
    assert parse_size("2 GiB") == 2 << 30 and parse_size("0") == 0
    with pytest.raises(TypeError):
        parse_size(True)
    with pytest.raises(ValueError):
        parse_size(-1)
    import importlib

    result = doctest.testmod(importlib.import_module("lukhas_gpu.capacity.sizing"))
    assert result.failed == 0 and result.attempted >= 4


def test_content_ratio_of_a_sample():
    texts = [f"note {i}: the meeting about the project moved to thursday" for i in range(3000)]
    r = measure_content_ratio(texts)
    assert 0 < r < 0.7  # repetitive texts compress well once a dictionary is trained
    with pytest.raises(TypeError):
        measure_content_ratio("one string")


def test_public_names():
    from lukhas_gpu.capacity.sizing import Plan as P, max_count as m, plan as p

    assert (lukhas_gpu.plan, lukhas_gpu.Plan, lukhas_gpu.max_count) == (p, P, m)


@pytest.mark.cuda
def test_cuda_encoder_counts_as_gpu(xb):
    index = MemoryIndex(DIM, CFG.replace(backend="cuda"))
    index.add(xb[:1500])
    mem = index.stats()["memory"]
    assert mem["gpu"]["encoder"] == index.encoder.nbytes() and "encoder" not in mem["anon"]
    assert mem["gpu_bytes"] >= index.encoder.nbytes()


def test_plan_counts_namespaces_and_windows(xb, tmp_path):
    """``plan(namespaces=, windows=)`` against a store's own ``memory_usage()`` and files: names,
    the column, the cached bitmaps of searched namespaces, the validity columns and bitmap."""
    from lukhas_gpu.store import layout

    cfg = IndexConfig(train_threshold=1 << 30, auto_tune=False)
    index = MemoryIndex.create(tmp_path / "s", DIM, cfg)
    names = [f"user-{i % 50:04d}" for i in range(N)]
    index.add(xb, namespace=names, valid_to=np.where(np.arange(N) % 4 == 0, 2e9, np.inf))
    for name in sorted(set(names)):
        index.select(namespace=name)  # every namespace's row bitmap cached (at most CACHED_NAMESPACES)
    p = plan(N, DIM, config=cfg, backend="cpu", namespaces=50, windows=0.25)
    have = index.stats()["memory"]["anon"]
    for name in ("namespaces", "validity"):
        assert p.memory["anon"][name] == pytest.approx(have[name], rel=0.1), name
    index.checkpoint()
    for name, file in (("namespaces", layout.NAMESPACES), ("validity", layout.VALIDITY)):
        size = max(f.stat().st_size for f in (tmp_path / "s").rglob(file))  # the checkpoint's
        assert p.memory["disk"][name] == pytest.approx(size, rel=0.1, abs=4096), name
    index.close()
    bare = plan(N, DIM, config=cfg, backend="cpu")
    assert "namespaces" not in bare.memory["anon"] and "validity" not in bare.memory["anon"]
    with pytest.raises(ValueError, match="windows"):
        plan(N, DIM, windows=1.5)
    with pytest.raises(ValueError, match="namespaces"):
        plan(N, DIM, namespaces=0)


def test_checkpoint_whose_map_is_refused_keeps_rows_anonymous(store, xb, monkeypatch):
    """A checkpoint published, then its files' map refused (ENOMEM): the rows and records stay
    this process's own, unchanged; the next checkpoint maps them."""
    from lukhas_gpu.util import cowmap
    from lukhas_gpu.vectors import store as vstore

    w = MemoryIndex.open(store, mode="w")
    w.add(xb[:200], contents=["z" * 300] * 200)
    before = w.search(xb[:20], 10)

    def refuse(*a, **k):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(vstore, "private_map", refuse)
    gen = w.checkpoint()
    assert layout_current(store) == gen.name
    mem = w.stats()["memory"]
    assert mem["anon"]["vectors_int8"] == 200 * DIM  # still the overlay of the opened generation
    np.testing.assert_array_equal(w.search(xb[:20], 10).ids, before.ids)
    monkeypatch.setattr(vstore, "private_map", cowmap.private_map)
    w.checkpoint()
    assert "vectors_int8" not in w.stats()["memory"]["anon"]
    np.testing.assert_array_equal(w.search(xb[:20], 10).ids, before.ids)
    w.close()


def layout_current(root) -> str:
    from lukhas_gpu.store import layout

    return layout.current_generation(root).name
