"""What the reorganisation promised beyond moving code: the stats() schema, clipped cosine scores,
the store layout as the one authority on file names, and the lazy package."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.store.layout import CorruptStoreError

DIM = 32


@pytest.fixture(scope="module")
def small():
    x = np.random.default_rng(5).standard_normal((1500, DIM)).astype(np.float32)
    index = MemoryIndex(DIM, IndexConfig(train_threshold=1024, nlist=16, seed=1))
    index.add(x, contents=[f"m{i}" for i in range(1500)], tags=[["a"] if i % 2 else ["b"] for i in range(1500)])
    return index, x


def test_stats_is_one_schema(small):
    index, _ = small
    st = index.stats()
    assert {"count", "rows", "deleted", "ann_dead", "dim", "dim_out", "phase", "nlist", "pq_m", "coarse", "backend",
            "vector_storage", "gpu_resident", "memory", "bytes_per_memory", "process", "content",
            "tag_vocabulary", "train_seconds", "tuning", "capabilities", "config"} == set(st)
    mem = st["memory"]
    for place in ("anon", "mapped", "disk", "gpu"):
        assert mem[f"{place}_bytes"] == sum(mem[place].values())
    assert st["bytes_per_memory"] == pytest.approx((mem["anon_bytes"] + mem["mapped_bytes"]) / st["count"])
    assert mem["logical"]["vectors_int8"] == 1500 * DIM
    assert st["content"]["raw_bytes"] > 0 and st["content"]["stored_bytes"] > 0
    json.dumps(st, default=str)  # serialisable as the CLI prints it


def test_cosine_scores_never_exceed_one(small):
    index, x = small
    for kw in ({}, {"nprobe": 16}, {"where": lukhas_gpu.Filter(tags_all=["a"])}):
        res = index.search(x[:200], 5, **kw)
        assert float(np.max(res.scores)) <= 1.0
    exact = MemoryIndex(DIM)
    exact.add(x[:500])
    assert float(np.max(exact.search(x[:500], 3).scores)) <= 1.0


def _store(tmp_path):
    path = tmp_path / "s"
    index = MemoryIndex.create(path, DIM)
    index.add(np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32))
    index.checkpoint()
    index.close()
    return path


def test_a_damaged_current_names_the_file(tmp_path):
    path = _store(tmp_path)
    (path / layout.CURRENT).write_bytes(b"\xff\xfegen-000002\n")
    with pytest.raises(CorruptStoreError, match=layout.CURRENT):
        MemoryIndex.open(path)
    (path / layout.CURRENT).write_text("../../etc\n")
    with pytest.raises(CorruptStoreError, match="does not name a generation"):
        MemoryIndex.open(path)


@pytest.mark.parametrize("name", ["../../secret.txt", "/etc/passwd", "extra.bin"])
def test_the_manifest_cannot_name_files_outside_the_format(tmp_path, name):
    path = _store(tmp_path)
    gen = layout.current_generation(path)
    manifest = json.loads((gen / layout.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": 0, "crc32": 0}
    (gen / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match="not a file of this format"):
        MemoryIndex.open(path)


def test_a_manifest_missing_a_required_file_is_refused(tmp_path):
    path = _store(tmp_path)
    gen = layout.current_generation(path)
    manifest = json.loads((gen / layout.MANIFEST).read_text())
    del manifest["files"][layout.TAGS]
    (gen / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match=layout.TAGS):
        MemoryIndex.open(path)


def test_importing_the_package_loads_neither_torch_nor_faiss():
    code = ("import sys, lukhas_gpu\nfrom lukhas_gpu import MemoryIndex, IndexConfig, plan\n"
            "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_first_index_to_use_the_vectors_is_charged_the_runtime():
    code = ("import numpy as np, lukhas_gpu\n"
            "a, b = lukhas_gpu.MemoryIndex(8), lukhas_gpu.MemoryIndex(8)\n"
            "x = np.random.default_rng(0).standard_normal((10, 8)).astype('float32')\n"
            "a.add(x); b.add(x)\n"
            "print(a.stats()['memory']['anon'].get('runtime', 0) > 0, 'runtime' in b.stats()['memory']['anon'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
