"""Every bound a caller controls, in one place (layer 0: every room imports it, it imports nothing).

A bound is checked before anything is allocated or written, so an absurd request fails at once
with a ``ValueError`` naming the limit (``MemoryIndex(2**40)`` asked for 1 TiB; a store of dim
65537 was created and then refused by every open). The store format, the library, the CLI, the
server and the Ray ingest read the same numbers from here.

Store format
    * :data:`MAX_ROWS` -- rows (memories, deleted ones included) of one store: row numbers are
      ``uint32`` in the roaring bitmaps (tags, tombstones, filters) and the sparse arena, whose
      ``0xFFFFFFFF`` means "no row"; so rows are ``0 .. 2**32 - 2`` and a row count fits ``uint32``.
    * :data:`MAX_DIM` -- the embeddings' dimension (a manifest beyond it is refused on open).
    * :data:`MAX_DIM_OUT` -- the projected dimension at most (the rule is ``vectors.policy.dim_out_for``).
    * :data:`MAX_NAMESPACES`, :data:`MAX_NAMESPACE_BYTES` -- namespaces of one store, a name's length.
    * :data:`MAX_DRIFT_TAGS` -- tags with a per-tag drift reference; :data:`MAX_NLIST` -- IVF lists a
      trial may ask for.
Searches
    * :data:`MAX_K` (results per query), :data:`MAX_QUERIES` (queries per call),
      :data:`MAX_RESULTS` (``queries x k`` per call), :data:`MAX_NPROBE`, :data:`MAX_RERANK`.
Ingest
    * :data:`MAX_INGEST_BATCH` rows per prepared batch, :data:`MAX_JSON_DEPTH` nesting of one
      JSON record.
Server
    * :data:`MAX_SERVE_BATCH` (``--max-batch``), :data:`MAX_BODY_MB` (``--max-body-mb``),
      :data:`MAX_WORKERS`, :data:`MAX_CONNECTIONS`, :data:`MAX_QUEUE`,
      :data:`MAX_REQUEST_VECTORS`, :data:`MAX_REQUEST_RESULTS`, :data:`MAX_REQUEST_IDS`.
"""
from __future__ import annotations

__all__ = [
    "MAX_LINEAGE",
    "MAX_LINKED_PER_QUERY",
    "MAX_LINK_BATCH",
    "MAX_LINK_DEPTH",
    "MAX_LINK_KINDS",
    "MAX_LINK_KIND_BYTES",
    "MAX_NEAR_DEDUP_WINDOW",
    "MAX_BODY_MB",
    "MAX_CONNECTIONS",
    "MAX_DIM",
    "MAX_DIM_OUT",
    "MAX_FILTER_TAGS",
    "MAX_ID",
    "MAX_INGEST_BATCH",
    "MAX_JSON_DEPTH",
    "MAX_K",
    "MAX_NAMESPACES",
    "MAX_NAMESPACE_BYTES",
    "MAX_NPROBE",
    "MAX_QUERIES",
    "MAX_QUEUE",
    "MAX_RANK_WEIGHT",
    "MAX_REQUEST_IDS",
    "MAX_REQUEST_RESULTS",
    "MAX_REQUEST_VECTORS",
    "MAX_RERANK",
    "MAX_RESULTS",
    "MAX_ROWS",
    "MAX_SEARCH_THREADS",
    "MAX_SERVE_BATCH",
    "MAX_WORKERS",
    "MIN_ID",
    "check_dim",
    "is_int",
    "MAX_DRIFT_TAGS",
    "MAX_NLIST",
]

# -- the store format ------------------------------------------------------------------------------
#: Most rows of one store (row numbers ``0 .. MAX_ROWS - 1`` are ``uint32``; ``2**32 - 1`` is "none").
MAX_ROWS = 2**32 - 1
#: Largest embedding dimension a store holds.
MAX_DIM = 65536
#: Projected dimension at most (the ANN codes and the device mirror live in this space).
MAX_DIM_OUT = 512
#: Most namespaces one store names (``uint32`` per row; a name costs its key-table entry), and the
#: longest name (UTF-8 bytes).
MAX_NAMESPACES = 1 << 24
MAX_NAMESPACE_BYTES = 256
#: Most tags with a per-tag drift reference (``monitor/tagdrift.py``; ``tags x dim`` float32 each).
MAX_DRIFT_TAGS = 16384
#: Most IVF lists a trial or a config may ask for (``MemoryIndex.trial(nlist=)``).
MAX_NLIST = 1 << 20
#: Ids on every interface are int64.
MIN_ID, MAX_ID = -(2**63), 2**63 - 1

