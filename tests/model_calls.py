"""Concrete calls of the model test (see ``model_store.py``): generated from an op's seed against
the model (an add's vectors, contents, tags, timestamps, importance, metadata, sparse vectors and
external ids; an update of some fields; calls that must be refused), executed on an index by
:func:`run_call` (in the test's process and in the subprocess writer alike), and written as JSON
for the subprocess writer and the replay files.
"""
from __future__ import annotations

import json

import numpy as np

from model_consts import DIM, FAR, NAMESPACES, T0, TAGS, USERS, WORDS


# -- concrete calls, generated from an op's seed against the model ----------------------------------
def _content(rng):
    r = rng.random()
    if r < 0.7:
        return " ".join(["common", *rng.choice(WORDS, int(rng.integers(0, 4))).tolist()])
    if r < 0.8:
        return str(rng.choice(["", "x", "ü"]))  # no term at all
    if r < 0.9:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 6)), dtype=np.uint8))
    return None


def _tags(rng):
    return sorted(rng.choice(TAGS, int(rng.integers(0, 4)), replace=False).tolist(), key=lambda t: rng.random())


def _meta(rng):
    if rng.random() < 0.2:
        return None
    d = {}
    for name, gen in (("user", lambda: str(rng.choice(USERS))), ("turn", lambda: int(rng.integers(0, 10))),
                      ("score", lambda: float(rng.integers(0, 8)) / 4), ("flag", lambda: bool(rng.random() < 0.5)),
                      ("note", lambda: [int(rng.integers(0, 3)), "n"])):
        r = rng.random()
        if r < 0.6:
            d[name] = gen()
        elif r < 0.7:
            d[name] = None
    return d


def _sparse(rng):
    k = int(rng.integers(0, 5))
    idx = np.unique(np.concatenate([[0], rng.integers(1, 50, k)])).astype(np.uint32)
    return idx, (rng.integers(1, 16, len(idx)) / 8).astype(np.float32)


def _grid_importance(rng, n):
    return (rng.integers(0, 65, n) / 64).tolist()


def _new_key(model, rng, taken: set):
    while True:
        n = int(rng.integers(0, 10**6))
        key = n if model.kind == "int" else ("é" if n % 7 == 0 else "m") + str(n)
        if key not in model.mems and key not in taken:
            return key


def make_add(model, rng, n: int, *, explicit_ts: bool = False) -> dict:
    call = {"name": "add", "embeddings": rng.standard_normal((n, DIM)).astype(np.float32)}
    if rng.random() < 0.85:
        call["contents"] = [_content(rng) for _ in range(n)]
    if rng.random() < 0.8:
        call["tags"] = [_tags(rng) for _ in range(n)]
    if explicit_ts or rng.random() < 0.85:
        call["timestamps"] = (T0 + rng.integers(0, 1000, n)).astype(float).tolist()
    r = rng.random()
    if r < 0.6:
        call["importance"] = _grid_importance(rng, n)
    elif r < 0.75:
        call["importance"] = float(rng.integers(0, 65) / 64)
    if rng.random() < 0.75:
        call["metadata"] = [_meta(rng) for _ in range(n)]
    if rng.random() < 0.7:
        call["sparse"] = [_sparse(rng) for _ in range(n)]
    _scope(call, rng, n)
    if model.kind != "rows":
        live, dead, ids = model.keys(), sorted(model.dead, key=str), []
        for _ in range(n):
            r = rng.random()
            pool = live if r < 0.3 else dead if r < 0.4 else []
            pool = [k for k in pool if k not in ids]
            ids.append(pool[int(rng.integers(0, len(pool)))] if pool else _new_key(model, rng, set(ids)))
        call["ids"] = ids
    return call


def _window_end(rng, start: float) -> float:
    """A window's end: past (T0 + ...), far future or open, never before ``start``."""
    r = rng.random()
    end = float(T0 + 1000 + rng.integers(0, 1000)) if r < 0.5 else FAR if r < 0.75 else float("inf")
    return max(end, start)


def _scope(call: dict, rng, n: int) -> None:
    """Sometimes a namespace (one for all, or one per memory) and validity windows."""
    r = rng.random()
    if r < 0.3:
        call["namespace"] = str(rng.choice(NAMESPACES))
    elif r < 0.5:
        call["namespace"] = [str(rng.choice(NAMESPACES)) for _ in range(n)]
    if rng.random() < 0.35:
        starts = [float(T0 + rng.integers(0, 1000)) if rng.random() < 0.6 else
                  (FAR + 1 if rng.random() < 0.2 else float("-inf")) for _ in range(n)]
        call["valid_to"] = [_window_end(rng, s) for s in starts]
        if any(s != float("-inf") for s in starts):
            call["valid_from"] = starts


