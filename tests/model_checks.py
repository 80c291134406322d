"""The checks of the model test (see ``model_store.py``): after every op the store is held to the
model through every route that can name a memory.

* ``len``, ``select()``, ``contains``, ``get`` (content, tags, timestamp, importance, metadata,
  external id), ``sparse_vectors``; deleted ids refused by ``get`` and absent from ``contains``;
* every live memory found by its own vector with every list probed (``nprobe = nlist``) and a
  rerank depth that a healthy IVF always meets (the codes must find it; with known defect 1
  tolerated the depth covers every candidate, so presence in the IVF is still checked);
* congruence: random :class:`~lukhas_gpu.Filter` s (tags, time, importance, ``meta`` on the
  declared fields) with a random ``namespace`` and ``as_of`` through dense, ranked, resident,
  sparse, BM25 and hybrid search and ``select`` give exactly the model's allowed set (``k`` >
  live memories, so a route returns all it can);
* ``verify()``.
"""
from __future__ import annotations

import time
import types

import numpy as np
from model_scopes import in_window, valid_keys

from model_consts import DIM, FAR, FIELDS, NAMESPACES, NLIST, T0, TAGS, USERS
from model_memops import check_links
from model_store import Violation

#: Candidates the own-vector check allows: a healthy IVF (PQ16x4fs at 16 dims, every list probed)
#: ranks a memory's own code at most 4th among 2,000 (10 seeds measured); a garbled code, anywhere.
FOUND_DEPTH = 16
SPARSE_QUERY = (np.array([0], np.uint32), np.array([1.0], np.float32))


# -- filters: random specs and the model's predicate ------------------------------------------------
def random_filter(rng) -> dict:
    spec = {}
    if rng.random() < 0.35:
        spec["tags_all"] = rng.choice(TAGS, int(rng.integers(1, 3)), replace=False).tolist()
    if rng.random() < 0.35:
        spec["tags_any"] = rng.choice(TAGS, int(rng.integers(1, 4)), replace=False).tolist()
    if rng.random() < 0.25:
        spec["tags_none"] = rng.choice(TAGS, int(rng.integers(1, 3)), replace=False).tolist()
    if rng.random() < 0.35:
        spec["since"] = float(T0 + rng.integers(0, 1000))
    if rng.random() < 0.35:
        spec["until"] = float(max(spec.get("since", T0), T0 + rng.integers(0, 1000)))
    if rng.random() < 0.3:
        spec["min_importance"] = float(rng.integers(0, 65) / 64)
    if rng.random() < 0.5:
        spec["meta"] = random_meta(rng)
    return spec


def _cond(rng) -> dict:
    field = str(rng.choice(list(FIELDS)))
    r = int(rng.integers(0, 6))
    if field == "user":
        v = str(rng.choice(USERS))
        return {field: [v, {"$ne": v}, {"$in": [v, "u9"]}, {"$nin": [v]}, {"$exists": bool(r % 2)}, {"$eq": v}][r]}
    if field == "turn":
        a = int(rng.integers(0, 10))
        return {field: [a, {"$gte": a, "$lt": a + 3.5}, {"$in": [a, a + 1]}, {"$ne": a}, {"$exists": True},
                        {"$gt": a - 0.5, "$lte": a + 2}][r]}
    if field == "score":
        a = float(rng.integers(0, 8) / 4)
        return {field: [a, {"$gt": a}, {"$lte": int(a)}, {"$in": [a, 0.5]}, {"$exists": False}, {"$lt": a}][r]}
    b = bool(rng.random() < 0.5)
    return {field: [b, {"$ne": b}, {"$exists": True}, {"$in": [b]}, {"$nin": [b]}, {"$eq": b}][r]}


def random_meta(rng, depth: int = 0) -> dict:
    r = rng.random()
    if depth < 2 and r < 0.15:
        return {"$or": [random_meta(rng, depth + 1) for _ in range(int(rng.integers(1, 3)))]}
    if depth < 2 and r < 0.25:
        return {"$not": random_meta(rng, depth + 1)}
    if depth < 2 and r < 0.32:
        return {"$and": [random_meta(rng, depth + 1) for _ in range(2)]}
    d = _cond(rng)
    if rng.random() < 0.3:
        d.update({k: v for k, v in _cond(rng).items() if k not in d})
    return d


