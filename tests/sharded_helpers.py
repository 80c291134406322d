"""Seeded data split over the shards of a sharded root, and the same data in one index, for the
sharded search tests (``test_sharded.py``, ``test_sharded_ray.py``)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.distributed import rootfiles
from lukhas_gpu.tools.synthetic import builtin_model

DAY = 86400.0
WORDS = [f"w{i}" for i in range(400)]
SPARSE_VOCAB = 2000


def config(**kw) -> IndexConfig:
    """The production preset with metadata columns and BM25, no background tuning (tests compare
    fixed searches) and no dedup (a root and one index over the same rows keep every row)."""
    base = IndexConfig.preset("production")
    return dataclasses.replace(base, **{"auto_tune": False, "text_index": True, "metadata_fields": {"user": "str"},
                                        "dedup": "off", **kw})


@dataclasses.dataclass
class Data:
    x: np.ndarray
    q: np.ndarray
    contents: list
    tags: list
    timestamps: np.ndarray
    importance: np.ndarray
    metadata: list
    sparse: list
    now: float

    def rows(self, a: int, b: int) -> dict:
        return dict(embeddings=self.x[a:b], contents=self.contents[a:b], tags=self.tags[a:b],
                    timestamps=self.timestamps[a:b], importance=self.importance[a:b], metadata=self.metadata[a:b],
                    sparse=self.sparse[a:b])


def make_data(n: int, nq: int = 32, seed: int = 0) -> Data:
    model = builtin_model()
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    lens = rng.integers(3, 12, n)
    words = np.asarray(WORDS)[rng.choice(len(WORDS), size=int(lens.sum()), p=p)].tolist()
    ends = np.cumsum(lens).tolist()
    contents = [" ".join(words[e - m: e]) for e, m in zip(ends, lens.tolist())]
    tags = [["a"] + (["c"] if i % 5 == 0 else []) if i % 2 else ["b"] for i in range(n)]
    now = time.time()
    sparse = []
    for _ in range(n):
        idx = np.unique(rng.integers(0, SPARSE_VOCAB, int(rng.integers(2, 20)))).astype(np.int64)
        sparse.append((idx, rng.lognormal(-0.5, 0.7, len(idx)).astype(np.float32)))
    # one block of exactly the rows needed (``sample`` draws whole 65,536-row blocks)
    x = model.block(0, seed, rows=n)
    q = model.block(0, 1_000_003 + seed, rows=nq, spread=model.query_spread)
    return Data(x=x, q=q, contents=contents, tags=tags,
                timestamps=now - rng.uniform(0, 30 * DAY, n), importance=rng.uniform(0, 1, n),
                metadata=[{"user": f"u{i % 4}"} for i in range(n)], sparse=sparse, now=now)


def bounds(n: int, shards: int) -> np.ndarray:
    """Contiguous blocks: row ``i`` of the data goes to the shard whose block holds it."""
    return np.linspace(0, n, shards + 1).astype(np.int64)


def build_root(root, data: Data, shards: int, cfg: IndexConfig, *, train: bool = False) -> np.ndarray:
    """Write a complete sharded root holding ``data`` in contiguous blocks; returns the bounds."""
    b = bounds(len(data.x), shards)
    rootfiles.write_root(root, shards=shards, dim=data.x.shape[1], state="complete")
    for s in range(shards):
        with MemoryIndex.create(rootfiles.shard_dir(root, s), data.x.shape[1], cfg) as ix:
            ix.add(**data.rows(b[s], b[s + 1]))
            if train:
                ix.train()
    return b


def single_index(data: Data, cfg: IndexConfig, *, train: bool = False) -> MemoryIndex:
    ix = MemoryIndex(data.x.shape[1], cfg)
    ix.add(**data.rows(0, len(data.x)))
    if train:
        ix.train()
    return ix


def to_global(ids, b: np.ndarray) -> np.ndarray:
    """Ids of the single index -> global ids of the root built with bounds ``b`` (-1 stays)."""
    ids = np.asarray(ids, np.int64)
    shard = np.searchsorted(b, ids, side="right") - 1
    out = (shard.astype(np.int64) << rootfiles.SHARD_SHIFT) | (ids - b[np.clip(shard, 0, len(b) - 1)])
    return np.where(ids >= 0, out, -1)


def to_single(gids, b: np.ndarray) -> np.ndarray:
    """Global ids -> ids of the single index (-1 stays)."""
    gids = np.asarray(gids, np.int64)
    rows = b[np.clip(gids >> rootfiles.SHARD_SHIFT, 0, len(b) - 1)] + (gids & rootfiles.ROW_MASK)
    return np.where(gids >= 0, rows, -1)
