"""The distributed ingest (``lukhas_gpu.distributed.ingest``) on one local Ray cluster.

Seeded synthetic embeddings (the built-in MiniLM/WordNet model) with contents, tags, timestamps
and importance, written to Parquet and ingested into 2-3 shards; every shard verifies and holds
exactly its rows (row ``r`` in shard ``r % shards`` at row ``r // shards``), with their payloads.
A real kill: a writer actor's process is killed (``ray.kill``) after some batches are
acknowledged, and the ingest resumed without duplicates. Bad rows are named
and nothing of their batch is written; the ``encode=`` path runs a deterministic encoder class on
an actor pool.
"""
from __future__ import annotations

import json
import os
import pathlib
import zlib

import numpy as np
import pytest

from conftest import optional_import

ray = optional_import("ray")
pa = optional_import("pyarrow")
pq = optional_import("pyarrow.parquet")

from lukhas_gpu import IndexConfig, MemoryIndex  # noqa: E402
from lukhas_gpu.distributed import IngestReport, ShardedIndex, ingest, rootfiles  # noqa: E402
from lukhas_gpu.distributed.ingestion import expected_nlist  # noqa: E402
from lukhas_gpu.distributed.partition import shard_rows  # noqa: E402
from lukhas_gpu.distributed.stages import PROBLEM, PrepareStage, plan_resources  # noqa: E402
from lukhas_gpu.distributed.writers import NAMESPACE, actor_name  # noqa: E402
from lukhas_gpu.ingest.input_errors import MigrationError  # noqa: E402
from lukhas_gpu.tools.synthetic import builtin_model  # noqa: E402

pytestmark = pytest.mark.ray

N, BATCH = 6000, 500
HERE = pathlib.Path(__file__).resolve().parent
#: Ray's workers import this checkout (and the encoder class below, from this module).
PYTHONPATH = os.pathsep.join([str(HERE.parent), str(HERE)])
#: Small IVFs: every shard of 3,000 rows trains once (at its last row) with nlist_at(3000) lists.
CFG = IndexConfig(train_threshold=1024, target_recall=None, probe_size=256, probe_queries=0)
COLUMNS = dict(tags_column="tags", timestamp_column="timestamp", importance_column="importance")


# -- data -----------------------------------------------------------------------------------------
def make_rows(n: int, seed: int = 0) -> dict:
    x = builtin_model().sample(n, seed=seed)
    rng = np.random.default_rng(seed)
    vocab = [f"topic{t}" for t in range(12)]
    tags = [sorted(set(rng.choice(vocab, int(rng.integers(0, 4))).tolist())) for _ in range(n)]
    return {"x": x, "content": [f"memory {i}: seed {seed} says {int(rng.integers(1 << 30))}" for i in range(n)],
            "tags": tags, "timestamp": 1.7e9 + rng.random(n) * 3e7, "importance": rng.random(n)}


def write_parquet(path, rows: dict, *, embeddings=None, row_group: int = 1000):
    x = rows["x"]
    emb = embeddings if embeddings is not None else pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)),
                                                                                        x.shape[1])
    pq.write_table(pa.table({"embedding": emb, "content": rows["content"],
                             "tags": pa.array(rows["tags"], type=pa.list_(pa.string())),
                             "timestamp": rows["timestamp"], "importance": rows["importance"]}),
                   path, row_group_size=row_group)
    return path


@pytest.fixture(scope="module")
def cluster():
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
                   logging_level="warning", log_to_driver=False,
                   runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = make_rows(N)
    return rows, write_parquet(tmp_path_factory.mktemp("input") / "memories.parquet", rows)


def shard_memories(root, shards: int) -> list[list]:
    """Every shard's memories in row order (read-only opens: no lock taken)."""
    out = []
    for s in range(shards):
        ix = MemoryIndex.open(rootfiles.shard_dir(root, s), mode="r")
        try:
            out.append(ix.get(np.arange(ix.stats()["rows"])))
        finally:
            ix.close()
    return out


