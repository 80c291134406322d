"""The command line, in-process (``main(argv)``), on small sizes."""
import json

import numpy as np
import pytest

from lukhas_gpu import MemoryIndex, cli


def test_bench_prints_the_table(capsys):
    assert cli.main(["bench", "--n", "3000", "--nq", "50", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "bytes/memory" in out and "recall@10" in out
    assert "lukhas_gpu (production)" in out and "naive dict store" in out
    assert "the RAM per memory" in out
    assert "Why bytes/memory is not the README's RAM per memory" in out  # the index's own bytes, and the rest


def test_bench_json(capsys):
    assert cli.main(["bench", "--n", "40000", "--nq", "40", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ours, naive = result["rows"]
    assert result["phase"] == "ivfpq" and result["n"] == 40000
    assert ours["recall@10"] >= 0.9 and naive["recall@10"] == 1.0
    assert 0 < ours["bytes/memory"] < naive["bytes/memory"]
    assert 0 < ours["index bytes/memory"] < naive["bytes/memory"]
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


# -- start-up: nothing heavy before a command needs it -----------------------------------------------
# Loads lukhas_gpu's subpackages without running lukhas_gpu/__init__.py (which the top-level facade
# owns), so that what is measured is the command line's own imports.
_BARE_PACKAGE = """
import importlib.util, sys, types
spec = importlib.util.find_spec("lukhas_gpu")
pkg = types.ModuleType("lukhas_gpu")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["lukhas_gpu"] = pkg
"""
_HEAVY = ("torch", "faiss", "lukhas_gpu.index", "lukhas_gpu.index.facade")


def _heavy_imports(code: str, *, bare: bool) -> list:
    """The heavy modules in sys.modules after running ``code`` in a fresh interpreter."""
    import os
    import pathlib
    import subprocess
    import sys

    import lukhas_gpu

    root = str(pathlib.Path(lukhas_gpu.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    script = ((_BARE_PACKAGE if bare else "") + code
              + f"\nimport sys\nprint([m for m in {_HEAVY!r} if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"'))


_HELP = """
from lukhas_gpu.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
"""
_PLAN = 'from lukhas_gpu.cli import main\nmain(["plan", "1000000", "--dim", "384"])'


def test_the_command_line_imports_nothing_heavy_at_start_up():
    code = ("import lukhas_gpu.cli\n"
            "from lukhas_gpu.cli import bench, ingest, main, plan, progress, search_cmd, store_cmds\n"
            "from lukhas_gpu.cli.main import build_parser\n"
            "for command in ('bench', 'ingest', 'migrate', 'plan', 'search', 'get', 'delete', 'verify', 'stats',"
            " 'rollback', 'recover'):\n"
            "    try:\n"
            "        build_parser().parse_args([command, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n")
    assert _heavy_imports(code + _HELP, bare=True) == []
    # plan imports what the planner imports, nothing more
    assert _heavy_imports(_PLAN, bare=True) == _heavy_imports("import lukhas_gpu.capacity.sizing", bare=True)


@pytest.mark.parametrize("code", [_HELP, _PLAN], ids=["help", "plan"])
def test_help_and_plan_do_not_import_torch(code):
    """``lukhas-gpu --help`` and ``lukhas-gpu plan`` load no torch (nor faiss, nor the index)."""
    assert _heavy_imports(code, bare=False) == []


def test_reading_commands_do_not_import_torch(tmp_path):
    """``get``, ``stats`` and ``verify`` of a store read its records and files: no torch (on a
    machine without a GPU driver, where the backend needs no asking)."""
    from lukhas_gpu.util.device import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("a GPU driver is present: the backend asks torch")
    store = tmp_path / "s"
    index = MemoryIndex.create(store, 16)
    index.add(np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32), contents=["x"] * 50)
    index.checkpoint()
    index.close()
    for argv in (["get", str(store), "3"], ["stats", str(store)], ["verify", str(store)], ["recover", str(store)]):
        code = f"from lukhas_gpu.cli import main\nmain({argv!r})"
        assert "torch" not in _heavy_imports(code, bare=False), argv
