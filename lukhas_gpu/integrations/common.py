"""What the adapters share: one store (in memory or durable at ``path``) named by str ids and
created on the first add, when the embeddings' dimension is known."""
from __future__ import annotations

import pathlib
import uuid

import numpy as np

from ..config import IndexConfig
from ..index.facade import MemoryIndex
from ..query import filters
from ..store import layout

__all__ = ["IndexHolder", "new_ids", "as_matrix"]


def new_ids(ids, n: int) -> list[str]:
    """``ids`` with every missing one replaced by a new UUID4 (str)."""
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(n)]
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries, expected {n} (one per text)")
    return [str(uuid.uuid4()) if i is None or i == "" else str(i) for i in ids]


def as_matrix(vectors, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{what} must be a list of vectors, got shape {x.shape}")
    return x


class IndexHolder:
    """A :class:`MemoryIndex` with ``external_ids="str"``, opened from ``path`` if a store is
    there, else created on first use with the dimension then known.

    Parameters
    ----------
    path : str or Path, optional
        A durable store (opened for writing: this process is its one writer). None: in memory.
    dim : int, optional
        Create the index at once (else at the first add).
    namespace : str, optional
        Keep to one namespace of the store: adds go there, searches, listings and lookups see
        only it (None: the default namespace for adds, every namespace for reads).
    **config
        ``IndexConfig`` fields (``external_ids`` is always ``"str"``).
    """

    def __init__(self, path=None, dim: int | None = None, namespace: str | None = None, **config):
        self.namespace = None if namespace is None else filters.Filter(namespace=namespace).namespace
        config = dict(config)
        if config.pop("external_ids", "str") != "str":
            raise ValueError("the adapters name memories by str ids: external_ids must be 'str'")
        self.config = IndexConfig(external_ids="str", **config)
        self.path = pathlib.Path(path) if path is not None else None
        self.index: MemoryIndex | None = None
        if self.path is not None and (self.path / layout.CURRENT).exists():
            self.index = MemoryIndex.open(self.path, "w")
            if self.index.config.external_ids != "str":
                raise ValueError(f"{self.path} holds a store without str ids (external_ids="
                                 f"{self.index.config.external_ids!r})")
        elif dim is not None:
            self.ensure(int(dim))

    def ensure(self, dim: int) -> MemoryIndex:
        if self.index is None:
            if self.path is not None:
                self.index = MemoryIndex.create(self.path, dim, self.config)
            else:
                self.index = MemoryIndex(dim, self.config)
        elif self.index.dim != dim:
            raise ValueError(f"embeddings of dimension {dim}; this store holds dimension {self.index.dim}")
        return self.index

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def live(self, ids) -> list[str]:
        """The ids (str) that name live memories (of the holder's namespace), once each, in order."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        if self.index is None or not ids:
            return []
        mask = self.index.contains(ids)
        out = [i for i, ok in zip(ids, mask.tolist()) if ok]
        if self.namespace is not None and out:
            out = [i for i, m in zip(out, self.index.get(out)) if m.namespace == self.namespace]
        return out

    def all_ids(self) -> list[str]:
        """Every live id (for ``delete all`` / listings): rows not deleted (in the namespace)."""
        if self.index is None or len(self.index) == 0:
            return []
        rows = self.index.select(namespace=self.namespace)
        return [k for k in self.index.external_ids_of(rows) if k is not None]

    def scoped(self, where):
        """``where`` kept to the holder's namespace (None: as given)."""
        return where if self.namespace is None else filters.scoped(where, self.namespace)

    def add(self, x: np.ndarray, **kw) -> np.ndarray:
        """``MemoryIndex.add`` into the holder's namespace (the index created at the first add)."""
        return self.ensure(x.shape[1]).add(x, namespace=self.namespace, **kw)

    def search(self, vectors, k: int, where=None) -> list[list[tuple]]:
        """Per query, ``(memory, cosine)`` pairs, best first, padding dropped."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if self.index is None or len(self.index) == 0:
            return [[] for _ in range(len(vectors))]
        res = self.index.search(as_matrix(vectors, "query"), k=min(int(k), len(self.index)), where=self.scoped(where))
        mems = res.memories()
        return [[(m, float(s)) for m, s in zip(row, srow) if m is not None] for row, srow in zip(mems, res.scores)]

    def mmr_search(self, vector, k: int, fetch_k: int, lambda_mult: float, where=None) -> list[tuple]:
        """Maximal marginal relevance (LangChain's ``fetch_k`` / ``lambda_mult``): the ``fetch_k``
        most similar memories (at least ``k``) re-chosen by :func:`lukhas_gpu.query.mmr.select`,
        the rule of ``search(..., diversity=1 - lambda_mult)``; ``(memory, cosine)`` pairs."""
        import torch

        from ..query import mmr

        if isinstance(fetch_k, bool) or not isinstance(fetch_k, (int, np.integer)) or fetch_k < 1:
            raise ValueError(f"fetch_k must be a positive int, got {fetch_k!r}")
        if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)):
            raise TypeError(f"lambda_mult must be a number in [0, 1], got {type(lambda_mult).__name__}")
        if not 0.0 <= float(lambda_mult) <= 1.0:
            raise ValueError(f"lambda_mult must be in [0, 1], got {lambda_mult!r}")
        pool = self.search(vector, max(int(fetch_k), int(k)), where)[0] if self.index is not None else []
        if not pool:
            return []
        ix = self.index
        mmr.check_diversity(1.0 - float(lambda_mult), int(k))  # the same bound on k as search(diversity=)
        ids = torch.tensor([[m.id for m, _ in pool]], dtype=torch.int64)
        rel = torch.tensor([[s for _, s in pool]], dtype=torch.float32)
        _, picks = mmr.select(rel, ids, ix.vectors_at, ix.dim, int(k), float(lambda_mult),
                              cosine=ix.config.metric == "cosine")
        by_id = {m.id: (m, s) for m, s in pool}
        return [by_id[i] for i in picks[0].tolist() if i >= 0]

    def close(self) -> None:
        if self.index is not None and self.index.path is not None and self.index.mode == "w":
            self.index.close()