def assert_exactly_once(root, rows: dict, shards: int, n: int) -> None:
    """Each input row r is in shard r % shards at row r // shards, once, with its payloads."""
    seen = 0
    for s, mems in enumerate(shard_memories(root, shards)):
        assert len(mems) == shard_rows(n, shards)[s]
        for j, m in enumerate(mems):
            r = s + j * shards
            assert m.content == rows["content"][r]
            assert m.tags == rows["tags"][r]
            assert m.timestamp == pytest.approx(rows["timestamp"][r])
            assert m.importance == pytest.approx(rows["importance"][r], abs=0.01)
        seen += len(mems)
    assert seen == n


# -- without the cluster: the rules each part follows ---------------------------------------------
def test_resources_leave_a_cpu_for_the_tasks_and_give_the_encoder_the_gpus():
    r = plan_resources({"CPU": 2.0}, 2, encode=True)
    assert r.held_cpus(2) <= 1.0 and 0 < r.writer_cpus <= 0.25 and r.encode_actors == 1 and r.encode_gpus == 0
    r = plan_resources({"CPU": 2.0}, 4, encode=False)
    assert r.held_cpus(4) == pytest.approx(1.0) and r.task_cpus == 1.0
    r = plan_resources({"CPU": 64.0, "GPU": 8.0}, 8, encode=True)
    assert (r.encode_actors, r.encode_gpus, r.writer_cpus) == (8, 1.0, 1.0) and r.held_cpus(8) <= 48
    with pytest.raises(ValueError, match="no CPUs"):
        plan_resources({}, 2, encode=False)


def test_partition_counts_and_nlist_follow_the_policy():
    assert shard_rows(10, 3) == [4, 3, 3] and shard_rows(2, 4) == [1, 1, 0, 0] and sum(shard_rows(N, 2)) == N
    assert expected_nlist(N, 2, CFG) == [64, 64]  # auto_nlist(3000): at least 256, then >= 39 rows per list
    assert expected_nlist(N, 2, IndexConfig()) == [None, None]  # below the default train_threshold: exact


def test_prepare_marks_the_first_bad_row_of_a_batch_in_its_words():
    x = builtin_model().sample(8, seed=3)
    lists = [list(map(float, v)) for v in x]
    lists[5] = lists[5][:-1]  # dimension 383
    lists[6][0] = float("nan")
    prep = PrepareStage({"embedding": "vec", "importance": "imp"}, 384, True, 1024)
    out = prep(pa.table({"vec": lists, "imp": [0.5] * 8}))
    problems = out.column(PROBLEM).to_pylist()
    assert problems[:5] == [""] * 5 and "dimension 383, the store expects 384" in problems[5]
    out = prep(pa.table({"vec": lists[:5] + lists[6:], "imp": [0.5] * 4 + [1.5] * 3}))
    assert out.column(PROBLEM).to_pylist()[4] == '"importance" must be in [0, 1], got 1.5'
    out = prep(pa.table({"vec": lists[:5] + lists[6:], "imp": [0.5] * 7}))
    assert "NaN" in out.column(PROBLEM).to_pylist()[5]
    ok = prep(pa.table({"vec": lists[:5], "imp": [0.25] * 5}))
    assert ok.column("embedding").type.list_size == 384 and ok.column("importance").to_pylist() == [0.25] * 5
    assert np.allclose(np.asarray(ok.column("embedding").combine_chunks().flatten()).reshape(5, 384), x[:5])


