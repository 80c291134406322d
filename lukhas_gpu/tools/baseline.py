"""The naive memory store of the old design, kept as the baseline every benchmark measures against.

One Python dict per memory (content, float32 embedding as a Python list, JSON metadata, tags),
dict-of-sets tag indexes and an embedding cache of numpy rows -- the layout that costs tens of KB
per memory. Search is exact float32 cosine over the cache, so it is also the recall reference.
Do not use it for anything but comparisons.
"""
from __future__ import annotations

import json
import time

import numpy as np

__all__ = ["NaiveMemoryStore"]


class NaiveMemoryStore:
    def __init__(self, dim: int):
        self.dim = dim
        self.memories: dict[int, dict] = {}
        self.tag_index: dict[str, set[int]] = {}
        self.embedding_cache: dict[int, np.ndarray] = {}
        self._matrix: np.ndarray | None = None
        self._matrix_ids: list[int] = []
        self._next = 0

    def add(self, embeddings: np.ndarray, contents=None, tags=None, timestamps=None, importance=None) -> list[int]:
        ids = []
        for i, e in enumerate(np.asarray(embeddings, dtype=np.float32)):
            mid = self._next
            self._next += 1
            tag_list = list(tags[i]) if tags is not None else []
            self.memories[mid] = {
                "id": mid,
                "content": contents[i] if contents is not None else "",
                "embedding": e.tolist(),
                "metadata": json.dumps({
                    "timestamp": float(timestamps[i]) if timestamps is not None else time.time(),
                    "importance": float(importance[i]) if importance is not None else 0.5,
                    "tags": tag_list,
                }),
                "tags": tag_list,
            }
            for t in tag_list:
                self.tag_index.setdefault(t, set()).add(mid)
            self.embedding_cache[mid] = e / max(float(np.linalg.norm(e)), 1e-12)
            ids.append(mid)
        self._matrix = None
        return ids

    def __len__(self) -> int:
        return len(self.memories)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        if self._matrix is None:
            self._matrix_ids = list(self.embedding_cache)
            self._matrix = np.stack([self.embedding_cache[i] for i in self._matrix_ids])
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        n = self._matrix.shape[0]
        kk = min(k, n)
        scores = np.empty((len(q), kk), np.float32)
        tops = np.empty((len(q), kk), np.int64)
        # a block of queries at a time: a batch of 1,000 over 100k memories as one score matrix and
        # its argpartition held 1.6 GB (the bench's peak), none of it the store's own cost
        block = max(1, (16 << 20) // max(n, 1))
        for a in range(0, len(q), block):
            s = q[a: a + block] @ self._matrix.T
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
            tops[a: a + block] = np.take_along_axis(top, order, 1)
            scores[a: a + block] = np.take_along_axis(s, tops[a: a + block], 1)
        return scores, np.asarray(self._matrix_ids)[tops]

    def get(self, ids) -> list[dict]:
        return [self.memories[int(i)] for i in ids]

    def delete(self, ids) -> None:
        for i in ids:
            m = self.memories.pop(int(i))
            for t in m["tags"]:
                self.tag_index[t].discard(int(i))
            self.embedding_cache.pop(int(i), None)
        self._matrix = None
