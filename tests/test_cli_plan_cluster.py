"""``lukhas-gpu plan --node-ram``: the cluster plan of a sharded root (pure arithmetic, no Ray)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, plan
from lukhas_gpu.cli import main
from lukhas_gpu.distributed.cluster import MEASURED, PROCESS, plan_cluster, shard_qps, wal_row_bytes
from lukhas_gpu.distributed.rootfiles import MAX_SHARDS, global_ids
from lukhas_gpu.store.layout import MAX_ROWS

BIG_NODE = dict(node_ram="256GB", node_gpus=8, gpu_mem="80GB", node_disk="4TB", node_cpus=64)


def _fits(p: dict) -> None:
    """Every node's budgets hold its shards, the shards hold every memory, the ids fit."""
    node = p["per_node"]
    assert node["ram"]["usable"] <= node["ram"]["budget"]
    assert 0 < node["ram"]["ingest"] <= node["ram"]["usable"] and 0 < node["ram"]["serve"] <= node["ram"]["usable"]
    if node["disk"]["budget"] is not None:
        assert node["disk"]["need"] <= node["disk"]["usable"] <= node["disk"]["budget"]
    if node["gpu"]["per_gpu_budget"] is not None:
        assert node["gpu"]["need_per_gpu"] <= node["gpu"]["usable_per_gpu"] <= node["gpu"]["per_gpu_budget"]
    assert 1 <= p["shard_rows"] <= MAX_ROWS and 1 <= p["shards"] <= MAX_SHARDS
    assert p["shards"] * p["shard_rows"] >= p["count"] > (p["shards"] - 1) * p["shard_rows"]
    assert p["nodes_per_replica"] * p["shards_per_node"] >= p["shards"]
    assert p["nodes"] == p["replicas"] * p["nodes_per_replica"]
    last = global_ids(p["shards"] - 1, [p["shard_rows"] - 1])
    assert 0 < int(last[0]) < 2**47


def test_one_billion_fits_its_nodes():
    p = plan_cluster("1e9", **BIG_NODE)
    _fits(p)
    assert p["count"] == 10**9 and p["backend"] == "cuda"
    # the node's RAM recomputed from the per-shard figures: writers and trainings while ingesting,
    # one process per core serving
    s, sh = p["shards_per_node"], p["per_shard"]
    assert p["per_node"]["ram"]["ingest"] == s * (PROCESS + sh["ingest"]["peak"])
    assert p["per_node"]["ram"]["serve"] == s * sh["serve"]["ram"] + min(s, 64) * PROCESS
    assert p["per_node"]["disk"]["need"] == s * sh["disk"]["total"]
    assert sh["disk"]["total"] == 2 * sh["disk"]["generation"] + sh["disk"]["vectors_work"] + sh["disk"]["wal"]
    assert p["per_node"]["gpu"]["need_per_gpu"] == math.ceil(s / 8) * sh["gpu"]
    # the issue's own command: no disk, no GPU memory, no cores given
    q = plan_cluster(10**9, node_ram="256GB", node_gpus=8)
    _fits(q)
    assert q["qps"]["cluster"] is None and q["qps"]["per_node_core"] > 0


def test_the_shard_size_rule_and_qps_formula():
    p = plan_cluster(10**9, **BIG_NODE)
    # production's floor is 0.95; 1M is the largest measured size that reached it
    assert p["min_recall"] == 0.95 and p["shard_rows"] == 1_000_000 and p["shards"] == 1000
    best_1m = max(m["qps"] / m["threads"] for m in MEASURED
                  if m["kind"] == "search" and m["use"] == "curve" and m["rows"] == 10**6 and m["recall"] >= 0.95)
    q = p["qps"]
    assert q["per_core_per_shard"] == best_1m and q["recall"] >= 0.95
    assert q["cluster"] == pytest.approx(p["replicas"] * 64 * best_1m / p["shards_per_node"])
    assert q["core_seconds_per_query"] == pytest.approx(1000 / best_1m)
    assert p["merge"]["candidates_per_query"] == 1000 * 10
    # a lower floor admits the 10M measurement: fewer, larger shards
    low = plan_cluster(10**9, min_recall=0.6, **BIG_NODE)
    assert low["shard_rows"] == 10_000_000 and low["shards"] == 100 and low["qps"]["recall"] < 0.95