# -- on the cluster ---------------------------------------------------------------------------------
def test_parquet_into_shards_every_row_once_with_its_payloads(cluster, data, tmp_path):
    rows, path = data
    seen = []
    rep = ingest(path, tmp_path / "root", shards=2, config=CFG, batch_size=BATCH, progress=seen.append, **COLUMNS)
    assert isinstance(rep, IngestReport)
    assert (rep.rows, rep.written, rep.resumed, rep.dim) == (N, N, 0, 384)
    assert rep.shard_rows == shard_rows(N, 2) and rep.shard_nlist == expected_nlist(N, 2, CFG)
    assert seen[-1].done == N and [p.done for p in seen] == sorted(p.done for p in seen)
    d = rep.to_dict()
    assert d["rows_per_second"] > 0 and d["disk_bytes"] > 0 and d["bytes_per_memory"] > 384
    assert set(d["stages"]) >= {"read", "prepare", "write", "train", "checkpoint"}
    json.dumps(d)
    root = rootfiles.read_root(tmp_path / "root")
    assert (root["state"], root["shards"], root["dim"]) == ("complete", 2, 384)
    for s in range(2):
        with MemoryIndex.open(rootfiles.shard_dir(tmp_path / "root", s), mode="w") as ix:
            assert ix.verify()["ok"] and ix.stats()["nlist"] == rep.shard_nlist[s]
            # each shard answers for its own rows: a stored vector finds itself
            own = np.arange(s, N, 2)[:50]
            hits = np.asarray(ix.search(rows["x"][own], 1).ids)[:, 0]
            assert (hits == own // 2).mean() >= 0.95
    assert_exactly_once(tmp_path / "root", rows, 2, N)
    # the root searched as one index: a stored vector finds itself under its global id
    with ShardedIndex.open(tmp_path / "root") as sx:
        r = np.arange(0, N, 97)
        hits = np.asarray(sx.search(rows["x"][r], 1).ids)[:, 0]
        assert (hits == (r % 2 << rootfiles.SHARD_SHIFT) | r // 2).mean() >= 0.95
    for s in range(2):  # the shards keep the config they were given (auto_tune is only held off while writing)
        with MemoryIndex.open(rootfiles.shard_dir(tmp_path / "root", s)) as ix:
            assert ix.config == CFG.replace(capacity=shard_rows(N, 2)[s])
    # the same input again: nothing to add, nothing published
    again = ingest(path, tmp_path / "root", shards=2, config=CFG, batch_size=BATCH, progress=False, **COLUMNS)
    assert (again.written, again.resumed, again.shard_rows) == (0, N, rep.shard_rows)


def test_a_killed_writer_then_a_resume_write_every_row_once(cluster, data, tmp_path):
    rows, path = data
    root = tmp_path / "root"

    def kill_a_writer(p):  # after some acknowledged batches, shard 1's process dies (SIGKILL)
        if p.done >= 4 * BATCH and not killed:
            killed.append(p.done)
            ray.kill(ray.get_actor(actor_name(root, 1), namespace=NAMESPACE), no_restart=True)

    killed = []
    with pytest.raises(ray.exceptions.RayActorError):
        ingest(path, root, shards=2, config=CFG, batch_size=BATCH // 2, progress=kill_a_writer, **COLUMNS)
    assert rootfiles.read_root(root)["state"] == "ingesting"
    held = [len(m) for m in shard_memories(root, 2)]
    assert 0 < min(held) and sum(held) < N  # each shard holds a prefix of its rows
    assert sum(held) >= killed[0]  # what was acknowledged is in the shards' logs
    with pytest.raises(ValueError, match="another input"):  # a resume must be the same input
        ingest(write_parquet(tmp_path / "other.parquet", make_rows(N, seed=1)), root, shards=2, config=CFG,
               progress=False, **COLUMNS)
    rep = ingest(path, root, shards=2, config=CFG, batch_size=BATCH, progress=False, **COLUMNS)
    assert rep.shard_resumed == held and rep.resumed == sum(held) and rep.written == N - sum(held)
    assert rootfiles.read_root(root)["state"] == "complete"
    for s in range(2):
        with MemoryIndex.open(rootfiles.shard_dir(root, s), mode="w") as ix:
            assert ix.verify()["ok"]
    assert_exactly_once(root, rows, 2, N)


def test_a_bad_row_is_named_and_nothing_of_its_batch_is_written(cluster, tmp_path):
    rows = make_rows(2000, seed=2)
    rows["x"][1234, 7] = np.nan
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(MigrationError, match=r"bad\.parquet, row 1234: embedding contains NaN"):
        ingest(path, tmp_path / "root", shards=2, config=CFG, batch_size=BATCH, progress=False, **COLUMNS)
    assert rootfiles.read_root(tmp_path / "root")["state"] == "ingesting"
    held = shard_memories(tmp_path / "root", 2)
    assert [len(m) for m in held] == [500, 500]  # batches 0 and 1 whole, nothing of batch 2
    assert [m.content for m in held[1]] == rows["content"][1:1000:2]
    # a missing column, or a mistyped one, is named before anything runs
    with pytest.raises(MigrationError, match="no column 'labels' for the tags"):
        ingest(path, tmp_path / "root2", shards=2, config=CFG, tags_column="labels", progress=False)
    with pytest.raises(MigrationError, match="column 'content' \\(importance\\) has type string"):
        ingest(path, tmp_path / "root2", shards=2, config=CFG, importance_column="content", progress=False)
    assert not (tmp_path / "root2").exists()
    with pytest.raises(ValueError, match="shards must be an int in 1..32,768"):
        ingest(path, tmp_path / "root2", shards=0)


class TextHashEncoder:
    """A deterministic stand-in for a text model: each content's CRC seeds its unit vector."""

    dim = 32

    def __init__(self):
        self.calls = 0

    def __call__(self, batch: dict) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vector(t) for t in batch["content"]])

    @classmethod
    def vector(cls, text: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(cls.dim).astype(np.float32)
        return v / np.linalg.norm(v)


def test_encode_turns_texts_into_vectors_on_an_actor_pool(cluster, tmp_path):
    n = 3001
    texts = [f"note {i} about {['cats', 'tea', 'rain'][i % 3]}" for i in range(n)]
    ds = ray.data.from_arrow(pa.table({"content": texts, "importance": np.linspace(0, 1, n)}))
    rep = ingest(ds, tmp_path / "root", shards=3, config=CFG, encode=TextHashEncoder, importance_column="importance",
                 batch_size=400, progress=False)
    assert (rep.dim, rep.written, rep.shard_rows) == (32, n, [1001, 1000, 1000])
    assert rep.stages["encode"] > 0
    # a dataset has no files to compare: another one of the same size and schema is told apart by
    # its first rows, before anything is written
    other = ray.data.from_arrow(pa.table({"content": texts[::-1], "importance": np.linspace(0, 1, n)}))
    with pytest.raises(ValueError, match="another input .*head"):
        ingest(other, tmp_path / "root", shards=3, config=CFG, encode=TextHashEncoder, importance_column="importance",
               batch_size=400, progress=False)
    for s in range(3):
        with MemoryIndex.open(rootfiles.shard_dir(tmp_path / "root", s), mode="r") as ix:
            own = list(range(s, n, 3))[::97]
            res = ix.search(np.stack([TextHashEncoder.vector(texts[r]) for r in own]), 1)
            assert np.asarray(res.ids)[:, 0].tolist() == [r // 3 for r in own]
            assert np.asarray(res.scores)[:, 0] == pytest.approx(1.0, abs=0.02)


def test_cli_ingests_jsonl_with_ray_and_prints_the_report(cluster, tmp_path, capsys):
    from lukhas_gpu import cli

    rows = make_rows(600, seed=4)
    path = tmp_path / "memories.jsonl"
    with open(path, "w") as f:
        for i in range(600):
            f.write(json.dumps({"embedding": rows["x"][i].tolist(), "content": rows["content"][i],
                                "tags": rows["tags"][i], "importance": rows["importance"][i],
                                "timestamp": rows["timestamp"][i]}) + "\n")
    root = tmp_path / "root"
    assert cli.main(["ingest", "--ray", "--shards", "3", "--preset", "production", "--batch-size", "150",
                     str(root), str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["rows"], rep["written"], rep["shards"], rep["shard_rows"]) == (600, 600, 3, [200, 200, 200])
    assert rep["shard_nlist"] == [None] * 3  # production trains from 32,768 rows: these stay exact
    assert_exactly_once(root, rows, 3, 600)
    # the single-store ingest's options that make no sense here are refused, Ray or not
    assert cli.main(["ingest", "--ray", "--restart", str(root), str(path)]) == 1
    assert "--restart does not go with --ray" in capsys.readouterr().err
