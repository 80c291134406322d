"""Trials with automatic rollback (``MemoryIndex.trial``, ``index/trials.py``): a candidate that
holds recall is promoted (config, checkpoint, readers), one that loses it is rolled back with
nothing changed; both sides reported; bad changes refused; a writer killed during a trial
reopens as the live index or the promoted one, never anything else; the CLI and the server."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.store import layout

from conftest import optional_import

D, N = 32, 4000


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    cents = _unit(rng.standard_normal((40, D)))
    x = _unit(cents[rng.integers(0, 40, N)] + 0.3 * rng.standard_normal((N, D)))
    q = _unit(cents[rng.integers(0, 40, 200)] + 0.3 * rng.standard_normal((200, D)))
    return x, q


def _store(path, data, **cfg):
    x, q = data
    ix = MemoryIndex.create(path, D, IndexConfig(train_threshold=1024, nprobe=16, **cfg))
    ix.add(x, contents=[f"m{i}" for i in range(N)], tags=[["t"]] * N)
    ix.search(q, 10)  # recorded queries: the trial's traffic
    return ix


def _snapshot(ix):
    ids = np.arange(len(ix))
    return ix.contents(ids), [m.tags for m in ix.get(ids)], np.asarray(ix.parts.vectors[ids]).copy()


def _same(a, b):
    return a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_a_candidate_that_holds_recall_is_promoted_and_durable(tmp_path, data):
    path = tmp_path / "s"
    ix = _store(path, data)
    before, nlist0 = _snapshot(ix), ix.parts.ann.nlist
    reader = MemoryIndex.open(path)
    rep = ix.trial(nlist=nlist0 // 2, recall_tolerance=0.2, qps_tolerance=None)
    assert rep["decision"] == "promoted" and rep["promoted"] and rep["generation"] is not None
    live, cand = rep["live"], rep["candidate"]
    assert live["params"]["nlist"] == nlist0 and cand["params"]["nlist"] == nlist0 // 2
    assert cand["params"]["nprobe"] == 8  # the same share of the lists
    for side in (live, cand):
        assert 0 < side["recall"] <= 1 and side["ci"][0] <= side["recall"] <= side["ci"][1]
        assert side["qps"] > 0 and side["bytes"] > 0
    assert "probe recall" in rep["reason"] and rep["changes"] == {"nlist": nlist0 // 2}
    assert ix.config.nlist == nlist0 // 2 and ix.config.nprobe == 8 and ix.parts.ann.nlist == nlist0 // 2
    assert _same(before, _snapshot(ix))
    assert [t["decision"] for t in ix.trials()] == ["promoted"]
    assert ix.stats()["monitoring"]["last_trial"]["decision"] == "promoted"
    assert layout.current_generation(path).name == rep["generation"]
    reader.refresh()  # readers see the promoted structure
    assert reader.stats()["nlist"] == nlist0 // 2 and reader.config.nlist == nlist0 // 2
    assert [t["decision"] for t in reader.trials()] == ["promoted"]
    ix.close()
    again = MemoryIndex.open(path, mode="w")
    assert again.parts.ann.nlist == nlist0 // 2 and _same(before, _snapshot(again))
    assert again.search(data[0][:5], 1).ids.ravel().tolist() == [0, 1, 2, 3, 4]
    again.verify()  # raises on a damaged file or an inconsistency
    again.close()
    reader.close()


def test_a_candidate_that_loses_recall_is_rolled_back_and_nothing_changes(tmp_path, data):
    path = tmp_path / "s"
    ix = _store(path, data)
    before, gen, cfg, ann = _snapshot(ix), layout.current_generation(path).name, ix.config, ix.parts.ann
    rep = ix.trial(nprobe=1, recall_tolerance=0.0)
    assert rep["decision"] == "rolled back" and not rep["promoted"] and rep["generation"] is None
    assert rep["candidate"]["recall"] < rep["live"]["recall"] and "past the tolerance" in rep["reason"]
    assert rep["candidate"]["params"]["nprobe"] == 1 and rep["live"]["params"]["nprobe"] == 16
    assert ix.config == cfg and ix.parts.ann is ann and _same(before, _snapshot(ix))
    assert layout.current_generation(path).name == gen
    assert ix.trials()[-1]["decision"] == "rolled back"
    reader = MemoryIndex.open(path)  # the report is durable when the trial ends: logged, no checkpoint
    assert reader.trials()[-1] == ix.trials()[-1] and layout.current_generation(path).name == gen
    reader.close()
    ix.close(checkpoint=False)  # as a crash leaves it: only the log has the report
    again = MemoryIndex.open(path)
    assert again.trials()[-1] == json.loads(json.dumps(rep)) and again.config == cfg
    again.close()


def test_a_projection_trial_changes_dim_out_and_reopens(tmp_path, data):
    path = tmp_path / "s"
    ix = _store(path, data)
    rep = ix.trial(dim_out=16, pq_m=8, recall_tolerance=1.0, qps_tolerance=None)
    assert rep["promoted"] and rep["candidate"]["params"]["dim_out"] == 16
    assert ix.encoder.dim_out == 16 and ix.config.dim_out == 16 and ix.parts.dim_out == 16
    got = ix.search(data[0][:20], 1).ids.ravel().tolist()
    ix.close()
    again = MemoryIndex.open(path, mode="w")
    assert again.encoder.dim_out == 16 and again.search(data[0][:20], 1).ids.ravel().tolist() == got
    rep = again.retrain(tolerance=0.5)  # a retrain keeps the trial's config
    assert rep["nlist"] == again.config.nlist or again.config.nlist is None
    assert again.encoder.dim_out == 16
    again.close()


def test_a_structure_trial_promotes_its_stage_durably_or_rolls_back(tmp_path, data):
    x, q = data
    path = tmp_path / "s"
    ix = _store(path, data)
    reader = MemoryIndex.open(path)
    rep = ix.trial(structure="exact", recall_tolerance=1.0, qps_tolerance=None)
    assert rep["promoted"] and rep["generation"] == layout.current_generation(path).name
    assert rep["candidate"]["params"]["structure"] == "exact" and rep["changes"] == {"structure": "exact"}
    assert ix.parts.tuned.kind == "exact" and ix.parts.stage is None
    gen = rep["generation"]
    rep = ix.trial(structure="graph", recall_tolerance=0.0, qps_tolerance=None)  # below the exact scan's recall
    assert rep["decision"] == "rolled back" and rep["generation"] is None
    assert rep["live"]["params"]["structure"] == "exact" and rep["candidate"]["params"]["structure"] == "graph"
    assert rep["candidate"]["recall"] < rep["live"]["recall"] and rep["candidate"]["bytes"] > rep["live"]["bytes"]
    assert ix.parts.tuned.kind == "exact" and ix.parts.stage is None and ix.parts.building == []
    assert layout.current_generation(path).name == gen
    rep = ix.trial(structure="graph", recall_tolerance=1.0, qps_tolerance=None)
    assert rep["promoted"] and ix.parts.stage.kind == "graph" and ix.parts.stage.ready
    assert ix.parts.tuned.kind == "graph" and ix.config.nlist is None
    ix.add(x[:50], contents=[f"n{i}" for i in range(50)])  # the promoted stage follows the writes
    got = ix.search(q, 10, target_recall=0.95).ids
    reader.refresh()
    assert reader.parts.stage.kind == "graph"
    assert [t["decision"] for t in reader.trials()] == ["promoted", "rolled back", "promoted"]
    reader.close()
    ix.close()
    again = MemoryIndex.open(path, mode="w")
    assert again.parts.stage.kind == "graph" and again.parts.tuned.kind == "graph"
    assert np.array_equal(np.asarray(again.search(q, 10, target_recall=0.95).ids), np.asarray(got))
    again.verify()
    for kw, match in [({"structure": "hnsw"}, "structure"), ({"structure": None}, "structure"),
                      ({"structure": "graph", "nlist": 8}, "alone")]:
        with pytest.raises(ValueError, match=match):
            again.trial(**kw)
    again.close()


def test_bad_changes_are_refused_and_change_nothing(tmp_path, data):
    ix = _store(tmp_path / "s", data)
    cfg, ann = ix.config, ix.parts.ann
    for kw, match in [({}, "at least one change"), ({"nlst": 8}, "cannot change"), ({"nlist": True}, "nlist"),
                      ({"nlist": 0}, "nlist"), ({"nlist": 10**9}, "nlist"), ({"nlist": 4096}, "live memories"),
                      ({"coarse": "ivf"}, "coarse"), ({"dim_out": 1024}, "dim_out"),
                      ({"nlist": 8, "recall_tolerance": 2}, "recall_tolerance"),
                      ({"nlist": 8, "qps_tolerance": -1}, "qps_tolerance"),
                      ({"nlist": 8, "queries": np.zeros((2, 3), np.float32)}, "queries")]:
        with pytest.raises((ValueError, TypeError), match=match):
            ix.trial(**kw)
    assert ix.config == cfg and ix.parts.ann is ann and ix.trials() == []
    r = MemoryIndex.open(tmp_path / "s")
    with pytest.raises(layout.StoreError, match="read-only"):
        r.trial(nlist=8)
    r.close()
    ix.close()
    small = MemoryIndex(D)
    small.add(data[0][:100])
    with pytest.raises(ValueError, match="not trained"):
        small.trial(nlist=8)


_KILLED = """
import sys
from lukhas_gpu import MemoryIndex
ix = MemoryIndex.open(sys.argv[1], mode="w")
_ = ix.encoder
print("ready", flush=True)
rep = ix.trial(nlist=int(sys.argv[2]), recall_tolerance=1.0, qps_tolerance=None)
print("done", rep["generation"], flush=True)
sys.stdin.readline()
"""


def test_a_writer_killed_during_a_trial_reopens_live_or_promoted(tmp_path, data):
    from serve_helpers import env

    path = tmp_path / "s"
    ix = _store(path, data)
    before, nlist0 = _snapshot(ix), ix.parts.ann.nlist
    ix.close()
    seen = set()
    for delay in (0.05, 0.4, 30.0):
        proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path), str(nlist0 // 2)], env=env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            if delay < 30:
                time.sleep(delay)
            else:  # killed after the promotion's checkpoint
                assert proc.stdout.readline().startswith("done")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        again = MemoryIndex.open(path, mode="w")
        nlist = again.parts.ann.nlist
        assert nlist in (nlist0, nlist0 // 2) and again.config.nlist in (None, nlist0 // 2)
        assert (again.config.nlist == nlist0 // 2) == (nlist == nlist0 // 2)  # config and structure together
        assert _same(before, _snapshot(again))
        seen.add(nlist)
        again.close(checkpoint=False)
        if nlist != nlist0:  # start the next try from the live structure again
            MemoryIndex.rollback(path, discard_log=True)
    assert nlist0 // 2 in seen


def test_the_cli_and_the_server_run_trials(tmp_path, data, capsys):
    from lukhas_gpu.cli import main

    path = tmp_path / "s"
    ix = _store(path, data)
    nlist0 = ix.parts.ann.nlist
    ix.close()
    assert main(["trial", str(path), "--nprobe", "1", "--recall-tolerance", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["decision"] == "rolled back" and rep["live"]["params"]["nlist"] == nlist0
    assert main(["trial", str(path), "--nlist", str(nlist0 // 2), "--recall-tolerance", "1",
                 "--qps-tolerance", "1"]) == 0
    out = capsys.readouterr().out
    assert "promoted" in out and "candidate" in out
    assert main(["trial", str(path), "--structure", "rabitq", "--recall-tolerance", "1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["candidate"]["params"]["structure"] == "rabitq" and rep["changes"] == {"structure": "rabitq"}
    assert main(["drift", str(path), "--by-tag", "--json"]) == 0
    assert "t" in json.loads(capsys.readouterr().out)["tags"]
    optional_import("fastapi")
    optional_import("httpx")
    from fastapi.testclient import TestClient

    from lukhas_gpu.serve.app import create_app
    from lukhas_gpu.serve.options import ServeOptions

    with TestClient(create_app(ServeOptions(store=str(path), mode="w", refresh_s=0.0))) as c:
        r = c.post("/v1/trial", json={"nprobe": 1, "recall_tolerance": 0})
        assert r.status_code == 200 and r.json()["decision"] == "rolled back", r.text
        r = c.post("/v1/trial", json={"structure": "exact", "recall_tolerance": 1, "qps_tolerance": None})
        assert r.status_code == 200 and r.json()["candidate"]["params"]["structure"] == "exact", r.text
        assert c.post("/v1/trial", json={"structure": "bogus"}).status_code in (400, 422)
        assert c.post("/v1/trial", json={"nlst": 3}).status_code == 422
        assert c.post("/v1/trial", json={}).status_code in (400, 422)
        assert c.get("/v1/drift", params={"by_tag": "true"}).json()["tags"]["t"]["count"] == N
        assert "collection_tags_drifted" in c.get("/metrics").text
    with TestClient(create_app(ServeOptions(store=str(path), mode="r", refresh_s=0.0))) as c:
        assert c.post("/v1/trial", json={"nlist": 8}).status_code == 409
