"""The index as a durable store: write a generation from the parts, rebuild the parts from one,
replay the write-ahead log, roll back, verify. The facade's ``create``/``open``/``checkpoint``/
``save``/``rollback``/``verify`` are thin calls into here; file names come from
:mod:`lukhas_gpu.store.layout`, bytes from each component's own ``to_arrays()``."""
from __future__ import annotations

import json
import logging
import pathlib

import numpy as np

from ..config import IndexConfig
from ..records.contents import ContentArena
from ..records.docmeta import DocMetadata
from ..records.idmap import IdMap
from ..records.metadata import MetadataColumns
from ..records.tags import TagIndex
from ..records.tombstones import Tombstones
from ..store import layout, lineage
from ..store.persist import GenerationReader, write_generation
from ..store.walcodec import OP_ADD, OP_DELETE, OP_UPDATE  # re-exported: the facade's and the reader's names
from ..store.walreader import WalHeaderError
from ..util.bounds import check_dim
from ..util.device import faiss_module
from ..util.ids import as_ids
from ..vectors.ann import DEAD_ENTRIES
from ..vectors.store import CRC_BLOCK_ROWS
from . import candidates, ivflists, links_parts, loadchecks, scope_parts, sparse_parts, writecount
from .trials import OP_TRIAL, apply_report, trial_reports

log = logging.getLogger(__name__)

__all__ = ["OP_ADD", "OP_UPDATE", "OP_DELETE", "create", "open_store", "close", "write", "load", "replay_wal",
           "reset_wal", "apply_record", "rollback", "recover", "salvage_wal", "log_summary"]


def create(index_cls, path, dim: int, config):
    """``MemoryIndex.create``: a new store at ``path``, open for writing (lock held)."""
    path = pathlib.Path(path)
    check_dim(dim)  # before the first byte is written: a store no open would accept is never made
    if (path / layout.CURRENT).exists():
        raise layout.StoreError(f"{path} already holds a store; use MemoryIndex.open({str(path)!r}, mode='w')")
    path.mkdir(parents=True, exist_ok=True)
    lock = layout.acquire_lock(path)
    try:
        index = index_cls(dim, config)
        index.path, index.mode, index.state.store_lock = path, "w", lock
        index.checkpoint()
    except BaseException:
        lock.release()
        raise
    return index


def open_store(index_cls, path, mode: str, *, verify: bool, salvage: bool = False, recover: bool = False):
    """``MemoryIndex.open(mode="w")``: the published generation plus the log replayed (a reader,
    ``mode="r"``, opens through :func:`.reader.open_reader`, which imports this module).

    ``recover`` (writer only): if ``CURRENT`` or its generation is damaged, publish the newest
    generation that verifies completely first (see :func:`recover`). ``salvage`` (writer only):
    a log corrupted in the middle is salvaged (see :func:`salvage_wal`) instead of refused.
    """
    if mode not in ("r", "w"):
        raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
    if (salvage or recover) and mode != "w":
        raise ValueError("salvage=True and recover=True repair the store: they need mode='w'")
    if mode == "r":
        raise ValueError("a reader opens through reader.open_reader (MemoryIndex.open(mode='r'))")
    path = pathlib.Path(path)
    if not recover:
        layout.current_generation(path)  # a clear error before taking any lock
    lock = layout.acquire_lock(path)
    try:
        if recover:
            _recover_locked(path, only_if_needed=True)
        else:  # a committed rollback finished, an absorbed log dropped, an unexplained one refused
            try:
                lineage.settle(path)
            except WalHeaderError:  # a damaged log header: replay_wal salvages it when asked
                if not salvage:
                    raise
        gen_dir = layout.current_generation(path)  # read under the lock: no checkpoint races it
        index, _ = load(index_cls, path, gen_dir, writable=mode == "w", checksums=True if verify else "small")
        index.path, index.mode = path, mode
        if mode == "w":
            index.state.store_lock = lock
            replay_wal(index, salvage=salvage)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return index


def close(index, *, checkpoint: bool) -> None:
    """``MemoryIndex.close``: a writer checkpoints what its log holds (``checkpoint``), then
    releases the log and the lock whatever happened; a reader just stops."""
    if index.mode == "w" and index.path is not None:
        try:
            if checkpoint and index.state.wal is not None and _log_holds_records(index):
                index.checkpoint()
        finally:
            if index.state.wal is not None:
                index.state.wal.close()
                index.state.wal = None
            layout.release_lock(index.path)
    index.mode = None