def _same(v, x) -> bool:
    return v == x and isinstance(v, bool) == isinstance(x, bool)


def _meta_ok(f: dict, d) -> bool:
    for key, val in f.items():
        if key == "$or":
            ok = any(_meta_ok(x, d) for x in val)
        elif key == "$and":
            ok = all(_meta_ok(x, d) for x in val)
        elif key == "$not":
            ok = not _meta_ok(val, d)
        else:
            v = (d or {}).get(key)
            has = v is not None
            ok = all(_op_ok(op, x, v, has) for op, x in (val.items() if isinstance(val, dict) else [("$eq", val)]))
        if not ok:
            return False
    return True


def _op_ok(op, x, v, has) -> bool:
    if op == "$exists":
        return has == x
    if op in ("$ne", "$nin"):
        return not (has and any(_same(v, y) for y in (x if op == "$nin" else [x])))
    if not has:
        return False
    if op in ("$eq", "$in"):
        return any(_same(v, y) for y in (x if op == "$in" else [x]))
    return {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op]


def allows(spec: dict | None, m) -> bool:
    """The model's predicate: does a filter spec allow memory ``m``?"""
    if not spec:
        return True
    tags = set(m.tags)
    return (all(t in tags for t in spec.get("tags_all", ()))
            and (not spec.get("tags_any") or any(t in tags for t in spec["tags_any"]))
            and not any(t in tags for t in spec.get("tags_none", ()))
            and ("since" not in spec or m.ts >= spec["since"]) and ("until" not in spec or m.ts <= spec["until"])
            and ("min_importance" not in spec or m.imp >= spec["min_importance"])
            and ("meta" not in spec or _meta_ok(spec["meta"], m.meta)))


def random_scope(rng) -> dict:
    """A search's ``namespace`` (None: any) and ``as_of`` (None: now)."""
    out = {}
    if rng.random() < 0.5:
        out["namespace"] = str(rng.choice([*NAMESPACES, "zz"]))
    r = rng.random()
    if r < 0.4:
        out["as_of"] = float(T0 + rng.integers(0, 2100)) if r < 0.25 else FAR + float(rng.integers(0, 2))
    return out


def in_scope(scope: dict, m, now: float) -> bool:
    t = scope.get("as_of", now)
    return ("namespace" not in scope or m.ns == scope["namespace"]) and in_window(m, t)


def make_filter(spec):
    from lukhas_gpu import Filter

    return Filter(**spec) if spec else None


# -- the checks -----------------------------------------------------------------------------------------
def _fail(what: str, got, want) -> None:
    raise Violation(f"{what}: store {_short(got)}, model {_short(want)}")


def _short(v):
    if isinstance(v, (set, frozenset)):
        v = sorted(v)
    text = repr(v)
    return text if len(text) < 300 else text[:300] + f"... ({len(v) if hasattr(v, '__len__') else '?'} items)"


def _set_diff(what, got: set, want: set) -> None:
    if got != want:
        raise Violation(f"{what}: {len(got)} ids, model {len(want)}; extra (not allowed or dead) "
                        f"{_short(got - want)}, missing {_short(want - got)}")