# -- searches --------------------------------------------------------------------------------------
#: Largest ``k`` of one search (more is an export, not a search: iterate ids with ``get``).
MAX_K = 100_000
#: Most queries in one search call (far past what saturates a GPU; split larger sets).
MAX_QUERIES = 1_000_000
#: Most results (``queries x k``) of one search call: 1.2 GB of int64 ids and float32 scores.
MAX_RESULTS = 100_000_000
#: Largest ``k`` of a search with ``diversity`` (MMR compares each pick with ``max(4k, 50)``
#: candidates: ``k`` rounds over ``4k`` rows per query).
MAX_MMR_K = 1024
#: Most IVF lists visited / candidates re-scored per result in one search.
MAX_NPROBE = 1 << 20
MAX_RERANK = 1 << 20
#: Most tags in one of a ``Filter``'s tag lists (``tags_all``, ``tags_any``, ``tags_none``).
MAX_FILTER_TAGS = 4096
#: Largest ``max_content_bytes`` a store may be created with (one memory's encoded content).
MAX_CONTENT_BYTES = 1 << 30
#: Largest weight of a ``Rank`` term: scores stay finite in float32 (3.4e38) with room to add.
MAX_RANK_WEIGHT = 1e6

# -- ingest ----------------------------------------------------------------------------------------
#: Rows per prepared ingest batch (the unit of checking and of the encoder's calls).
MAX_INGEST_BATCH = 1 << 18
#: Deepest nesting of one JSON record (a line of JSONL); deeper is refused before it is parsed.
MAX_JSON_DEPTH = 64

# -- the server ------------------------------------------------------------------------------------
#: Upper bound of ``--max-batch`` (queries merged into one search).
MAX_SERVE_BATCH = 65_536
#: Upper bound of ``--max-body-mb``.
MAX_BODY_MB = 4096
#: Upper bounds of ``--workers``, ``--max-connections`` and ``--max-queue`` (queries waiting).
MAX_WORKERS = 256
#: Upper bound of ``--search-threads`` (batches one server process searches at once).
MAX_SEARCH_THREADS = 64
MAX_CONNECTIONS = 1 << 20
MAX_QUEUE = 1 << 24
#: Most vectors in one search or add request.
MAX_REQUEST_VECTORS = 65_536
#: Most results (vectors x k) in one search answer.
MAX_REQUEST_RESULTS = 1_000_000
#: Most ids in one lookup or delete request.
MAX_REQUEST_IDS = 100_000
#: The dashboard's search (/v1/dashboard/search): most results, most characters of a query text.
MAX_UI_K = 100
MAX_UI_TEXT = 10_000
#: Most links made or removed by one ``link`` / ``unlink`` call (one log record each).
MAX_LINK_BATCH = 1_000_000
#: Most hops of ``lineage(depth=)`` and ``search(follow_links=)``.
MAX_LINK_DEPTH = 16
#: Longest link kind name (UTF-8 bytes), and most kinds one index interns (codes are uint16).
MAX_LINK_KIND_BYTES = 64
MAX_LINK_KINDS = 4096
#: Most ids ``lineage`` returns, and most linked memories ``follow_links`` adds to one query.
MAX_LINEAGE = 1_000_000
MAX_LINKED_PER_QUERY = 1024
#: Most memories ``add(dedup="near")`` compares with each other inside one batch (the in-batch
#: comparison is quadratic: larger batches are compared in windows of this size).
MAX_NEAR_DEDUP_WINDOW = 65_536


def is_int(v) -> bool:
    """``v`` is an integer (Python or numpy) and not a bool (``True`` is not ``k=1``)."""
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_dim(dim, name: str = "dim") -> int:
    """An embedding dimension: an int in ``1..MAX_DIM`` (checked before anything is allocated
    or written, so no store is created that no open would accept)."""
    if not is_int(dim) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"{name} must be a positive int, at most {MAX_DIM:,} (the store format's bound, "
                         f"lukhas_gpu.util.bounds.MAX_DIM), got {dim!r}")
    return int(dim)


def check_max_content_bytes(value, name: str = "max_content_bytes") -> int | None:
    """``None`` (the default) or an int in ``1..MAX_CONTENT_BYTES``."""
    if value is not None and (not is_int(value) or not 1 <= value <= MAX_CONTENT_BYTES):
        raise ValueError(f"{name} must be in [1, {MAX_CONTENT_BYTES:,}], got {value!r}")
    return value
