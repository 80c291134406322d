"""Per-tag drift (``drift(by_tag=True)``, ``monitor/tagdrift.py``, ``index/driftwatch.py``): a tag
whose new memories come from another distribution is flagged and one whose memories stay is not
(5 seeds); the references survive checkpoint and reopen, readers see them, reset takes the data
now; the file's damage is named and its absence is "no reference yet"; /metrics stays bounded."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.monitor.tagdrift import TAG_WINDOW, TagDrift, summarize
from lukhas_gpu.store import layout

from conftest import optional_import

D = 32


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _phases(seed: int):
    """(first phase, second phase): lists of (vectors, tags) batches; "move"'s second phase
    comes from another centre, "stay"'s from its own."""
    rng = np.random.default_rng(seed)
    ca, cb, cc = _unit(rng.standard_normal((3, D)))

    def draw(c, n):
        return _unit(c + 0.35 * rng.standard_normal((n, D)))

    first = [(draw(ca, 600), [["stay"]] * 600), (draw(cb, 600), [["move", "x"]] * 600)]
    second = [(draw(ca, 300), [["stay"]] * 300), (draw(cc, 300), [["move"]] * 300)]
    return first, second


def _add(ix, batches):
    for x, tags in batches:
        ix.add(x, tags=tags)


@pytest.mark.parametrize("seed", range(5))
def test_a_tag_whose_memories_move_is_flagged_and_one_that_stays_is_not(seed, caplog):
    first, second = _phases(seed)
    ix = MemoryIndex(D)
    _add(ix, first)
    rep = ix.drift(by_tag=True)
    assert rep["drifted_tags"] == [] and set(rep["tags"]) == {"stay", "move", "x"}
    _add(ix, second)
    with caplog.at_level(logging.WARNING, logger="lukhas_gpu.monitor.tagdrift"):
        rep = ix.drift(by_tag=True)
        again = ix.drift(by_tag=True)
    tags = rep["tags"]
    assert tags["move"]["drifted"] and not tags["stay"]["drifted"] and not tags["x"]["drifted"], tags
    assert tags["move"]["shift"] > 2 * tags["stay"]["shift"]
    assert rep["drifted_tags"] == ["move"] and again["drifted_tags"] == ["move"]
    assert sum("'move'" in r.getMessage() for r in caplog.records) == 1  # once per crossing
    assert tags["stay"]["count"] == 900
    assert tags["stay"]["reference_count"] == 600  # the batch took it past TAG_MIN_COUNT
    assert tags["stay"]["recent_rows"] == TAG_WINDOW


def test_the_figures_match_an_exact_reference():
    first, second = _phases(7)
    ix = MemoryIndex(D)
    _add(ix, first + second)
    rows = np.flatnonzero([("move" in t) for t in ix.parts.tags.get(np.arange(len(ix)))])
    x = ix.encoder.dequantize(np.asarray(ix.parts.vectors[rows])).numpy()
    ref_c, ref_s = summarize(x[600 - TAG_WINDOW:600])  # the newest rows of the add that reached TAG_MIN_COUNT
    c, s = summarize(x[-TAG_WINDOW:])
    got = ix.drift(by_tag=True)["tags"]["move"]
    assert got["shift"] == pytest.approx(np.linalg.norm(c - ref_c) / ref_s, rel=1e-4)
    assert got["spread_ratio"] == pytest.approx(s / ref_s, rel=1e-4)
    ex = ((x[-TAG_WINDOW:] - x[-TAG_WINDOW:].mean(0)) ** 2).sum(1).mean() ** 0.5
    assert got["spread"] == pytest.approx(ex, rel=1e-4)


def test_deleted_memories_leave_the_recent_window_and_small_tags_have_no_figure():
    first, second = _phases(1)
    ix = MemoryIndex(D)
    _add(ix, first + second)
    rows = ix.parts.tags.bitmap("move")
    ix.delete(np.asarray(rows[-300:].to_array(), dtype=np.int64))  # the moved ones go
    rep = ix.drift(by_tag=True)
    assert not rep["tags"]["move"]["drifted"] and rep["tags"]["move"]["count"] == 600
    ix.add(_unit(np.ones((10, D))), tags=[["few"]] * 10)
    assert "few" not in ix.drift(by_tag=True)["tags"]


def test_references_survive_checkpoint_and_reopen_and_readers_see_them(tmp_path):
    first, second = _phases(2)
    path = tmp_path / "s"
    w = MemoryIndex.create(path, D)
    _add(w, first[:1])
    w.checkpoint()
    _add(w, first[1:] + second)  # "move"'s reference is taken from the log's records
    want = w.drift(by_tag=True)["tags"]
    r = MemoryIndex.open(path)
    assert r.drift(by_tag=True)["tags"] == want
    w.checkpoint()
    r.refresh()
    assert r.drift(by_tag=True)["tags"] == want
    w.close()
    for mode in ("r", "w"):
        again = MemoryIndex.open(path, mode=mode)
        assert again.drift(by_tag=True)["tags"] == want
        again.close()
    r.close()