def test_qps_interpolates_in_log_size_between_measured_sizes():
    lo, hi = shard_qps(100_000, 0.95), shard_qps(1_000_000, 0.95)
    mid = shard_qps(316_228, 0.95)  # ~ the geometric mean
    assert mid["flag"] is None and len(mid["basis"]) == 2
    assert mid["per_core"] == pytest.approx((lo["per_core"] + hi["per_core"]) / 2, rel=1e-3)
    assert "below the smallest" in shard_qps(1000, 0.95)["flag"]
    assert "above the largest" in shard_qps(5_000_000, 0.95)["flag"]
    with pytest.raises(ValueError, match="no measured shard reached recall@10 0.999"):
        shard_qps(10**6, 0.999)


def test_more_ram_never_needs_more_nodes():
    nodes = [plan_cluster(10**9, node_ram=ram, node_cpus=64)["nodes"] for ram in ("64G", "128G", "256G", "512G", "1T")]
    assert nodes == sorted(nodes, reverse=True) and nodes[0] > nodes[-1]
    counts = [plan_cluster(c, node_ram="256G")["nodes"] for c in (10**8, 10**9, 10**10)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    # a QPS target: more queries/s never fewer nodes, and the target is met
    prev = 0
    for target in (500, 2000, 8000, 50_000):
        p = plan_cluster(10**9, node_ram="256G", node_cpus=64, target_qps=target)
        assert p["nodes"] >= prev and p["qps"]["cluster"] >= target
        prev = p["nodes"]
        _fits(p)


def test_replicas_rise_when_one_shard_a_node_is_too_slow():
    p = plan_cluster(10**6, node_ram="256G", node_cpus=1, target_qps=20_000)
    assert p["shards"] == 1 and p["replicas"] > 1 and p["qps"]["cluster"] >= 20_000
    assert any("replicas raised" in a for a in p["assumptions"])


def test_per_shard_bytes_agree_with_the_single_store_planner():
    p = plan_cluster(2 * 10**8, node_ram="256G", node_gpus=2, avg_content_bytes=100, tags_per_memory=2)
    rows, sh = p["shard_rows"], p["per_shard"]
    cfg = IndexConfig.preset("production", capacity=rows)
    kw = dict(avg_content_bytes=100, tags_per_memory=2, config=cfg, backend="cuda", faiss_gpu=False, runtime=False)
    built, opened = plan(rows, 384, state="built", **kw), plan(rows, 384, state="opened", **kw)
    assert sh["ingest"]["anon"] == built.anon_bytes and sh["ingest"]["final"] == built.anon_bytes + built.mapped_bytes
    assert sh["serve"]["anon"] == opened.anon_bytes and sh["serve"]["mapped"] == opened.mapped_bytes
    assert sh["serve"]["ram"] == opened.anon_bytes + opened.mapped_bytes
    assert sh["disk"]["generation"] == built.disk_bytes and sh["gpu"] == opened.gpu_bytes > rows * 384
    assert sh["nlist"] == built.nlist
    # without the page cache, only anonymous bytes count
    q = plan_cluster(2 * 10**8, node_ram="256G", page_cache=False)
    assert q["per_shard"]["serve"]["ram"] == q["per_shard"]["serve"]["anon"]


def test_wal_row_bytes_match_a_real_log(tmp_path):
    from lukhas_gpu import MemoryIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1200, 32)).astype(np.float32)
    index = MemoryIndex.create(tmp_path / "s", 32, IndexConfig(train_threshold=10**6))
    contents = ["c" * 100] * 400
    tags = [["t%05d" % (i % 9), "u%05d" % (i % 4)] for i in range(400)]  # 6-byte names, 2 a memory
    for b in range(3):
        index.add(x[b * 400:(b + 1) * 400], contents=contents, tags=tags)
    size = (tmp_path / "s" / "wal.log").stat().st_size
    index.close(checkpoint=False)
    from lukhas_gpu.capacity.sizing import TAG_NAME_BYTES

    want = wal_row_bytes(32, 100, 2) + 2 * (6 - TAG_NAME_BYTES)  # the formula assumes 12-byte names
    assert size / 1200 == pytest.approx(want, rel=0.02)


