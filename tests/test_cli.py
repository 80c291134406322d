"""The command line, in-process (``main(argv)``), on small sizes."""
import json

import pytest

from lukhas_gpu import cli


def test_bench_prints_the_table(capsys):
    assert cli.main(["bench", "--n", "3000", "--nq", "50", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "bytes/memory" in out and "recall@10" in out
    assert "lukhas_gpu (production)" in out and "naive dict store" in out
    assert "the RAM per memory" in out


def test_bench_json(capsys):
    assert cli.main(["bench", "--n", "40000", "--nq", "40", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ours, naive = result["rows"]
    assert result["phase"] == "ivfpq" and result["n"] == 40000
    assert ours["recall@10"] >= 0.9 and naive["recall@10"] == 1.0
    assert 0 < ours["bytes/memory"] < naive["bytes/memory"]
    assert ours["QPS"] > 0 and ours["p99 ms"] >= ours["p50 ms"] > 0


def test_bench_unknown_preset_fails_clearly():
    with pytest.raises(ValueError, match="unknown preset"):
        cli.main(["bench", "--n", "100", "--preset", "nope", "--no-naive"])


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def _store(tmp_path):
    import numpy as np

    from lukhas_gpu import MemoryIndex

    ix = MemoryIndex.create(tmp_path / "s", 8)
    ix.add(np.random.default_rng(0).standard_normal((50, 8)).astype("float32"), contents=[f"m{i}" for i in range(50)])
    ix.checkpoint()
    ix.add(np.random.default_rng(1).standard_normal((5, 8)).astype("float32"))
    ix.checkpoint()
    ix.close()
    return tmp_path / "s"


def test_verify_stats_rollback(tmp_path, capsys):
    path = _store(tmp_path)
    assert cli.main(["verify", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["count"] == 55
    assert cli.main(["stats", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 55
    assert cli.main(["rollback", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["stats", str(path)]) == 0
    assert "50 memories" in capsys.readouterr().out


def test_verify_reports_a_corrupted_file(tmp_path, capsys):
    path = _store(tmp_path)
    gen = sorted(p for p in path.iterdir() if p.name.startswith("gen-"))[-1]
    (gen / "content.bin").write_bytes(b"garbage")
    assert cli.main(["verify", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and "content.bin" in out["error"]