def check_records(ix, model, rng) -> None:
    """Counts, listing and every live memory's fields; deleted ids refused."""
    keys = model.keys()
    if len(ix) != len(keys):
        _fail("len()", len(ix), len(keys))
    sel = ix.select().tolist()
    rows = [model.mems[k].row for k in valid_keys(model)]  # select() sees what is valid now
    if sel != sorted(rows):
        _set_diff("select() (no filter: valid now)", set(sel), set(rows))
    if keys:
        if not ix.contains(keys).all():
            _fail("contains(live ids)", ix.contains(keys).tolist(), True)
        for key, g in zip(keys, ix.get(keys)):
            m = model.mems[key]
            got = (g.id, g.external_id, g.content, list(g.tags), g.timestamp, g.importance, g.metadata, g.namespace,
                   g.valid_from, g.valid_to)
            want = (m.row, key, m.content, list(m.tags), m.ts, m.imp, m.meta, m.ns, m.vf, m.vt)
            if got != want:
                _fail(f"get({key!r}) (id, external id, content, tags, timestamp, importance, metadata, namespace, "
                      "window)", got, want)
        want = [model.mems[k].content for k in keys], [model.mems[k].meta for k in keys]
        if (ix.contents(keys), ix.metadata(keys)) != want:
            _fail("contents(ids), metadata(ids)", (ix.contents(keys), ix.metadata(keys)), want)
    dead = sorted(model.dead, key=str)
    for key in [dead[i] for i in rng.choice(len(dead), min(len(dead), 4), replace=False)] if dead else []:
        if ix.contains([key])[0]:
            _fail(f"contains(deleted {key!r})", True, False)
        try:
            ix.get([key])
        except ValueError:
            pass
        else:
            raise Violation(f"get(deleted {key!r}) did not raise ValueError")


def check_sparse(ix, model, keys) -> None:
    if not keys:
        return
    for key, (idx, val) in zip(keys, ix.sparse_vectors(keys)):
        want = model.mems[key].sparse
        if want is None:
            want = (np.zeros(0, np.uint32), np.zeros(0, np.float32))
        if not (np.array_equal(idx, want[0]) and np.array_equal(np.asarray(val, np.float32), want[1])):
            _fail(f"sparse_vectors({key!r})", (idx.tolist(), val.tolist()), (want[0].tolist(), want[1].tolist()))


def ivf_ids(ix) -> np.ndarray | None:
    """The ids held in the IVF's lists (read through FAISS's public inverted-list API), or None untrained."""
    import faiss

    if ix.parts.ann is None:
        return None
    ivf = faiss.extract_index_ivf(ix.parts.ann.index)
    inv, out = ivf.invlists, [np.zeros(0, np.int64)]
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n:
            out.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).copy())
    return np.sort(np.concatenate(out))


def check_found(ix, model, keys, known) -> None:
    """Every live memory valid now is found by its own vector: by an exact scan (the resident route: this
    holds the stored vectors to the model), and by the IVF -- whose lists hold every live row once
    (and otherwise only deleted rows' entries, kept until their lists are re-encoded and excluded
    by every search) and, unless defect 1 is tolerated, rank each one's code among the first
    ``FOUND_DEPTH`` candidates with every list probed."""
    rows = np.array([model.mems[k].row for k in keys], np.int64)
    held = ivf_ids(ix)
    if held is not None:
        live_held = held[np.isin(held, rows)]
        dead_held = held[~np.isin(held, rows)]
        if not np.array_equal(live_held, np.sort(rows)):
            _set_diff("live ids in the IVF lists", set(live_held.tolist()), set(rows.tolist()))
        if len(dead_held) and not ix.parts.tombstones.contains(dead_held).all():
            raise Violation(f"the IVF lists hold rows that are neither live in the model nor deleted in the "
                            f"store: {dead_held[~ix.parts.tombstones.contains(dead_held)][:12].tolist()}")
        if len(np.unique(dead_held)) != len(dead_held):
            raise Violation("a deleted row has more than one entry in the IVF lists")
    keys = [k for k in keys if in_window(model.mems[k], time.time())]  # a search sees what is valid now
    rows = np.array([model.mems[k].row for k in keys], np.int64)
    if not keys:
        return
    vecs = np.stack([model.mems[k].vec for k in keys])
    searches = [("exact (resident) scan", lambda: _resident(ix, vecs, 1, None))]
    if held is None or 1 not in known:
        searches.append((f"IVF (nprobe={NLIST}, rerank={FOUND_DEPTH}, trained={ix.is_trained})",
                         lambda: ix.search(vecs, 1, nprobe=NLIST, rerank=FOUND_DEPTH)))
    key_of = {model.mems[k].row: k for k in keys}
    stage = ix.parts.stage
    if stage is not None and stage.ready:  # the candidate stage, as deep as it goes (the last is read below)
        searches.insert(0, (f"candidate stage {stage.kind}", lambda: _stage_search(ix, vecs, 1, stage)))
    for what, search in searches:
        res = search()
        got = np.asarray(res.ids)[:, 0]
        miss = _misses(model, vecs, rows, got)
        if len(miss):
            raise Violation(f"{len(miss)} of {len(rows)} live memories not found by their own vector, {what}; "
                            f"rows {rows[miss][:12].tolist()} gave {got[miss][:12].tolist()}")
    found = [key_of[g] for g in got.tolist()]
    if [e[0] for e in res.external_ids] != found:
        _fail("SearchResult.external_ids of the own-vector search", [e[0] for e in res.external_ids][:12], found[:12])
    hydrated = [m[0] for m in res.memories()[:8]]
    if [(m.id, m.content, m.external_id) for m in hydrated] != [(model.mems[k].row, model.mems[k].content, k)
                                                               for k in found[:8]]:
        _fail("SearchResult.memories()", hydrated, found[:8])


