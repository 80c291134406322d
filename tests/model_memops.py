"""Memory operations in the model test (see ``model_store.py``): dedup on add and links.

The model predicts every dedup decision on its own: ``exact`` by content equality (the smallest
live row holding it, else the earliest equal memory of the batch), ``near`` by float cosine
(the nearest live memory at or above the threshold, else the earliest such memory of the
batch). The generated near-copies sit far inside the threshold (cosine > 0.999) and unrelated
vectors far outside it, so the model and the index's k=1 search confirmed on int8 rows agree.
Adds naming ids (external-id stores) are upserts and never dedup. Links are a dict
``(src row, dst row, kind) -> weight``; a read keeps the links whose two ends are live.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from model_scopes import in_window, one

from model_calls import _pick, make_add

DEDUP_THRESHOLD = 0.97
LINK_KINDS = ("cause", "ref", "é")


# -- dedup ------------------------------------------------------------------------------------------
def make_dedup_add(model, rng, n: int, *, explicit_ts: bool = False) -> dict:
    """An add with ``dedup`` set and duplicates planted on purpose (rows stores only: an add
    naming ids skips dedup)."""
    call = make_add(model, rng, n, explicit_ts=True)  # a merge keeps the newest: no "now" to read back
    mode = call["dedup"] = "exact" if rng.random() < 0.5 else "near"
    keys = model.keys()
    if model.kind != "rows":
        return call
    x = call["embeddings"]
    if mode == "exact":
        contents = call.setdefault("contents", [None] * n)
        pool = [model.mems[k].content for k in keys if model.mems[k].content is not None]
        for i in range(n):
            r = rng.random()
            if r < 0.4 and pool:
                contents[i] = pool[int(rng.integers(0, len(pool)))]
            elif r < 0.6 and i:
                contents[i] = contents[int(rng.integers(0, i))]
        return call
    for i in range(n):
        r = rng.random()
        if r < 0.4 and keys:
            base = model.mems[keys[int(rng.integers(0, len(keys)))]].vec
        elif r < 0.6 and i:
            base = x[int(rng.integers(0, i))]
        else:
            continue
        x[i] = base * np.float32(rng.uniform(0.5, 2.0)) + np.float32(0.002) * rng.standard_normal(len(base)).astype(
            np.float32) * np.linalg.norm(base)
    return call


def dedup_into(model, call: dict) -> list:
    """Per memory of an add: -1 (new) or the row it merges into, as the model decides."""
    n = len(call["embeddings"])
    mode = call.get("dedup") or "off"
    if mode == "off" or call.get("ids") is not None:
        return [-1] * n
    ns = [one(call, "namespace", i, "") for i in range(n)]  # nothing merges across namespaces
    live_all = [model.mems[k] for k in model.keys()]
    store, first = [-1] * n, [-1] * n
    if mode == "exact":
        contents = call.get("contents") or [None] * n
        for i, c in enumerate(contents):
            if c is None:
                continue
            rows = [m.row for m in live_all if m.ns == ns[i] and _same_content(m.content, c)]
            store[i] = min(rows) if rows else -1
            first[i] = next((j for j in range(i) if ns[j] == ns[i] and _same_content(contents[j], c)), -1)
    else:
        x = np.asarray(call["embeddings"], np.float64)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        for i in range(n):
            live = [m for m in live_all if m.ns == ns[i]]
            if live:
                v = np.stack([m.vec for m in live]).astype(np.float64)
                cos = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ xn[i]
                b = int(cos.argmax())
                store[i] = live[b].row if cos[b] >= DEDUP_THRESHOLD else -1
            first[i] = next((j for j in range(i) if ns[j] == ns[i] and xn[i] @ xn[j] >= DEDUP_THRESHOLD), -1)
    into, new_row, nxt = [-1] * n, {}, model.next_row
    for i in range(n):
        if store[i] >= 0:
            into[i] = store[i]
        elif first[i] >= 0:
            j = first[i]
            into[i] = into[j] if into[j] >= 0 else new_row[j]
        else:
            new_row[i], nxt = nxt, nxt + 1
    return into


def _same_content(a, b) -> bool:
    return a is not None and type(a) is type(b) and a == b


def apply_dedup_add(m, call: dict, into: list, mem_of) -> None:
    """The model ``m`` (a copy) after a deduped add: new memories, then each duplicate merged."""
    key_of = m.by_row()
    for i, t in enumerate(into):
        if t < 0:
            m.mems[m.next_row] = mem_of(m, i)
            key_of[m.next_row] = m.next_row
            m.next_row += 1
    for i, t in enumerate(into):
        if t < 0:
            continue
        key = key_of[t]
        old, dup = m.mems[key], mem_of(m, i)
        tags = list(old.tags) + [g for g in dup.tags if g not in old.tags]
        m.mems[key] = dataclasses.replace(old, ts=max(old.ts, dup.ts), imp=max(old.imp, dup.imp), tags=tuple(tags))


def add_ids(model, expect, call: dict) -> list:
    """The ids an add must return."""
    into = dedup_into(model, call)
    nxt, out = model.next_row, []
    for t in into:
        out.append(t if t >= 0 else nxt)
        nxt += t < 0
    return out


# -- links --------------------------------------------------------------------------------------------
def make_link(model, rng) -> dict | None:
    keys = model.keys()
    if len(keys) < 2:
        return None
    n = int(rng.integers(1, 5))
    src = [keys[int(i)] for i in rng.integers(0, len(keys), n)]
    dst = [keys[int(i)] for i in rng.integers(0, len(keys), n)]
    call = {"name": "link", "src": src, "dst": dst, "weight": (rng.integers(1, 9, n) / 4).tolist()}
    call["kind"] = str(rng.choice(LINK_KINDS)) if rng.random() < 0.5 else [str(k) for k in rng.choice(LINK_KINDS, n)]
    return call


def make_unlink(model, rng) -> dict | None:
    have = live_links(model)
    keys = model.keys()
    if not have or len(keys) < 2:
        return None
    key_of = model.by_row()
    s, d, k = have[int(rng.integers(0, len(have)))]
    call = {"name": "unlink", "src": [key_of[s]], "dst": [key_of[d]], "kind": k if rng.random() < 0.5 else None}
    if rng.random() < 0.3:  # and a pair that may hold no link
        call["src"].append(_pick(model, [rng.random()])[0])
        call["dst"].append(_pick(model, [rng.random()])[0])
    return call


def live_links(model) -> list:
    rows = {m.row for m in model.mems.values()}
    return sorted(k for k in model.links if k[0] in rows and k[1] in rows)


def apply_link_call(m, call: dict) -> None:
    rows = {k: mem.row for k, mem in m.mems.items()}
    n = max(len(call["src"]), len(call["dst"]))
    kinds = [call["kind"]] * n if isinstance(call["kind"], str) else call["kind"]
    for i in range(n):
        s, d = rows[call["src"][i]], rows[call["dst"][i]]
        if call["name"] == "link":
            m.links[(s, d, kinds[i])] = float(call["weight"][i])
        else:
            for key in [key for key in m.links if key[:2] == (s, d) and call["kind"] in (None, key[2])]:
                del m.links[key]


def check_links(ix, model, rng, fail, by_row: bool = False) -> None:
    """links() both ways, lineage() and search(follow_links=) against the model's links
    (``by_row``: ``ix`` takes rows, a ShardedIndex of the one-shard root)."""
    keys = model.keys()
    if not keys:
        return
    have = live_links(model)
    rows = [model.mems[k].row for k in keys]
    for direction, (a, b) in (("out", (0, 1)), ("in", (1, 0))):
        ls = ix.links(rows if by_row else keys, direction=direction)
        got = {(rows[i], int(t), str(k), float(w)) for i in range(len(keys)) for t, k, w in zip(*ls.of(i))}
        want = {(e[a], e[b], e[2], model.links[e]) for e in have}
        if got != want:
            fail(f"links(all, direction={direction!r})", sorted(got ^ want)[:8], "the model's")
    start = keys[int(rng.integers(0, len(keys)))]
    lin = ix.lineage(model.mems[start].row if by_row else start, depth=2)
    want_ids, want_depth = _bfs(have, model.mems[start].row, 2)
    if (lin.ids.tolist(), lin.depth.tolist()) != (want_ids, want_depth):
        fail(f"lineage({start!r}, depth=2)", (lin.ids.tolist(), lin.depth.tolist()), (want_ids, want_depth))
    res = ix.search(model.mems[start].vec, k=2, follow_links=1)
    ids, frm = np.asarray(res.ids).tolist(), np.asarray(res.linked_from).tolist()
    direct = [i for i, f in zip(ids, frm) if f < 0 and i >= 0]
    now = time.time()  # a search sees what is valid now: linked memories too
    valid = {model.mems[k].row for k in keys if in_window(model.mems[k], now)}
    out, src, seen = [], [], set(direct)
    for h in direct:
        for d in sorted({e[1] for e in have if e[0] == h}):
            if d not in seen and d in valid:
                seen.add(d)
                out.append(d)
                src.append(h)
    got = [(i, f) for i, f in zip(ids, frm) if f >= 0]
    if got != list(zip(out, src)):
        fail("search(follow_links=1) linked memories", got, list(zip(out, src)))


def _bfs(edges, start: int, depth: int) -> tuple[list, list]:
    seen, frontier, ids, depths = {start}, [start], [], []
    for d in range(1, depth + 1):
        nxt = sorted({e[1] for e in edges if e[0] in frontier} - seen)
        ids += nxt
        depths += [d] * len(nxt)
        seen |= set(nxt)
        frontier = nxt
    return ids, depths


class MemOpsMixin:
    """The driver's ops of this module (mixed into ``model_store.Run``)."""

    def op_dedup_add(self, op, rng):
        call = make_dedup_add(self.model, rng, op.get("n", 4))
        merged = sum(t >= 0 for t in dedup_into(self.model, call))
        self.call(call)
        if merged:
            self.count(f"dedup {call['dedup']} merged")

    def op_link(self, op, rng):
        call = make_link(self.model, rng)
        if call is not None:
            self.call(call)

    def op_unlink(self, op, rng):
        call = make_unlink(self.model, rng)
        if call is not None:
            self.call(call)
