"""``lukhas-gpu plan``: capacity planning from the command line (in-process)."""
from __future__ import annotations

import json

import pytest

from lukhas_gpu import IndexConfig, max_count, plan
from lukhas_gpu.cli import main


def test_plan_prints_every_place(capsys):
    assert main(["plan", "1000000", "--dim", "384", "--content-bytes", "100", "--tags", "3"]) == 0
    out = capsys.readouterr().out
    assert "plan for 1,000,000 memories" in out
    for place in ("anon", "mapped", "disk", "gpu"):
        assert f"  {place}" in out
    assert "vectors_int8" in out


def test_plan_json_matches_the_library(capsys):
    assert main(["plan", "250000", "--dim", "384", "--preset", "advanced", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # sized as `lukhas-gpu ingest` sizes a store: told how many memories are coming
    want = plan(250_000, 384, config=IndexConfig.preset("advanced", capacity=250_000))
    assert got["anon_bytes"] == want.anon_bytes and got["disk_bytes"] == want.disk_bytes
    assert got["max_count"] is None
    assert main(["plan", "250000", "--dim", "384", "--preset", "advanced", "--json", "--no-capacity"]) == 0
    grown = json.loads(capsys.readouterr().out)
    assert grown["anon_bytes"] == plan(250_000, 384, config="advanced").anon_bytes


def test_plan_sizes_the_ivf_as_the_index_does(capsys):
    """The planner and the index share one sizing policy: 10M memories told their size get the
    IVF the index builds for them, not the one trained at the threshold."""
    from lukhas_gpu.vectors.policy import planned_nlist, train_at

    assert main(["plan", "10000000", "--dim", "384", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    cfg = IndexConfig.preset("production", capacity=10_000_000)
    assert got["nlist"] == planned_nlist(train_at(cfg), cfg) == 4096


def test_plan_budget_answers_how_many_fit(capsys):
    assert main(["plan", "--dim", "384", "--ram", "2G", "--preset", "ultra", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["max_count"] == max_count(2 << 30, dim=384, config="ultra") == got["count"]
    assert got["anon_bytes"] <= 2 << 30


@pytest.mark.parametrize("argv, message", [
    (["plan", "--dim", "384"], "give COUNT"),
    (["plan", "10", "--dim", "384", "--ram", "8X"], "--ram must look like"),
    (["plan", "10", "--dim", "384", "--preset", "nope"], "unknown preset"),
    (["plan", "-5", "--dim", "384"], "count must be >= 0"),
])
def test_plan_bad_arguments_fail_with_one_line(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_help():
    with pytest.raises(SystemExit) as e:
        main(["plan", "--help"])
    assert e.value.code == 0


def test_plan_counts_namespaces_and_windows(capsys):
    argv = ["plan", "100000", "--dim", "384", "--json", "--no-capacity"]
    assert main(argv + ["--namespaces", "1000", "--windows", "0.5"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = plan(100_000, 384, config="production", namespaces=1000, windows=0.5)
    assert got["memory"]["anon"]["namespaces"] == want.memory["anon"]["namespaces"] > 400_000
    assert got["memory"]["anon"]["validity"] == want.memory["anon"]["validity"] > 1_600_000
    assert main(argv + ["--windows", "2"]) == 1
    assert "windows" in capsys.readouterr().err