def test_reset_takes_the_data_now_and_is_durable(tmp_path):
    first, second = _phases(3)
    path = tmp_path / "s"
    w = MemoryIndex.create(path, D)
    _add(w, first + second)
    assert w.drift(by_tag=True)["drifted_tags"] == ["move"]
    r = MemoryIndex.open(path)
    with pytest.raises(layout.StoreError, match="read-only"):
        r.drift(reset=True)
    gen = layout.current_generation(path).name
    assert w.drift(by_tag=True, reset=True)["drifted_tags"] == []
    assert layout.current_generation(path).name != gen  # checkpointed
    r.refresh()
    assert r.drift(by_tag=True)["drifted_tags"] == []
    with pytest.raises(TypeError, match="bool"):
        w.drift(by_tag=1)
    w.close()
    r.close()


def test_training_takes_the_references_again():
    first, second = _phases(4)
    ix = MemoryIndex(D, IndexConfig(train_threshold=4096))
    _add(ix, first + second)
    assert ix.drift(by_tag=True)["drifted_tags"] == ["move"]
    ix.train()
    rep = ix.drift(by_tag=True)["tags"]["move"]
    assert rep["reference_count"] == rep["count"] and not rep["drifted"]


def _rewrite_manifest(gen, name, drop: bool):
    man = layout.read_manifest(gen)
    if drop:
        del man["files"][name]
        (gen / name).unlink()
    else:
        man["files"][name]["bytes"] = (gen / name).stat().st_size
        man["files"][name]["crc32"] = layout.crc32_file(gen / name)
    man[layout.MANIFEST_CRC] = layout.manifest_crc({k: v for k, v in man.items() if k != layout.MANIFEST_CRC})
    (gen / layout.MANIFEST).write_text(json.dumps(man))


def test_a_generation_without_references_loads_as_none_yet_and_a_bad_one_is_named(tmp_path):
    first, second = _phases(5)
    path = tmp_path / "s"
    with MemoryIndex.create(path, D) as w:
        _add(w, first)
    gen = layout.current_generation(path)
    arrays = dict(np.load(gen / layout.TAG_DRIFT))
    arrays["centroids"] = arrays["centroids"][:-1]  # rows that disagree with the names
    np.savez(gen / layout.TAG_DRIFT, **arrays)
    _rewrite_manifest(gen, layout.TAG_DRIFT, drop=False)
    with pytest.raises(layout.CorruptStoreError, match="drift"):
        MemoryIndex.open(path)
    _rewrite_manifest(gen, layout.TAG_DRIFT, drop=True)
    r = MemoryIndex.open(path)
    assert r.drift(by_tag=True)["tags"] == {} and len(r.parts.tagdrift) == 0
    r.close()


def test_the_component_round_trips_and_refuses_arrays_that_disagree():
    td = TagDrift(4)
    rng = np.random.default_rng(0)
    for i in range(40):  # past the first growth
        td.set(f"t{i}", rng.standard_normal((8, 4)), 8)
    back = TagDrift(4)
    back.load_arrays(td.to_arrays())
    assert back.names == td.names and np.array_equal(back.centroids, td.centroids[:40])
    x = rng.standard_normal((8, 4))
    assert back.compare("t3", x, 8) == td.compare("t3", x, 8)
    bad = td.to_arrays()
    bad["counts"] = bad["counts"][:-1]
    with pytest.raises(ValueError, match="tags"):
        TagDrift(4).load_arrays(bad)
    with pytest.raises(ValueError, match="dim"):
        TagDrift(5).load_arrays(td.to_arrays())


def test_metrics_export_at_most_the_ten_most_shifted_tags():
    optional_import("prometheus_client")
    from lukhas_gpu.serve.metrics import TAG_DRIFT_METRICS, Metrics

    m = Metrics()
    tags = {f"tag{i}" + "x" * 100: {"shift": float(i), "drifted": i > 15} for i in range(30)}
    m.update_tag_drift({"tags": tags, "drifted_tags": [t for t, r in tags.items() if r["drifted"]]})
    text = m.render().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("collection_tag_drift_shift{")]
    assert len(lines) == TAG_DRIFT_METRICS and 'tag="tag29' in text and 'tag="tag19' not in text
    assert "collection_tags_drifted 14.0" in text
    m.update_tag_drift({"tags": {}, "drifted_tags": []})
    assert "collection_tag_drift_shift{" not in m.render().decode()


def test_plan_counts_the_references_of_the_tags_that_reach_the_minimum():
    import lukhas_gpu

    few = lukhas_gpu.plan(100_000, 384, tags_per_memory=1, tag_vocabulary=10).memory["anon"]
    many = lukhas_gpu.plan(100_000, 384, tags_per_memory=1, tag_vocabulary=100_000, tag_skew=0.0).memory["anon"]
    assert few["tag_drift"] >= 10 * 384 * 4 and "tag_drift" not in many  # 1 memory per tag: none reaches it
    ix = MemoryIndex(D)
    _add(ix, _phases(0)[0])
    assert ix.stats()["memory"]["anon"]["tag_drift"] == ix.parts.tagdrift.nbytes() > 3 * D * 4