def _misses(model, vecs, rows, got) -> np.ndarray:
    """Where an own-vector search gave another row than ``rows``: a near-copy kept apart (another
    namespace, dedup off or exact) may tie with its original, so a twin found instead is no miss."""
    miss = np.flatnonzero(np.asarray(got) != np.asarray(rows))
    twin_of = {m.row: m for m in model.mems.values()}  # a raw stage search sees every window
    return miss[[not _twins(vecs[i], twin_of[g].vec) if g in twin_of else True
                 for i, g in zip(miss.tolist(), np.asarray(got)[miss].tolist())]].astype(np.int64)


def _twins(a, b) -> bool:
    """Two vectors of one direction (cosine > 0.999: the near-copies the dedup ops plant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b) > 0.999 * float(np.linalg.norm(a) * np.linalg.norm(b))


def _stage_search(ix, q, k: int, stage):
    """A search whose candidates come from the candidate stage at its deepest parameter."""
    import torch

    from lukhas_gpu.query import executor
    from lukhas_gpu.vectors import graph
    param = graph.GRAPH_EF[-1] if stage.kind == "graph" else graph.RABITQ_NPROBES[-1]
    s = executor.Search(k=k, nprobe=NLIST, rerank=FOUND_DEPTH, exact_max=0, stage=(stage.kind, param))
    with ix.lock:
        _, ids, _ = executor.similar(ix.parts, torch.from_numpy(np.ascontiguousarray(q, np.float32)), s, None)
    return types.SimpleNamespace(ids=ids.cpu().numpy())


def check_tuned(ix, model, rng) -> None:
    """Searches with a target (the tuned structure: a stage, the IVF or the exact scan) return
    live memories only, each once, within the filter; through a stage too after deletes and
    updates (a superseded node or a deleted row's is never returned)."""
    if ix.parts.tuned is None:
        return
    mems = list(model.mems.values())
    n = len(mems)
    q = (mems[int(rng.integers(n))].vec if n else rng.standard_normal(DIM).astype(np.float32))[None, :]
    for spec in (None, random_filter(rng)):
        allowed = {m.row for m in mems if allows(spec, m)}
        try:
            got = _ids(ix.search(q, min(n + 1, 50), where=make_filter(spec), target_recall=0.9))
        except Exception as e:
            raise Violation(f"search(target_recall=0.9) with Filter({spec}) raised {type(e).__name__}: {e}") from e
        if not set(got) <= allowed:
            raise Violation(f"search(target_recall=0.9) with Filter({spec}) returned rows outside the model's "
                            f"allowed set: {sorted(set(got) - allowed)[:12]}")


def _ids(res) -> list:
    ids = np.asarray(res.ids).reshape(-1)
    valid = ids[ids >= 0]
    if len(valid) and ids[len(valid) - 1] < 0:
        raise Violation(f"padding (-1) before a result: {ids[:40].tolist()}")
    if len(set(valid.tolist())) != len(valid):
        raise Violation("a route returned an id twice")
    return valid.tolist()


def routes(ix, q, k: int, flt, spec: dict, known, scope: dict | None = None) -> dict:
    """``name -> (callable giving the ids, which memories it can return)``; ``scope``: the
    ``namespace`` and ``as_of`` every route is given."""
    from lukhas_gpu import Rank

    meta = spec is not None and "meta" in spec
    sc = scope or {}
    out = {
        "dense": (lambda: ix.search(q, k, where=flt, nprobe=NLIST, rerank=16, **sc), "all"),
        "ranked": (lambda: ix.search(q, k, where=flt, nprobe=NLIST, rerank=16, **sc,
                                     rank=Rank(1.0, 0.5, 0.3, half_life=500.0, now=T0 + 1000)), "all"),
        "select": (lambda: ix.select(flt, **sc), "all"),
        "resident": (lambda: _resident(ix, q, k, flt, sc), "all"),
    }
    if not (meta and 9 in known):
        out["sparse"] = (lambda: ix.search(None, k, sparse=[SPARSE_QUERY], where=flt, **sc), "sparse")
        out["text"] = (lambda: ix.search_text(["common"], k, where=flt, **sc), "text")
        out["hybrid_text"] = (lambda: ix.search(q, k, where=flt, nprobe=NLIST, rerank=16, text=["common"], **sc),
                              "all")
        out["hybrid_sparse"] = (lambda: ix.search(q, k, where=flt, nprobe=NLIST, rerank=16, sparse=[SPARSE_QUERY],
                                                  fusion="weighted", **sc), "all")
    return out


def _resident(ix, q, k, flt, scope=None):
    """The device-mirror route (``gpu_resident``; on the CPU a second copy in RAM), turned on for one call."""
    p = ix.parts
    was = p.mirror_wanted
    p.mirror_wanted = True
    try:
        return ix.search(q, k, where=flt, **(scope or {}))
    finally:
        p.mirror_wanted, p.mirror = was, None


def reachable(m, what: str) -> bool:
    if what == "sparse":
        return m.sparse is not None
    if what == "text":
        return isinstance(m.content, str) and "common" in m.content.split()
    return True


def check_congruence(ix, model, rng, known, n_filters: int = 2, skip=()) -> None:
    """Every route but those in ``skip`` gives the model's allowed set (``k`` > live memories)."""
    mems = list(model.mems.values())
    n = len(mems)
    k = n + 1
    q = (mems[int(rng.integers(n))].vec if n else rng.standard_normal(DIM).astype(np.float32))[None, :]
    reach = {what: {m.row for m in mems if reachable(m, what)} for what in ("all", "sparse", "text")}
    for spec in [None] + [random_filter(rng) for _ in range(n_filters)]:
        flt = make_filter(spec)
        scope = random_scope(rng)
        allowed = {m.row for m in mems if allows(spec, m) and in_scope(scope, m, time.time())}
        for name, (call, what) in routes(ix, q, k, flt, spec, known, scope).items():
            if name in skip:
                continue
            want = allowed & reach[what]
            try:
                res = call()
            except Exception as e:
                raise Violation(f"route {name} with Filter({spec}) {scope} raised {type(e).__name__}: {e}") from e
            got = res.tolist() if isinstance(res, np.ndarray) else _ids(res)
            _set_diff(f"route {name} with Filter({spec}) {scope}", set(got), want)


def check_index(ix, model, rng, known, *, light: bool = False) -> None:
    """Hold an open index (writer or reader) to the model; raises :class:`Violation`."""
    check_records(ix, model, rng)
    if light:
        return
    keys = model.keys()
    check_sparse(ix, model, keys)
    check_found(ix, model, keys, known)
    check_tuned(ix, model, rng)
    check_congruence(ix, model, rng, known)
    check_links(ix, model, rng, _fail)
    rep = ix.verify()
    if not rep.get("ok"):
        _fail("verify()", rep, "ok")
    if rep["count"] != len(keys):
        _fail("verify() count", rep["count"], len(keys))
    if ix.write_count != model.writes:  # every logged call +1; checkpoints, reopens, crashes: unchanged
        _fail("write_count", ix.write_count, model.writes)
    check_rows_mapped(ix)


def check_rows_mapped(ix) -> None:
    """A writer whose log is empty (just checkpointed or opened) holds its int8 rows as the
    published file mapped copy-on-write: none of them in anonymous RAM (VectorStore.rebase)."""
    if ix.mode != "w" or ix.config.vector_storage != "memory" or ix.state.wal is None or len(ix.state.wal):
        return
    mem = ix.parts.vectors.memory_usage()
    got = (mem.get("mapped", {}).get("vectors_int8", 0), mem.get("anon", {}).get("vectors_int8", 0))
    if got != (ix.parts.rows * ix.dim, 0):
        _fail("a checkpointed writer's rows (mapped, anonymous bytes)", got, (ix.parts.rows * ix.dim, 0))


def matches(ix, model, rng, known) -> bool:
    try:
        check_records(ix, model, rng)
        check_sparse(ix, model, model.keys())
        check_found(ix, model, model.keys(), known)
        check_links(ix, model, rng, _fail)
        return True
    except Violation:
        return False


def check_sharded(root, model, rng, known) -> None:
    """The store as the one shard of a sharded root: ShardedIndex search and get (global id = row)."""
    from lukhas_gpu.distributed import ShardedIndex

    mems = list(model.mems.values())
    with ShardedIndex.open(root) as sx:
        q = (mems[0].vec if mems else np.ones(DIM, np.float32))[None, :]
        for spec in [None, random_filter(rng)]:
            if spec and "meta" in spec and 9 in known:
                spec.pop("meta")
            scope = random_scope(rng)
            got = set(_ids(sx.search(q, len(mems) + 1, where=make_filter(spec), nprobe=NLIST, rerank=16, **scope)))
            _set_diff(f"ShardedIndex.search with Filter({spec}) {scope}", got,
                      {m.row for m in mems if allows(spec, m) and in_scope(scope, m, time.time())})
        some = mems[:10]
        if some:
            got = [(g.id, g.content) for g in sx.get([m.row for m in some])]
            if got != [(m.row, m.content) for m in some]:
                _fail("ShardedIndex.get", got, [(m.row, m.content) for m in some])
        check_links(sx, model, rng, lambda what, got, want: _fail(f"ShardedIndex {what}", got, want), by_row=True)


def check_dump(out: dict, model, k: int) -> None:
    """A subprocess reader's dump (``model_store._reader_main``) against the model."""
    from model_calls import _dec

    keys = valid_keys(model)  # the reader's select() and searches: what is valid now
    rows = [model.mems[key].row for key in keys]
    if out["count"] != len(keys) or out["rows"] != rows:
        _set_diff("subprocess reader rows", set(out["rows"]), set(rows))
    for key, (row, content, tags, ts, imp, ext, meta) in zip(keys, out["mems"]):
        m = model.mems[key]
        got, want = (row, _dec(content), tags, ts, imp, _dec(ext), meta), (m.row, m.content, list(m.tags), m.ts, m.imp,
                                                                         key, m.meta)
        if got != want:
            _fail(f"subprocess reader get({key!r})", got, want)
    if "found" not in out:  # the dump after a refresh: the records only
        return
    if out["found"] != rows and len(_misses(model, [model.mems[key].vec for key in keys], rows, out["found"])):
        _fail("subprocess reader: memories found by their own vector", out["found"], rows)
    for ids in out["cli_search"]:
        _set_diff("CLI search (subprocess)", set(ids), set(rows))
    if out["cli_search_code"] != 0:
        _fail("CLI search exit code", out["cli_search_code"], 0)
    for line in out.get("cli_get", []):
        m = model.mems[line["id"]]
        want = m.content if isinstance(m.content, str) else line["content"]  # the CLI prints others its own way
        if (line["content"], line["tags"], line["timestamp"], line["importance"]) != (want, list(m.tags), m.ts, m.imp):
            _fail(f"CLI get {line['id']}", line, (m.content, m.tags, m.ts, m.imp))
