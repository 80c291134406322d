"""The store subcommands of the command line (ingest, search, get, delete), in-process, small data."""
import datetime
import io
import json
import os
import sys

import numpy as np
import pytest

from lukhas_gpu import MemoryIndex, cli
from lukhas_gpu.cli import progress as cli_progress
from lukhas_gpu.ingest import resume
from lukhas_gpu.ingest.migrate import write_naive_jsonl

N, DIM, BATCH = 300, 16, 50


def _data(n=N, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    contents = [f"memory number {i}" for i in range(n)]
    tags = [["even" if i % 2 == 0 else "odd", f"t{i % 3}"] for i in range(n)]
    ts = [1_700_000_000.0 + 60.0 * i for i in range(n)]
    imp = [round((i % 11) / 10, 1) for i in range(n)]
    return x, contents, tags, ts, imp


@pytest.fixture()
def data(tmp_path):
    x, contents, tags, ts, imp = _data()
    src = tmp_path / "in.jsonl"
    write_naive_jsonl(src, x, contents=contents, tags=tags, timestamps=ts, importance=imp)
    return {"src": src, "store": tmp_path / "store", "x": x, "contents": contents, "tags": tags, "ts": ts, "imp": imp}


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _ingest(d, *extra):
    return cli.main(["ingest", str(d["store"]), str(d["src"]), "--batch-size", str(BATCH), *extra])


def _all_contents(store):
    ix = MemoryIndex.open(store, mode="r")
    try:
        ids = np.arange(ix.stats()["rows"])
        ids = ids[ix.contains(ids)]
        return [m.content for m in ix.get(ids)]
    finally:
        ix.close()


def test_ingest_jsonl_then_stats_get_and_search_match_the_input(data, capsys):
    assert _ingest(data, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == N and summary["ingested"] == N and summary["count"] == N
    assert summary["skipped_resumed"] == 0 and summary["rate"] > 0

    assert cli.main(["stats", str(data["store"]), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["count"] == N and st["dim"] == DIM
    assert st["config"]["capacity"] == N  # the record count sized the new store

    ids = [0, 7, 150, 299]
    assert cli.main(["get", str(data["store"]), *map(str, ids), "--json"]) == 0
    got = _json_lines(capsys.readouterr().out)
    assert [g["id"] for g in got] == ids
    for g in got:
        i = g["id"]
        assert g["content"] == data["contents"][i]
        assert g["tags"] == data["tags"][i]
        assert g["timestamp"] == pytest.approx(data["ts"][i])
        assert g["importance"] == pytest.approx(data["imp"][i], abs=0.01)

    # the vectors came along: each input vector finds its own memory first
    q = data["src"].parent / "q.npy"
    np.save(q, data["x"][:20])
    assert cli.main(["search", str(data["store"]), "--query-file", str(q), "-k", "3", "--json"]) == 0
    res = _json_lines(capsys.readouterr().out)
    assert [r["query"] for r in res] == list(range(20))
    assert [r["ids"][0] for r in res] == list(range(20))
    assert all(len(r["ids"]) == len(r["scores"]) == 3 for r in res)


def test_ingest_text_output_and_plain_progress_lines(data, capsys, monkeypatch):
    monkeypatch.setattr(cli_progress, "PROGRESS_INTERVAL", 0.0)
    assert _ingest(data) == 0
    out = capsys.readouterr().out
    assert "ingested 50/300 records" in out and "ingested 300/300 records" in out and "rec/s" in out
    assert "the store holds 300 memories" in out


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_ingest_progress_on_a_terminal(data, monkeypatch, with_tqdm):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stdout", fake)
    if not with_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    assert _ingest(data) == 0
    out = fake.getvalue()
    assert "300/300" in out and "\r" in out
    if not with_tqdm:
        assert "ETA" in out


@pytest.mark.parametrize("kind", ["npz", "npy"])
def test_ingest_array_with_payloads(tmp_path, capsys, kind):
    x, contents, tags, ts, imp = _data()
    payloads = tmp_path / "payloads.jsonl"
    write_naive_jsonl(payloads, None, contents=contents, tags=tags, timestamps=ts, importance=imp)
    if kind == "npz":
        arr = tmp_path / "emb.npz"
        np.savez_compressed(arr, emb=x)
        extra = ["--npz-key", "emb"]
    else:
        arr = tmp_path / "emb.npy"
        np.save(arr, x)
        extra = []
    store = tmp_path / "store"
    argv = ["ingest", str(store), str(arr), "--payloads", str(payloads), "--batch-size", "64", "--json", *extra]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ingested"] == N and summary["count"] == N
    assert _all_contents(store) == contents
    ix = MemoryIndex.open(store, mode="r")
    assert ix.dim == DIM and ix.config.capacity == N
    assert ix.get([5])[0].tags == tags[5]
    assert np.asarray(ix.search(x[:10], 1).ids)[:, 0].tolist() == list(range(10))
    ix.close()


def test_npz_bad_row_names_the_payload_line(tmp_path, capsys):
    x, contents, *_ = _data()
    x[120, 3] = np.nan
    payloads = tmp_path / "p.jsonl"
    write_naive_jsonl(payloads, None, contents=contents)
    np.save(tmp_path / "e.npy", x)
    store = tmp_path / "store"
    assert cli.main(["ingest", str(store), str(tmp_path / "e.npy"), "--payloads", str(payloads),
                     "--batch-size", "50"]) == 1
    err = capsys.readouterr().err
    assert "p.jsonl, line 121" in err and "row 120" in err and "Traceback" not in err
    assert _all_contents(store) == contents[:100]


def test_search_with_tag_filter_returns_only_matching_ids(data, capsys, monkeypatch):
    assert _ingest(data) == 0
    capsys.readouterr()
    qf = data["src"].parent / "q.jsonl"
    with open(qf, "w") as f:
        for i in range(1, 21, 2):  # odd memories as queries
            f.write(json.dumps({"embedding": data["x"][i].tolist()}) + "\n")
    store = str(data["store"])
    assert cli.main(["search", store, "--query-file", str(qf), "-k", "5", "--json"]) == 0
    plain = _json_lines(capsys.readouterr().out)
    assert [r["ids"][0] for r in plain] == list(range(1, 21, 2))  # unfiltered: the query itself

    assert cli.main(["search", store, "--query-file", str(qf), "-k", "5", "--tags-all", "even", "--contents",
                     "--json"]) == 0
    filtered = _json_lines(capsys.readouterr().out)
    assert len(filtered) == 10
    for r in filtered:
        assert len(r["ids"]) == 5 and all(i % 2 == 0 for i in r["ids"])
        assert r["contents"] == [data["contents"][i] for i in r["ids"]]

    assert cli.main(["search", store, "--query-file", str(qf), "-k", "5", "--tags-any", "t1",
                     "--tags-none", "odd", "--json"]) == 0
    for r in _json_lines(capsys.readouterr().out):
        assert r["ids"] and all(i % 3 == 1 and i % 2 == 0 for i in r["ids"])

    # time and importance filters, queries from stdin, text output
    since, until = data["ts"][100], data["ts"][199]
    lines = "".join(json.dumps(data["x"][i].tolist()) + "\n" for i in (0, 1, 2))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    until_iso = datetime.datetime.fromtimestamp(until, datetime.timezone.utc).replace(tzinfo=None).isoformat()
    assert cli.main(["search", store, "-k", "4", "--since", str(since), "--until", until_iso,
                     "--min-importance", "0.5", "--json"]) == 0
    res = _json_lines(capsys.readouterr().out)
    assert [r["query"] for r in res] == [0, 1, 2]
    for r in res:
        assert len(r["ids"]) == 4
        for i in r["ids"]:
            assert since <= data["ts"][i] <= until and data["imp"][i] >= 0.5
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert cli.main(["search", store, "-k", "2", "--recency", "0.5", "--importance", "0.5", "--half-life", "3600"]) == 0
    out = capsys.readouterr().out
    assert out.count("query ") == 3 and "2 results" in out


def test_search_rejects_a_query_of_the_wrong_dimension(data, capsys):
    assert _ingest(data) == 0
    capsys.readouterr()
    qf = data["src"].parent / "q.jsonl"
    qf.write_text(json.dumps({"embedding": [0.1] * DIM}) + "\n" + json.dumps({"embedding": [0.1] * 3}) + "\n")
    assert cli.main(["search", str(data["store"]), "--query-file", str(qf)]) == 1
    err = capsys.readouterr().err
    assert "q.jsonl, line 2" in err and "dimension 3" in err and "Traceback" not in err


def test_get_and_delete_end_to_end(data, capsys):
    assert _ingest(data) == 0
    store = str(data["store"])
    capsys.readouterr()
    assert cli.main(["get", store, "3", "4"]) == 0
    out = capsys.readouterr().out
    assert "memory number 3" in out and "memory number 4" in out

    assert cli.main(["delete", store, "3", "4", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 3, "count": N - 3}
    assert cli.main(["stats", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == N - 3

    assert cli.main(["get", store, "4"]) == 1
    err = capsys.readouterr().err
    assert "deleted id" in err and err.count("\n") == 1

    # an unknown id fails the whole delete: nothing is deleted
    assert cli.main(["delete", store, "5", str(10**6)]) == 1
    assert "unknown id" in capsys.readouterr().err
    assert cli.main(["get", store, "5", "--json"]) == 0
    assert _json_lines(capsys.readouterr().out)[0]["content"] == "memory number 5"
    # search no longer returns a deleted memory
    q = data["src"].parent / "q.npy"
    np.save(q, data["x"][3])
    assert cli.main(["search", store, "--query-file", str(q), "-k", "5", "--json"]) == 0
    assert 3 not in _json_lines(capsys.readouterr().out)[0]["ids"]


def _interrupting_add(after: int):
    """A ``MemoryIndex.add`` that adds ``after`` batches, then raises KeyboardInterrupt (Ctrl-C mid-ingest)."""
    real, left = MemoryIndex.add, [after]

    def add(self, *args, **kwargs):
        if not left[0]:
            raise KeyboardInterrupt
        left[0] -= 1
        return real(self, *args, **kwargs)

    return add


def _interrupt_then_resume(d, capsys, monkeypatch, after_resume=None):
    """Ctrl-C after two batches, resume (every record once), then a third run that adds nothing."""
    real_add = MemoryIndex.add
    monkeypatch.setattr(MemoryIndex, "add", _interrupting_add(2))
    assert _ingest(d) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    progress = resume.progress_of(d["store"], d["src"])
    assert progress["ingested"] == 2 * BATCH and not progress["done"]

    monkeypatch.setattr(MemoryIndex, "add", real_add)
    assert _ingest(d, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 2 * BATCH and summary["ingested"] == N - 2 * BATCH
    assert summary["count"] == N
    assert _all_contents(d["store"]) == d["contents"]
    if after_resume is not None:
        after_resume()

    # a third run of the finished ingest adds nothing
    assert _ingest(d, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ingested"] == 0 and summary["count"] == N
    return summary


def test_resume_after_an_interrupt_ingests_every_record_once(data, capsys, monkeypatch):
    last = _interrupt_then_resume(data, capsys, monkeypatch)  # its steps assert each run's figures
    assert last["ingested"] == 0 and last["count"] == N  # and a third run adds nothing


def test_resume_counts_a_batch_the_store_took_before_the_progress_file_did(data, capsys, monkeypatch):
    real_write = resume.write_progress

    def crash_after_third_add(store, state):
        (entry,) = state["inputs"].values()
        if entry["ingested"] == 3 * BATCH and entry["pending"] == 0:
            raise KeyboardInterrupt  # the batch is in the write-ahead log, not yet in the progress file
        real_write(store, state)

    monkeypatch.setattr(resume, "write_progress", crash_after_third_add)
    assert _ingest(data) == 130
    progress = resume.progress_of(data["store"], data["src"])
    assert progress["ingested"] == 2 * BATCH and progress["pending"] == BATCH

    monkeypatch.setattr(resume, "write_progress", real_write)
    capsys.readouterr()
    assert _ingest(data, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 3 * BATCH and summary["count"] == N
    assert _all_contents(data["store"]) == data["contents"]


def test_resume_after_a_truncated_copy_then_a_changed_input_is_refused(data, capsys):
    full = data["src"].read_text().splitlines(keepends=True)
    data["src"].write_text("".join(full[:120]))
    assert _ingest(data) == 0
    capsys.readouterr()
    data["src"].write_text("".join(full))  # the same path now holds more: another input
    assert _ingest(data) == 1
    err = capsys.readouterr().err
    assert "--restart" in err and "differs" in err
    assert _all_contents(data["store"]) == data["contents"][:120]
    # --dedup off: the production preset's exact dedup would merge the 120 stored ones instead
    assert _ingest(data, "--restart", "--dedup", "off", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 0 and summary["ingested"] == N and summary["count"] == 120 + N


def _corrupt(line: str, how: str) -> str:
    obj = json.loads(line)
    if how == "truncated":
        return line[: len(line) // 2] + "\n"
    if how == "dimension":
        obj["embedding"] = obj["embedding"][:-1]
    else:
        obj["embedding"][2] = float("nan")  # json.dumps writes the NaN token, which json.loads accepts
    return json.dumps(obj) + "\n"


@pytest.mark.parametrize("how,message", [("truncated", "truncated"), ("dimension", "dimension 15"),
                                         ("nan", "NaN")])
def test_bad_input_exits_1_naming_the_line_and_keeps_only_earlier_batches(data, capsys, how, message):
    lines = data["src"].read_text().splitlines(keepends=True)
    lines[174] = _corrupt(lines[174], how)  # line 175, in the 4th batch (lines 151-200)
    data["src"].write_text("".join(lines))
    assert _ingest(data) == 1
    captured = capsys.readouterr()
    assert "in.jsonl, line 175" in captured.err and message in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert _all_contents(data["store"]) == data["contents"][:3 * BATCH]
    progress = resume.progress_of(data["store"], data["src"])
    assert progress["ingested"] == 3 * BATCH and not progress["done"]
    assert cli.main(["stats", str(data["store"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3 * BATCH


@pytest.mark.parametrize("argv,message", [
    (["ingest", "{store}", "{tmp}/x.parquet"], "Parquet"),
    (["ingest", "{store}", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["ingest", "{store}", "{tmp}/e.npy"], "--payloads"),
    (["search", "{tmp}/nostore", "--query-file", "{tmp}/q.npy"], "not a lukhas_gpu store"),
    (["get", "{tmp}/nostore", "1"], "not a lukhas_gpu store"),
    (["delete", "{tmp}/nostore", "1"], "not a lukhas_gpu store"),
    (["trial", "{tmp}/nostore", "--nlist", "8"], "not a lukhas_gpu store"),
    (["drift", "{tmp}/nostore"], "not a lukhas_gpu store"),
])
def test_errors_are_one_line_on_stderr_with_exit_code_1(tmp_path, capsys, argv, message):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    np.save(tmp_path / "e.npy", np.zeros((2, 4), dtype=np.float32))
    argv = [a.format(store=tmp_path / "store", tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


@pytest.mark.parametrize("command", ["ingest", "search", "get", "delete", "stats", "verify", "rollback", "recover",
                                     "bench", "tune", "trial", "drift"])
def test_every_subcommand_has_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lukhas-gpu {command}")
    if command == "ingest":
        assert "Parquet" in out and "--checkpoint-every" in out and "--restart" in out


@pytest.mark.parametrize("compressed", [True, False])
def test_resume_of_an_array_ingest_keeps_rows_with_their_payloads(tmp_path, capsys, monkeypatch, compressed):
    x, contents, tags, ts, imp = _data()
    payloads = tmp_path / "payloads.jsonl"
    write_naive_jsonl(payloads, None, contents=contents, tags=tags)
    arr = tmp_path / "emb.npz"
    (np.savez_compressed if compressed else np.savez)(arr, embeddings=x)
    store = tmp_path / "store"
    argv = ["ingest", str(store), str(arr), "--payloads", str(payloads), "--batch-size", "40", "--json"]
    real_add = MemoryIndex.add
    calls = []

    def flaky_add(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_add(self, *a, **kw)

    monkeypatch.setattr(MemoryIndex, "add", flaky_add)
    assert cli.main(argv) == 130
    monkeypatch.setattr(MemoryIndex, "add", real_add)
    capsys.readouterr()
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 120 and summary["count"] == N
    assert _all_contents(store) == contents
    ix = MemoryIndex.open(store, mode="r")
    try:  # row i of the array is still the vector of memory i (the skipped rows were read past)
        assert np.asarray(ix.search(x, 1).ids)[:, 0].tolist() == list(range(N))
    finally:
        ix.close()


def test_rerunning_a_finished_ingest_changes_nothing(data, capsys):
    assert _ingest(data) == 0
    current = (data["store"] / "CURRENT").read_text()
    assert _ingest(data, "--json") == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["ingested"] == 0 and summary["skipped_resumed"] == N and summary["count"] == N
    assert (data["store"] / "CURRENT").read_text() == current  # no new generation


# -- resume state per input file -------------------------------------------------------------------
def _other_input(d, tmp_path, n=120):
    x2, *_ = _data(n=n, seed=1)
    other = {**d, "src": tmp_path / "other.jsonl", "contents": [f"other {i}" for i in range(n)]}
    write_naive_jsonl(other["src"], x2, contents=other["contents"])
    return other


def test_a_failed_ingest_of_one_input_does_not_block_another(data, capsys, tmp_path):
    lines = data["src"].read_text().splitlines(keepends=True)
    lines[174] = _corrupt(lines[174], "nan")  # line 175, in the 4th batch
    data["src"].write_text("".join(lines))
    assert _ingest(data) == 1
    capsys.readouterr()

    other = _other_input(data, tmp_path)  # another input: ingested although the first is unfinished
    assert _ingest(other, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 0 and summary["ingested"] == 120 and summary["count"] == 3 * BATCH + 120

    # the first input again: it resumes after its stored records and stops at the same record
    assert _ingest(data) == 1
    assert "in.jsonl, line 175" in capsys.readouterr().err
    assert _all_contents(data["store"]) == data["contents"][:3 * BATCH] + other["contents"]
    first, second = resume.progress_of(data["store"], data["src"]), resume.progress_of(data["store"], other["src"])
    assert (first["ingested"], first["done"]) == (3 * BATCH, False)
    assert (second["ingested"], second["done"]) == (120, True)
    assert (data["store"] / resume.PROGRESS_FILE).exists()


def test_each_input_resumes_where_it_stopped(data, capsys, monkeypatch, tmp_path):
    # the first input stops with a batch in the store that its progress does not record yet
    real_write = resume.write_progress
    key = resume.input_key({"input": {"path": os.path.abspath(data["src"])}})

    def crash_after_third_add(store, state):
        entry = state["inputs"][key]
        if entry["ingested"] == 3 * BATCH and entry["pending"] == 0:
            raise KeyboardInterrupt
        real_write(store, state)

    monkeypatch.setattr(resume, "write_progress", crash_after_third_add)
    assert _ingest(data) == 130
    monkeypatch.setattr(resume, "write_progress", real_write)
    capsys.readouterr()

    other = _other_input(data, tmp_path)  # settles the first input's pending batch, then adds its own
    assert _ingest(other, "--json") == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 120

    assert _ingest(data, "--json") == 0  # the first input resumes after its 3 stored batches
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 3 * BATCH and summary["ingested"] == N - 3 * BATCH
    assert summary["count"] == N + 120
    assert _all_contents(data["store"]) == (data["contents"][:3 * BATCH] + other["contents"]
                                            + data["contents"][3 * BATCH:])
    assert _ingest(other, "--json") == 0 and json.loads(capsys.readouterr().out)["ingested"] == 0


def test_a_version_1_progress_file_is_read_as_its_inputs_entry(data, capsys):
    assert _ingest(data) == 0
    capsys.readouterr()
    entry = resume.progress_of(data["store"], data["src"])
    v1 = {"version": 1, **{k: entry[k] for k in ("input", "payloads", "npz_key", "embedding_column", "records")},
          "first_row": 0, "ingested": entry["ingested"], "pending": 0, "done": True}
    (data["store"] / resume.PROGRESS_FILE).write_text(json.dumps(v1))
    assert _ingest(data, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ingested"] == 0 and summary["skipped_resumed"] == N and summary["count"] == N


# -- broken pipe -----------------------------------------------------------------------------------
class _ClosedPipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_search_into_a_closed_pipe_stops_quietly(data, capsys, monkeypatch):
    from lukhas_gpu.cli.main import EXIT_BROKEN_PIPE

    assert _ingest(data) == 0
    q = data["src"].parent / "q.npy"
    np.save(q, data["x"][:20])
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["search", str(data["store"]), "--query-file", str(q), "--json"]) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_search_piped_into_head_ends_quietly(data, capsys):
    """``lukhas-gpu search ... | head -1``: the reader goes away; no "Broken pipe" error, status 141."""
    import pathlib
    import subprocess

    import lukhas_gpu

    assert _ingest(data) == 0
    q = data["src"].parent / "q.npy"
    np.save(q, np.repeat(data["x"], 4, axis=0))  # far more output than a pipe buffers
    root = str(pathlib.Path(lukhas_gpu.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "lukhas_gpu.cli", "search", str(data["store"]), "--query-file",
                             str(q), "-k", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline().startswith(b"query 0:")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert b"Broken pipe" not in err and b"Traceback" not in err


def test_errors_give_command_line_advice_not_python(data, capsys, tmp_path):
    assert _ingest(data) == 0
    capsys.readouterr()
    q = tmp_path / "q.npy"
    np.save(q, data["x"][:1])
    assert cli.main(["search", str(data["store"]), "--text", "memory"]) == 1
    err = capsys.readouterr().err
    assert "lukhas-gpu ingest --text-index" in err and "IndexConfig" not in err
    writer = MemoryIndex.open(data["store"], mode="w")  # the store's writer, in this process
    try:
        assert cli.main(["delete", str(data["store"]), "1"]) == 1
        err = capsys.readouterr().err
        assert "stop that writer first" in err and "mode=" not in err
    finally:
        writer.close()
    assert cli.main(["get", str(tmp_path / "nostore"), "1"]) == 1
    err = capsys.readouterr().err
    assert "lukhas-gpu ingest" in err and "MemoryIndex" not in err


def test_ingest_sets_a_new_stores_largest_content(tmp_path, capsys):
    x, *_ = _data(n=4)
    big = "x" * 100_000
    src = tmp_path / "big.jsonl"
    write_naive_jsonl(src, x, contents=["a", big, "b", "c"])
    assert cli.main(["ingest", str(tmp_path / "s1"), str(src)]) == 1
    err = capsys.readouterr().err
    assert "--max-content-bytes" in err and "max_content_bytes" not in err
    assert cli.main(["ingest", str(tmp_path / "s2"), str(src), "--max-content-bytes", "200000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    ix = MemoryIndex.open(tmp_path / "s2")
    assert ix.config.max_content_bytes == 200_000 and ix.get([1])[0].content == big
    ix.close()
    src2 = tmp_path / "more.jsonl"
    write_naive_jsonl(src2, x, contents=["d"] * 4)
    assert cli.main(["ingest", str(tmp_path / "s2"), str(src2), "--max-content-bytes", "300000"]) == 1
    assert "fixed when a store is created" in capsys.readouterr().err
    assert cli.main(["ingest", str(tmp_path / "s3"), str(src), "--max-content-bytes", "0"]) == 1
    assert "--max-content-bytes must be in" in capsys.readouterr().err