def _log_holds_records(index) -> bool:
    """Whether a writer's log holds records to checkpoint at close; a log left unusable by an I/O
    error is not checkpointed over (its records are replayed by the next writer's open)."""
    try:
        return len(index.state.wal) > 0
    except RuntimeError as e:
        log.warning("close(): no checkpoint, the write-ahead log is unusable (%s); reopen the store to "
                    "replay it", e)
        return False


def write(index, root) -> pathlib.Path:
    """Write every part of ``index`` as a new generation of the store at ``root`` and publish it."""
    parts = index.parts
    parts.vectors.flush()
    arena = parts.contents.to_arrays()
    raw = {layout.VECTORS: parts.vectors.array, layout.CONTENT: arena.pop("buffer")}
    npz = {layout.CONTENT_INDEX: arena, layout.METADATA: parts.meta.to_arrays(), layout.TAGS: parts.tags.to_arrays(),
           layout.ENCODER: parts.encoder_to_arrays(), layout.PROBE: parts.probe.to_arrays(),
           layout.DRIFT: parts.drift.to_arrays(), layout.TAG_DRIFT: parts.tagdrift.to_arrays(),
           layout.TRIALS: {"json": np.frombuffer(json.dumps(parts.trials).encode(), dtype=np.uint8)},
           layout.VECTOR_CRCS: {"block_rows": np.array(CRC_BLOCK_ROWS), "crcs": parts.vectors.block_crcs()}}
    if parts.calib is not None:
        npz[layout.CALIBRATION] = {"rows": parts.calib}
    if parts.tuned is not None:
        npz[layout.TUNING] = parts.tuned.to_arrays()
    if (stage := candidates.persist(parts)) is not None:
        npz[layout.STAGE] = stage
    if parts.idmap is not None:
        npz[layout.IDMAP] = parts.idmap.to_arrays()
    if parts.docmeta.starts is not None or parts.docmeta.fields:  # optional: only once used
        npz[layout.DOCMETA] = parts.docmeta.to_arrays()
    sp_raw, sp_npz = sparse_parts.persist(parts)
    raw.update(sp_raw)
    npz.update(sp_npz)
    npz.update(scope_parts.persist(parts))
    npz.update(links_parts.persist(parts))
    writers, ann = {}, None
    if parts.ann is not None:
        a = parts.ann
        writers[layout.ANN] = lambda path: faiss_module().write_index(a.index, path)
        ann = {"nlist": a.nlist, "pq_m": a.pq_m, "coarse": a.coarse, "dead": DEAD_ENTRIES}
    manifest = {"dim": index.dim, "rows": parts.rows, "count": parts.live, "config": index.config.to_dict(),
                "ann": ann, "writes": writecount.count(index), **_lineage_fields(index, pathlib.Path(root))}
    gen = write_generation(root, raw=raw, npz=npz, blobs={layout.TOMBSTONES: parts.tombstones.to_bytes()},
                           writers=writers, manifest=manifest)
    if index.path is not None and pathlib.Path(index.path) == pathlib.Path(root):
        # the writer's rows and content records become the files just published (read back
        # against their CRCs): page cache instead of anonymous RAM; published files are never
        # rewritten in place
        crcs = npz[layout.VECTOR_CRCS]
        try:
            parts.vectors.rebase(gen / layout.VECTORS, crcs["crcs"], int(crcs["block_rows"]))
            parts.contents.rebase(gen / layout.CONTENT)
        except OSError as e:  # published all the same: these stay in anonymous RAM until the next one
            log.warning("checkpoint %s: the rows or records stay in anonymous memory (%s)", gen.name, e)
    return gen


def _lineage_fields(index, root: pathlib.Path) -> dict:
    """The new generation's ``parent`` (the published one: the writer holds the lock) and the id of
    the log it absorbs (the writer's, or the log a salvage is replaying); see store/lineage.py."""
    if not (root / layout.CURRENT).exists():
        return {"parent": None, "log_id": None}
    parent = layout.generation_number(layout.current_generation(root))
    log_id = None
    if index.path is not None and pathlib.Path(index.path) == root:
        log_id = (index.state.wal.log_id if index.state.wal is not None
                  else (lineage.wal_header(root) or (None, None))[1])
    return {"parent": parent, "log_id": log_id}


