"""Conditions on metadata (``Filter(meta=...)``): parsed once, evaluated as a vectorised scan of
the declared fields' packed columns (the fast path), or of the stored metadata records for a key
never declared (``records/metascan.py``; :func:`source` says which a filter reads).

The form is the dict one LangChain, mem0 and MongoDB use::

    {"user_id": "alice"}                            equality
    {"turn": {"$gte": 3, "$lt": 10}}                ranges ($gt $gte $lt $lte), AND-ed
    {"lang": {"$in": ["en", "fr"]}}                 $in / $nin, $eq / $ne
    {"topic": {"$exists": True}}
    {"$or": [{...}, {...}]}, {"$and": [...]}, {"$not": {...}}

Keys at one level are AND-ed. Values are str, int, float or bool (a field's declared type; an
int field accepts float bounds in ranges, a float field int values). ``$ne`` / ``$nin`` hold for
memories without the field. On an undeclared key a value may be of any kind in each memory:
ranges hold between numbers (never bools) or between strs, equality never holds across kinds (a
declared field instead rejects a filter value of another type with a TypeError).
"""
from __future__ import annotations

import numpy as np

__all__ = ["parse", "evaluate", "matches", "source", "to_dict", "MAX_CONDITIONS", "MAX_IN_VALUES"]

OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")
#: Bounds of one filter (checked before anything is evaluated).
MAX_CONDITIONS = 1024
MAX_IN_VALUES = 100_000
_MAX_DEPTH = 16


def _scalar(v, where: str):
    if isinstance(v, (str, bool, int, float)) and not (isinstance(v, int) and not isinstance(v, bool)
                                                        and not -2**63 <= v < 2**63):
        return v
    raise TypeError(f"Filter.meta{where}: {v!r} ({type(v).__name__}) is not a str, int, float or bool")


def parse(spec, where: str = "", depth: int = 0, count=None) -> tuple:
    """A filter dict as a nested tuple ``("and" | "or" | "not", ...)`` / ``("cond", field, op, value)``.

    Raises TypeError / ValueError naming the place of a malformed part (an unknown operator, a
    non-list ``$in``, more than ``MAX_CONDITIONS`` conditions or ``MAX_IN_VALUES`` values).
    """
    count = count if count is not None else [0]
    if depth > _MAX_DEPTH:
        raise ValueError(f"Filter.meta{where}: nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(spec, dict):
        raise TypeError(f"Filter.meta{where} must be a dict, got {type(spec).__name__}")
    parts = []
    for key, val in spec.items():
        at = f"{where}[{key!r}]"
        if key in ("$and", "$or"):
            if not isinstance(val, list) or not val:
                raise TypeError(f"Filter.meta{at} must be a non-empty list of dicts")
            parts.append((key[1:], *(parse(v, f"{at}[{i}]", depth + 1, count) for i, v in enumerate(val))))
        elif key == "$not":
            parts.append(("not", parse(val, at, depth + 1, count)))
        elif not isinstance(key, str) or key.startswith("$"):
            raise ValueError(f"Filter.meta{at}: unknown operator {key!r} (use $and, $or, $not or a field name)")
        elif isinstance(val, dict):
            if not val:
                raise ValueError(f"Filter.meta{at}: an empty condition")
            for op, x in val.items():
                if op not in OPS:
                    raise ValueError(f"Filter.meta{at}: unknown operator {op!r}; one of {OPS}")
                if op in ("$in", "$nin"):
                    if not isinstance(x, (list, tuple, set, frozenset)):
                        raise TypeError(f"Filter.meta{at}[{op!r}] must be a list")
                    if len(x) > MAX_IN_VALUES:
                        raise ValueError(f"Filter.meta{at}[{op!r}] holds {len(x)} values; at most {MAX_IN_VALUES}")
                    x = tuple(_scalar(v, at) for v in x)
                elif op == "$exists":
                    if not isinstance(x, bool):
                        raise TypeError(f"Filter.meta{at}['$exists'] must be True or False")
                else:
                    x = _scalar(x, at)
                parts.append(("cond", key, op, x))
                count[0] += 1
        else:
            parts.append(("cond", key, "$eq", _scalar(val, at)))
            count[0] += 1
        if count[0] > MAX_CONDITIONS:
            raise ValueError(f"Filter.meta holds more than {MAX_CONDITIONS} conditions")
    if not parts:
        raise ValueError(f"Filter.meta{where}: an empty filter")
    return parts[0] if len(parts) == 1 else ("and", *parts)


def evaluate(tree: tuple, fields, n_rows: int, cache: dict | None = None) -> np.ndarray:
    """Boolean mask over rows ``[0, n_rows)`` (``fields``: the index's ``DocMetadata``; an
    undeclared key's records are decoded once per call)."""
    cache = {} if cache is None else cache
    kind = tree[0]
    if kind == "cond":
        return fields.field_mask(tree[1], tree[2], tree[3], n_rows, cache)
    if kind == "not":
        return ~evaluate(tree[1], fields, n_rows, cache)
    masks = [evaluate(t, fields, n_rows, cache) for t in tree[1:]]
    return np.logical_and.reduce(masks) if kind == "and" else np.logical_or.reduce(masks)


def to_dict(tree: tuple) -> dict:
    """The dict form of a parsed filter (``parse(to_dict(t)) == t``): what a client sends."""
    kind = tree[0]
    if kind == "cond":
        _, name, op, x = tree
        return {name: {op: list(x) if isinstance(x, tuple) else x}}
    if kind == "not":
        return {"$not": to_dict(tree[1])}
    return {f"${kind}": [to_dict(t) for t in tree[1:]]}


def _keys(tree: tuple):
    if tree[0] == "cond":
        yield tree[1]
    else:
        for t in tree[1:]:
            yield from _keys(t)


def source(tree: tuple, declared) -> str:
    """What a filter reads: ``"columns"`` (declared fields only), ``"records"`` (undeclared keys
    only) or ``"columns+records"``."""
    keys = set(_keys(tree))
    cols, recs = bool(keys & set(declared)), bool(keys - set(declared))
    return "columns+records" if cols and recs else "records" if recs else "columns"


def matches(tree: tuple, d: dict | None) -> bool:
    """The predicate for one metadata dict, in plain Python (the reference tests check against)."""
    kind = tree[0]
    if kind == "not":
        return not matches(tree[1], d)
    if kind in ("and", "or"):
        results = [matches(t, d) for t in tree[1:]]
        return all(results) if kind == "and" else any(results)
    _, name, op, x = tree
    v = (d or {}).get(name)
    has = v is not None
    if op == "$exists":
        return has == x
    if op in ("$ne", "$nin"):
        return not (has and any(_eq(v, y) for y in (x if op == "$nin" else (x,))))
    if not has:
        return False
    if op in ("$eq", "$in"):
        return any(_eq(v, y) for y in (x if op == "$in" else (x,)))
    num = (int, float)
    if not ((isinstance(v, num) and isinstance(x, num) and not isinstance(v, bool) and not isinstance(x, bool))
            or (isinstance(v, str) and isinstance(x, str))):
        return False  # ranges never compare across kinds
    return {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op]


def _eq(v, x) -> bool:
    return v == x and (type(v) is bool) == (type(x) is bool)
