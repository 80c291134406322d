"""The subprocesses of the model test (``model_store.py`` spawns them):

    python tests/model_procs.py writer STORE                        # JSON calls on stdin, "ack i" after each
    python tests/model_procs.py reader STORE Q_ALL Q_CLI K DEPTH    # a JSON dump; "refresh" on stdin: another
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from model_calls import _enc, loads_call, run_call
from model_consts import NLIST, ROOT


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def spawn(role: str, path, *args) -> subprocess.Popen:
    """This module as a subprocess (``role``: "writer" or "reader"), text pipes (model_store.py)."""
    return subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), role, str(path),
                             *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())


def _writer_main(path: str) -> None:
    import torch

    torch.set_num_threads(1)
    from lukhas_gpu import MemoryIndex

    ix = MemoryIndex.open(path, mode="w")
    _ = ix.encoder  # torch loads before the first call
    print("ready", flush=True)
    for i, line in enumerate(sys.stdin):
        run_call(ix, loads_call(line))
        print("ack", i, flush=True)
    ix.close(checkpoint=False)


def _dump(ix) -> dict:
    rows = ix.select()
    mems = ix.memories_at(rows) if len(rows) else []
    return {"count": len(ix), "rows": rows.tolist(),
            "mems": [[m.id, _enc(m.content), m.tags, m.timestamp, m.importance, _enc(m.external_id), m.metadata]
                     for m in mems]}


def _reader_main(path: str, query_file: str, cli_queries: str, k: int, depth: int) -> None:
    """Open read-only, dump every live memory, search each query, run the CLI's get and search;
    then on "refresh" (stdin) catch up with the writer and dump again."""
    import contextlib
    import io

    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.cli import main as cli_main

    ix = MemoryIndex.open(path)
    out = _dump(ix)
    q = np.load(query_file)
    out["found"] = ix.search(q, 1, nprobe=NLIST, rerank=depth).ids[:, 0].tolist() if len(q) else []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        every = ["--nprobe", str(ix.parts.ann.nlist)] if ix.parts.ann is not None else []  # a trial may lower nprobe
        code = cli_main(["search", path, "--query-file", cli_queries, "-k", str(k), "--json", *every]) if len(q) else 0
    out["cli_search"] = [json.loads(line)["ids"] for line in buf.getvalue().splitlines()]
    out["cli_search_code"] = code
    if ix.config.external_ids is None and out["rows"]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            out["cli_get_code"] = cli_main(["get", path, *map(str, out["rows"][:20]), "--json"])
        out["cli_get"] = [json.loads(line) for line in buf.getvalue().splitlines()]
    print(json.dumps(out), flush=True)
    if sys.stdin.readline().strip() == "refresh":
        ix.refresh()
        print(json.dumps(_dump(ix)), flush=True)
    ix.close()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "writer":
        _writer_main(sys.argv[2])
    elif sys.argv[1] == "reader":
        _reader_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        raise SystemExit(f"unknown role {sys.argv[1]!r}")