def _pick(model, picks) -> list:
    keys = model.keys()
    if not keys:
        return []
    out = []
    for p in picks:
        k = keys[min(int(p * len(keys)), len(keys) - 1)]
        if k not in out:
            out.append(k)
    return out


def make_update(model, rng, keys: list) -> dict:
    n = len(keys)
    call = {"name": "update", "ids": keys}
    fields = [f for f in ("contents", "tags", "timestamps", "importance", "embeddings", "metadata")
              if rng.random() < 0.4]
    if rng.random() < 0.25:  # supersede (or extend) facts: a new end, never before their start
        call["valid_to"] = [_window_end(rng, model.mems[k].vf) for k in keys]
        fields = fields or ["importance"]
    for f in fields or ["embeddings"]:
        call[f] = {"contents": lambda: [_content(rng) for _ in range(n)],
                   "tags": lambda: [_tags(rng) for _ in range(n)],
                   "timestamps": lambda: (T0 + rng.integers(0, 1000, n)).astype(float).tolist(),
                   "importance": lambda: _grid_importance(rng, n), "metadata": lambda: [_meta(rng) for _ in range(n)],
                   "embeddings": lambda: rng.standard_normal((n, DIM)).astype(np.float32)}[f]()
    return call


def make_bad(model, rng) -> dict | None:
    """A call that must raise ValueError/TypeError and change nothing."""
    keys = model.keys()
    r = int(rng.integers(0, 9))
    if r == 0:
        call = make_add(model, rng, 3)
        call["embeddings"][1, 2] = np.nan
    elif r == 1:
        call = make_add(model, rng, 2)
        call["importance"] = [0.5, 1.5]
    elif r == 2 and model.kind != "rows":
        call = make_add(model, rng, 2)
        call["ids"] = [call["ids"][0]] * 2
    elif r == 2:
        call = make_add(model, rng, 2)
        call["ids"] = ["x", "y"]  # a rows store names no memories
    elif r == 3 and model.dead and keys:
        call = {"name": "delete", "ids": [keys[0], min(model.dead, key=str)]}
    elif r == 4 and keys:
        call = make_update(model, rng, keys[:2])
        call["metadata"] = [{"turn": "not an int"}] * len(call["ids"])
    elif r == 5 and keys:
        call = {"name": "update", "ids": keys[:1], "contents": ["ok"], "tags": [["ok"]], "importance": [2.0]}
    elif r == 6:
        call = make_add(model, rng, 2)
        call["namespace"] = ["n1", 7] if rng.random() < 0.5 else "x" * 300
    elif r == 7:
        call = make_add(model, rng, 2)
        call.update(valid_from=[float(T0 + 10)] * 2, valid_to=[float(T0 + 5), float("nan")][: 2])
    elif r == 8 and keys:
        call = {"name": "update", "ids": keys[:1], "valid_from": [float("inf")]}
    else:
        return None
    call["bad"] = True
    return call


def run_call(ix, call: dict):
    """Execute a concrete call on an index (the same code in this process and the subprocess writer)."""
    name = call["name"]
    kw = {k: v for k, v in call.items() if k not in ("name", "bad")}
    if name == "checkpoint":
        return ix.checkpoint()
    if name == "add":
        return ix.add(**kw)
    if name == "delete":
        return ix.delete(kw["ids"])
    if name == "drop_namespace":
        return ix.drop_namespace(kw["namespace"])
    if name == "purge_expired":
        return ix.purge_expired(kw.get("now"))
    if name in ("link", "unlink"):  # model_memops
        return getattr(ix, name)(**kw)
    ids = kw.pop("ids")
    return ix.update(ids, **kw)


def makes_record(call: dict) -> bool:
    return call["name"] in ("add", "update", "delete", "drop_namespace", "purge_expired", "link",
                            "unlink") and not call.get("bad")


# -- JSON for calls (the subprocess writer, the replay files) ----------------------------------------
def _enc(v):
    if isinstance(v, np.ndarray):
        return {"__nd__": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, bytes):
        return {"__b__": v.hex()}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v] if not isinstance(v, tuple) else {"__t__": [_enc(x) for x in v]}
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    return v


def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if "__nd__" in v:
            return np.asarray(v["__nd__"], dtype=v["dtype"])
        if "__b__" in v:
            return bytes.fromhex(v["__b__"])
        if "__t__" in v:
            return tuple(_dec(x) for x in v["__t__"])
        return {k: _dec(x) for k, x in v.items()}
    return v


def dumps_call(call: dict) -> str:
    return json.dumps(_enc(call), ensure_ascii=False)


def loads_call(text: str) -> dict:
    return _dec(json.loads(text))