def load(index_cls, root, gen_dir, *, writable: bool, checksums="small", private: bool = False):
    """Rebuild an index from ``gen_dir``: ``(index, manifest)``. Bulk arrays are memory-mapped.

    A writable index maps the vectors file copy-on-write and keeps its appends in its own memory,
    as a ``private`` one (a reader replaying the log) does; under ``vector_storage="mmap"`` it
    works on a copy of the file (``root/vectors.work``). Appends never touch a published
    generation.
    """
    gen = GenerationReader(gen_dir, checksums=checksums)  # the manifest's bounds checked before any use
    manifest = gen.manifest
    try:
        config = IndexConfig.from_dict(manifest["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise layout.CorruptStoreError(gen.path / layout.MANIFEST, f"has an invalid config ({e})") from None
    dim, rows = int(manifest["dim"]), int(manifest["rows"])
    vec_file = gen.file(layout.VECTORS)
    if vec_file.stat().st_size != rows * dim:
        raise layout.CorruptStoreError(vec_file, f"holds {vec_file.stat().st_size} bytes, expected {rows} x {dim}")
    vectors = loadchecks.attach_vectors(root, gen, config, dim, rows, writable=writable, checksums=checksums,
                                        private=private)
    index = index_cls(dim, config, _vectors=vectors)
    parts = index.parts

    def part(name, build):  # a file whose arrays do not fit together is named
        try:
            return build()
        except (ValueError, KeyError) as e:
            raise layout.CorruptStoreError(gen.path / name, f"inconsistent arrays ({e})") from None

    def contents():
        arena = gen.npz(layout.CONTENT_INDEX)
        arena["buffer"] = gen.raw(layout.CONTENT)
        out = ContentArena.from_arrays(arena, max_content_bytes=config.max_content_bytes)
        out.source = str(gen.file(layout.CONTENT))  # what a record failing its CRC names
        return out

    parts.contents = part(layout.CONTENT_INDEX, contents)
    parts.meta = part(layout.METADATA, lambda: MetadataColumns.from_arrays(gen.npz(layout.METADATA)))
    parts.tags = part(layout.TAGS, lambda: TagIndex.from_arrays(gen.npz(layout.TAGS)))
    if gen.has(layout.DOCMETA):
        parts.docmeta = part(layout.DOCMETA, lambda: DocMetadata.from_arrays(gen.npz(layout.DOCMETA), config.fields))
    else:  # a store without metadata yet (or older than it): rows without any
        parts.docmeta.append(None, rows)
    if config.external_ids:
        parts.idmap = part(layout.IDMAP, lambda: IdMap.from_arrays(gen.npz(layout.IDMAP)))
        if parts.idmap.kind != config.external_ids:
            raise layout.CorruptStoreError(gen.path / layout.IDMAP, f"holds {parts.idmap.kind} ids, the config says "
                                                                    f"{config.external_ids}")
    scope_parts.load(parts, gen, rows)
    try:
        sparse_parts.load(parts, gen)
    except (ValueError, KeyError) as e:  # arrays that do not fit together: name the generation
        raise layout.CorruptStoreError(gen.path, f"inconsistent sparse or text files ({e})") from None
    try:
        parts.tombstones = Tombstones.from_bytes(gen.bytes(layout.TOMBSTONES))
    except Exception as e:
        raise layout.CorruptStoreError(gen.path / layout.TOMBSTONES, f"unreadable ({e})") from None
    links_parts.load(parts, gen, rows)
    parts.encoder_arrays, parts.absorbed_writes = gen.npz(layout.ENCODER), writecount.absorbed(manifest)
    if gen.has(layout.CALIBRATION):
        parts.calib = gen.npz(layout.CALIBRATION)["rows"]
    if manifest.get("ann"):
        from ..vectors.ann import IVFPQIndex

        a = manifest["ann"]
        faiss_index = faiss_module().read_index(str(gen.file(layout.ANN)))
        parts.ann = IVFPQIndex.from_faiss(faiss_index, nlist=a["nlist"], pq_m=a["pq_m"], coarse=a["coarse"],
                                          seed=config.seed)
    _load_monitoring(parts, gen)  # after the IVF: a spilled stage is bound to it
    loadchecks.check_loaded(parts, gen, rows, int(manifest["count"]))  # every row-indexing array, named
    if parts.ann is not None:
        ivflists.repair(index, a)  # a generation saved when deletes removed entries from the lists
    return index, manifest


def _load_monitoring(parts, gen) -> None:
    """The recall probe, the drift history and the tuned setting, where the generation has them."""
    try:  # stores written before the probe existed have neither file: they start empty
        if gen.has(layout.PROBE):
            parts.probe.load_arrays(gen.npz(layout.PROBE))
        if gen.has(layout.DRIFT):
            parts.drift.load_arrays(gen.npz(layout.DRIFT))
        if gen.has(layout.TAG_DRIFT):  # older generations: no reference yet
            parts.tagdrift.load_arrays(gen.npz(layout.TAG_DRIFT))
        if gen.has(layout.TRIALS):
            parts.trials = trial_reports(gen.npz(layout.TRIALS)["json"])
        if gen.has(layout.TUNING):
            from .tuning import Tuned
            parts.tuned = Tuned.from_arrays(gen.npz(layout.TUNING))
        candidates.load(parts, gen.npz(layout.STAGE))
    except (KeyError, ValueError) as e:
        raise layout.CorruptStoreError(gen.path, f"inconsistent probe, drift, trials or tuning files ({e})") from None


# -- the write-ahead log --------------------------------------------------------------------------
def reset_wal(index, base: int) -> None:
    """Start an empty log that follows generation ``base`` (after a checkpoint)."""
    from ..store.wal import WriteAheadLog

    if index.state.wal is None:
        wal_path = index.path / layout.WAL
        wal_path.unlink(missing_ok=True)  # only at create: nothing to keep
        index.state.wal = WriteAheadLog(wal_path, base=base, sync=index.config.wal_sync, lock=False)
    else:  # the count the generation absorbed stays the store's
        writes = writecount.count(index)
        index.state.wal.reset(base)
        writecount.log_checkpoint(index, writes)


def replay_wal(index, *, salvage: bool = False) -> None:
    """Apply the operations logged since the published generation, then keep logging.

    A torn tail (a crash mid-append: that call never returned; nothing valid after it) is cut,
    never replayed. A bad record *followed by valid ones* is corruption: CorruptStoreError naming
    the log, the offset and the sequence numbers, nothing changed -- unless ``salvage``
    (:func:`salvage_wal`). The store is settled first (:func:`lineage.settle`): a log that does not
    follow the published generation is refused here, never dropped. A last record within the file
    failing its CRC is kept aside by the log's open (``wal.log.tail-damaged-*``); a header failing
    its CRC is CorruptStoreError unless ``salvage`` (:mod:`.salvage`).
    """
    from ..store.wal import WalHeaderError, WalReader, WriteAheadLog, check_torn_tail
    from . import salvage as salvage_

    wal_path = index.path / layout.WAL
    base = layout.generation_number(layout.current_generation(index.path))
    applied = 0
    if wal_path.exists():
        try:
            reader = WalReader(wal_path)
        except WalHeaderError:  # a damaged header: CorruptStoreError naming the log, unless salvaged
            if not salvage:
                raise
            return salvage_.salvage_header(index, base, replay_wal)
        with reader:
            if reader.base != base:
                raise layout.CorruptStoreError(wal_path, f"follows generation {reader.base}, the store is at {base}; "
                                                         "nothing was changed")
            for rec in reader:
                apply_record(index, rec.op, rec.fields)
                applied += 1
        if reader.torn:
            try:
                check_torn_tail(wal_path, reader.valid_end, reader.file_size)
            except layout.CorruptStoreError as e:
                if not salvage:
                    raise
                salvage_wal(index, applied, e.damage)
                salvage_.salvage_tails(index)
                return
    # a damaged last record (within the file, failing its CRC) is kept aside by the log's open
    index.state.wal = WriteAheadLog(wal_path, base=base, sync=index.config.wal_sync, lock=False)
    if salvage:
        salvage_.salvage_tails(index)
    if applied:
        log.info("replayed %d logged operations from %s", applied, wal_path)


def salvage_wal(index, applied: int, damage) -> dict:
    """Keep every valid record of a log corrupted in the middle, and say exactly what was lost.

    The ``applied`` records before the first damage are already in ``index``. The valid records
    after each damaged place are replayed; every add record carries its first id, so a lost add
    shows as a gap, which is filled with deleted placeholder rows (ids are row numbers: later
    records keep their ids). Then a checkpoint publishes the result, the damaged log is moved
    aside (``wal.log.damaged-<time>``, never deleted) and a new log starts. Returns (and sets as
    ``index.salvage_report``) ``{"log", "moved_to", "kept", "damaged", "lost_ids", "lost_records",
    "generation"}``; ``lost_ids`` are ``[first, last]`` ranges of ids that were acknowledged and
    are gone.
    """
    from ..store.wal import WalReader, WriteAheadLog, decode_fields, move_aside

    wal_path = index.path / layout.WAL
    lost_ids, lost_records, kept = [], [], applied
    with WalReader(wal_path, decode=False, resync=True) as reader:
        for rec in reader:
            if rec.seq < applied:
                continue
            fields = decode_fields(rec.fields)
            try:
                if rec.op == OP_ADD and "start" in fields:
                    gap = int(fields["start"]) - index.parts.rows
                    if gap < 0:
                        raise ValueError(f"it starts at id {fields['start']}, below the {index.parts.rows} rows")
                    if gap:
                        lost_ids.append([index.parts.rows, index.parts.rows + gap - 1])
                        _placeholders(index, gap)
                apply_record(index, rec.op, fields)
                kept += 1
            except (ValueError, KeyError) as e:  # e.g. an update of an id whose add was lost
                lost_records.append(f"record {rec.seq} (op {rec.op}): {e}")
    damaged = [d.describe() for d in reader.damage]
    writecount.log_checkpoint(index, index.parts.absorbed_writes + kept)  # no log while the generation is written
    gen = write(index, index.path)  # everything kept, published before the log is touched
    moved = move_aside(wal_path)
    number = layout.generation_number(gen)
    index.state.wal = WriteAheadLog(wal_path, base=number, sync=index.config.wal_sync, lock=False)
    report = {"log": str(wal_path), "moved_to": moved, "kept": kept, "damaged": damaged, "lost_ids": lost_ids,
              "lost_records": lost_records, "generation": gen.name}
    if not lost_ids:
        report["note"] = ("no add record after the damage: the damaged records' ids (if they were adds) are "
                          f"from {index.parts.rows} on and are not in the store")
    index.salvage_report = report
    log.warning("salvaged %s: kept %d records, damaged %s, lost ids %s, skipped %s; the damaged log is at %s; "
                "published %s", wal_path, kept, damaged, lost_ids, lost_records, moved, gen.name)
    return report


def _placeholders(index, n: int) -> None:
    """``n`` deleted rows standing in for memories whose add record was lost (ids stay rows)."""
    x = np.zeros((n, index.dim), np.float32)
    x[:, 0] = 1.0
    start = index.parts.rows
    apply_record(index, OP_ADD, {"x": x, "contents": None, "tags": None, "ts": None, "imp": None})
    apply_record(index, OP_DELETE, {"ids": np.arange(start, start + n, dtype=np.int64)})


def apply_record(index, op: int, f: dict) -> None:
    """Apply one logged operation through the write paths of :mod:`.writes` (validated again,
    never logged again): the writer's replay and a reader's (:mod:`.reader`) end in one state."""
    from . import extids, writes

    if op == OP_ADD:
        if "start" in f and int(f["start"]) != index.parts.rows:
            raise layout.CorruptStoreError(index.path / layout.WAL, f"an add record starts at id {f['start']}, "
                                                                    f"but {index.parts.rows} rows precede it")
        meta = extids.Logged(f["meta"]) if f.get("meta") is not None else None  # optional fields
        n = len(np.atleast_2d(f["x"]))
        writes.commit_add(index, writes.prepare_add(index, f["x"], f["contents"], f["tags"], f["ts"], f["imp"],
                                                    ids=f.get("ext", extids.NO_IDS), metadata=meta,
                                                    sparse=sparse_parts.from_fields(f, n), into=f.get("into"),
                                                    dedup="off",  # the logged decision, never a new one
                                                    **scope_parts.from_fields(f, n)))
    elif op == OP_UPDATE:
        rows = index.parts.tombstones.check(as_ids(f["ids"]), index.parts.rows)
        meta = extids.Logged(f["meta"]) if f.get("meta") is not None else None
        writes.apply_update(index, writes.prepare_update(index, rows, f["contents"], f["tags"], f["ts"], f["imp"],
                                                         embeddings=f.get("x"), metadata=meta,
                                                         **scope_parts.from_fields(f, len(rows))))
    elif op == OP_DELETE:
        writes.apply_delete(index, writes.prepare_delete(index, f["ids"]))
    elif op in links_parts.LINK_OPS:
        links_parts.apply_record(index, op, f)
    elif op == OP_TRIAL:  # a rolled-back trial's report
        apply_report(index.parts, f)
    else:
        raise layout.CorruptStoreError(index.path / layout.WAL, f"unknown operation {op}")


def log_summary(wal_path) -> dict:
    """What a log holds: ``{"base", "records", "memories" (added), "updates", "deletes"}``
    (valid records, across any damage)."""
    from ..store.wal import WalReader

    out = {"records": 0, "memories": 0, "updates": 0, "deletes": 0}
    with WalReader(wal_path, resync=True) as reader:
        out["base"] = reader.base
        for rec in reader:
            out["records"] += 1
            if rec.op == OP_ADD:
                out["memories"] += len(np.atleast_2d(rec.fields["x"]))
            elif rec.op == OP_UPDATE:
                out["updates"] += 1
            elif rec.op == OP_DELETE:
                out["deletes"] += 1
    return out


def rollback(path, *, discard_log: bool = False) -> pathlib.Path:
    """Publish the parent of the published generation of the closed store at ``path`` again (its
    lineage: a second rollback goes further back, never to the generation rolled away from).

    The target is verified first (every file's size and CRC-32): a damaged one is refused with
    CorruptStoreError naming the file, ``CURRENT`` unchanged. Acknowledged records in the log
    (which follow the current generation, not the target) make it refuse too, saying how many,
    unless ``discard_log``: the log is then kept aside (``wal.log.discarded-<time>``), never
    deleted. The switch is one atomic step (:func:`lineage.commit_rollback`): a crash at any point
    leaves the store at the old generation with its log, or at the target with an empty log.
    """
    path = pathlib.Path(path)
    lock = layout.acquire_lock(path)
    try:
        head = lineage.settle(path)
        cur = path / layout.generation_name(head.number)
        prev = layout.previous_generation(path)
        if prev is None:
            parent = layout.parent_number(path, head.number)
            raise layout.StoreError(f"{path} has no previous generation to roll back to ({cur.name} " + (
                "is its first)" if parent is None else f"was checkpointed from {layout.generation_name(parent)}, "
                                                       "which is no longer kept)"))
        layout.check_files(prev, layout.read_manifest(prev), checksums=True)
        wal_path = path / layout.WAL
        summary = log_summary(wal_path) if head.log_follows else {"records": 0}
        if summary["records"] and not discard_log:
            raise layout.StoreError(
                f"{wal_path} holds {summary['records']} acknowledged records ({summary['memories']} memories "
                f"added, {summary['updates']} updates, {summary['deletes']} deletes) logged after {cur.name}; "
                f"rolling back to {prev.name} would drop them. Open and checkpoint the store to keep them, "
                "or pass discard_log=True (lukhas-gpu rollback --discard-log): the log is then moved aside")
        moved = lineage.commit_rollback(path, layout.generation_number(prev), keep_log=bool(summary["records"]))
        if moved:
            log.warning("rollback of %s: %d acknowledged records (%d memories) dropped; the log is kept at %s",
                        path, summary["records"], summary["memories"], moved)
        return prev
    finally:
        lock.release()


def recover(path) -> dict:
    """Publish the newest generation of the lineage of the closed store at ``path`` that verifies
    completely (every file's size and CRC-32), whatever ``CURRENT`` holds; see
    :func:`_recover_locked`."""
    path = pathlib.Path(path)
    lock = layout.acquire_lock(path)
    try:
        return _recover_locked(path, only_if_needed=False)
    finally:
        lock.release()


def _published(path: pathlib.Path) -> int | None:
    try:
        return layout.generation_number(layout.current_generation(path))
    except layout.StoreError:
        return None


def _recover_locked(path: pathlib.Path, *, only_if_needed: bool) -> dict:
    """Returns ``{"generation", "was", "changed", "skipped": [why each newer one was], "log", "problem"}``.

    The chain walked starts where the store is (:func:`lineage.settle`) or, when ``CURRENT``,
    its manifest or the log's place in the lineage is damaged, where the log says it is
    (:func:`lineage.head_from_log`: the acknowledged records live there), and goes from parent to
    parent (a generation whose manifest is unreadable: the previous number); abandoned branches
    are never candidates. A log that does not follow the generation chosen (nor was absorbed by it)
    cannot be replayed on it: it is moved aside (``wal.log.unapplied-<time>``), counted in ``"log"``.
    """
    was, why = _published(path), None
    try:
        start = lineage.settle(path).number
    except layout.StoreError as e:
        why, start = str(e), lineage.head_from_log(path)
        start = start if start is not None else was
    if start is None:  # neither CURRENT nor the log names one: the newest (the lineage is unknown)
        start = (layout.generations(path) or [None])[-1]
    if only_if_needed and why is None:
        try:
            gen_dir = path / layout.generation_name(start)
            layout.check_files(gen_dir, layout.read_manifest(gen_dir), checksums=True)
            return {"generation": gen_dir.name, "was": was and layout.generation_name(was), "changed": start != was,
                    "skipped": [], "log": None, "problem": None}
        except layout.StoreError as e:
            why = str(e)
    chosen, skipped = _first_verified(path, start)
    report = {"generation": layout.generation_name(chosen), "was": None if was is None else layout.generation_name(was),
              "changed": chosen != was, "skipped": skipped, "log": None, "problem": why}
    report["log"] = _set_log_aside(path, chosen)
    if chosen != was:
        layout.publish(path, layout.generation_name(chosen))
    (log.warning if report["changed"] or report["log"] else log.info)(
        "recovered %s: %s published (was %s; %s)%s", path, report["generation"],
        report["was"] or "unreadable", why, f"; log moved aside: {report['log']}" if report["log"] else "")
    return report


def _first_verified(path: pathlib.Path, start: int | None) -> tuple[int, list]:
    """The first generation from ``start`` up its lineage that verifies, and why each before it did not."""
    skipped, n = [], start
    while n is not None:
        gen_dir = path / layout.generation_name(n)
        try:
            layout.check_files(gen_dir, layout.read_manifest(gen_dir), checksums=True)
            return n, skipped
        except layout.StoreError as e:
            skipped.append(str(e))
        try:
            n = layout.parent_number(path, n)
        except layout.StoreError:  # its manifest is unreadable: the previous number, as before the lineage
            n = max((g for g in layout.generations(path) if g < n), default=None)
        if n is not None and not (path / layout.generation_name(n)).is_dir():
            skipped.append(f"{layout.generation_name(n)}, the next in the lineage, is no longer kept")
            n = None
    on_disk = ", ".join(map(layout.generation_name, layout.generations(path))) or "none"
    raise layout.CorruptStoreError(path, f"no generation of its lineage verifies "
                                         f"({'; '.join(skipped) or 'there is none'}"
                                         f"); generations on disk: {on_disk}")


def _set_log_aside(path: pathlib.Path, chosen: int) -> dict | None:
    """Move the log aside unless it follows ``chosen`` or ``chosen`` absorbed it; its summary."""
    from ..store.wal import move_aside

    wal_path = path / layout.WAL
    try:
        wal = lineage.wal_header(path)
    except layout.CorruptStoreError:
        return {"records": None, "moved_to": move_aside(wal_path, "unreadable")}
    if wal is None or wal[0] == chosen:
        return None
    try:
        if lineage.absorbed_by(path, chosen, wal):
            return None
    except layout.StoreError:
        pass
    summary = log_summary(wal_path)
    if not summary["records"]:
        wal_path.unlink()
        return None
    summary["moved_to"] = move_aside(wal_path, "unapplied")
    return summary