@pytest.mark.parametrize("argv, message", [
    (["--count", "0", "--node-ram", "256GB"], "--count must be >= 1"),
    (["--count", "-5", "--node-ram", "256GB"], "--count must be >= 1"),
    (["--count", "1.5", "--node-ram", "256GB"], "--count must be a whole number"),
    (["--count", "1e30", "--node-ram", "256GB"], "--count must be <="),
    (["--count", "1e9", "--node-ram", "12XB"], "--node-ram must look like"),
    (["--count", "1e9", "--node-ram", "0"], "--node-ram must be between"),
    (["--count", "1e9", "--node-ram", "100T"], "--node-ram must be between"),
    (["--count", "1e9", "--node-ram", "256G", "--node-gpus", "-1"], "--node-gpus must be >= 0"),
    (["--count", "1e9", "--node-ram", "256G", "--node-gpus", "65"], "--node-gpus must be <= 64"),
    (["--count", "1e9", "--node-ram", "256G", "--gpu-mem", "80G"], "--node-gpus=0"),
    (["--count", "1e9", "--node-ram", "256G", "--node-disk", "1.5XiB"], "--node-disk must look like"),
    (["--count", "1e9", "--node-ram", "256G", "--qps", "100"], "--qps needs --node-cpus"),
    (["--count", "1e9", "--node-ram", "256G", "--node-cpus", "8", "--qps", "-1"], "--qps must be"),
    (["--count", "1e9", "--node-ram", "256G", "--replicas", "0"], "--replicas must be >= 1"),
    (["--count", "1e9", "--node-ram", "256G", "--headroom", "0.95"], "--headroom must be in"),
    (["--count", "1e9", "--node-ram", "256G", "--min-recall", "0.999"], "no measured shard reached"),
    (["--count", "1e9", "--node-ram", "256G", "--shard-rows", "1e10"], "--shard-rows must be <="),
    (["--count", "1e12", "--node-ram", "256G", "--shard-rows", "1e6"], "over the 32,768 a root holds"),
    (["--count", "1e9", "--node-ram", "1G", "--shard-rows", "1e7"], "does not fit a node's ram"),
    (["--count", "1e9", "--node-ram", "256G", "--ram", "4G"], "plan one store"),
    (["--count", "1e9", "--node-gpus", "8"], "--node-gpus belongs to a cluster plan"),
    (["5", "--count", "6", "--node-ram", "8G"], "give the count once"),
    (["--node-ram", "8G"], "needs the count"),
])
def test_bad_input_is_named_in_one_line(capsys, argv, message):
    assert main(["plan", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_cli_json_is_the_library_plan(capsys):
    argv = ["plan", "--count", "1e9", "--node-ram", "256GB", "--node-gpus", "8", "--gpu-mem", "80GB",
            "--node-disk", "4TB", "--node-cpus", "64", "--json"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads(json.dumps(plan_cluster(10**9, **BIG_NODE)))
    _fits(got)


def test_cli_text_names_shards_nodes_bytes_and_qps(capsys):
    assert main(["plan", "--count", "1e9", "--node-ram", "256GB", "--node-gpus", "8", "--node-cpus", "64"]) == 0
    out = capsys.readouterr().out
    assert "1,000 x 1,000,000 rows" in out and "shard << 32 | row" in out
    for word in ("nodes", "per node", "RAM", "disk", "GPU", "QPS", "merge", "not measured", "assumptions"):
        assert word in out
    assert "Recall you can trust" in out and "2026-12-02" in out  # the figure it rests on, cited


def test_the_single_store_plan_is_unchanged(capsys):
    assert main(["plan", "1000000", "--dim", "384", "--json"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["plan", "--count", "1e6", "--json"]) == 0  # --count and 1e6; --dim defaults to 384
    assert json.loads(capsys.readouterr().out) == positional


def test_importing_the_plan_imports_no_ray():
    code = "import sys, lukhas_gpu.distributed.cluster; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
