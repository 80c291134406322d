"""Constants of the model test (``model_store.py``): sizes, value pools, the known defects, op weights."""
from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 16
NLIST = 16
T0 = 1_600_000_000
TAGS = ("a", "b", "c", "d", "e")
WORDS = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta")
USERS = ("u0", "u1", "u2", "u3")
#: Namespaces of the model test ("" the default; "zz" never given: searches in it find nothing).
NAMESPACES = ("", "n1", "n2", "ü3")
#: Validity windows: bounds before the test's clock (T0 + ...: expired), after it (FAR) or open.
FAR = 4_000_000_000.0
FIELDS = {"user": "str", "turn": "int", "score": "float", "flag": "bool"}
KINDS = ("rows", "str", "int")
#: Defects the driver steers around (none today). The numbers it knows: 1 memories added after a
#: delete not found by the IVF; 2 recover after a rollback drops acknowledged writes; 3 a second
#: rollback returns to the generation rolled away from; 9 search_text / hybrid with
#: Filter(meta=...) raise; 11 a reader resumes a replaced log that reused the old file's inode at
#: its old offset. All fixed; each keeps its regression repro in tests/test_model.py.
KNOWN_DEFECTS = frozenset()
ALL_OPS = ("add", "bulk", "delete", "update", "bad", "compact", "checkpoint", "reopen", "rollback", "recover",
           "refresh", "lag", "crash", "proc", "sharded", "retrain", "drop", "purge", "dedup_add", "link", "unlink",
           "tune", "trial", "concurrent")
#: The candidate structures a ``tune`` op forces (``tune(structure=)``), so every route meets each.
STRUCTURES = ("graph", "rabitq", "ivf-spill", "ivf", "exact")
WEIGHTS = {"add": 10, "bulk": 2, "delete": 7, "update": 7, "bad": 2, "compact": 1, "checkpoint": 2, "reopen": 2,
           "rollback": 1.5, "recover": 1, "refresh": 2, "lag": 1, "crash": 1, "proc": 0.3, "sharded": 0.5,
           "retrain": 0.7, "drop": 0.7, "purge": 0.7, "dedup_add": 4, "link": 4, "unlink": 2, "tune": 0.7,
           "trial": 0.7, "concurrent": 1}
