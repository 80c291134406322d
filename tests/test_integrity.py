"""Store integrity (issue 13, part A): mid-log corruption vs a torn tail and salvage, verified
rollback that never drops the log silently, writers that never carry damaged bytes forward,
recovery from a damaged CURRENT, manifests held to the format's bounds, rejected adds that leave
the log byte-identical."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from lukhas_gpu import MemoryIndex, cli
from lukhas_gpu.index import loadchecks
from lukhas_gpu.store import layout
from lukhas_gpu.store.layout import CorruptStoreError, StoreError
from lukhas_gpu.store.wal import HEADER_SIZE, RECORD_HEADER_SIZE, WalReader

DIM = 16
BASE_ROWS = 200  # checkpointed (gen 3; gen 2 holds the first 100)
LOGGED = 200  # acknowledged single adds in wal.log, ids 200..399


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "s"
    ix = MemoryIndex.create(path, DIM)
    for lo in (0, 100):
        ix.add(np.stack([_vec(i) for i in range(lo, lo + 100)]), contents=[f"m{i}" for i in range(lo, lo + 100)],
               metadata=[{"i": i} for i in range(lo, lo + 100)])  # so the generations hold docmeta.npz
        ix.tune(0.9)  # and a tuning.npz
        ix.checkpoint()
    for i in range(BASE_ROWS, BASE_ROWS + LOGGED):
        ix.add(_vec(i), contents=f"m{i}")
    ix.close(checkpoint=False)
    return path


@pytest.fixture
def store(template, tmp_path):
    return pathlib_copy(template, tmp_path / "s")


def pathlib_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _offsets(path) -> list[int]:
    data = path.read_bytes()
    offs, pos = [], HEADER_SIZE
    while pos < len(data):
        offs.append(pos)
        pos += RECORD_HEADER_SIZE + struct.unpack_from("<I", data, pos)[0]
    return offs + [pos]


def _flip(path, pos: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))
    return bytes(data)


def _gen(path, which: str = "current"):
    return layout.current_generation(path) if which == "current" else layout.previous_generation(path)


# -- 1. mid-log corruption is not a torn tail ----------------------------------------------------
def test_a_flipped_byte_mid_log_is_refused_then_salvaged_with_the_lost_ids(store, capsys):
    wal = store / layout.WAL
    offs = _offsets(wal)
    assert len(offs) - 1 == LOGGED
    k = next(i for i in range(LOGGED) if offs[i + 1] > wal.stat().st_size // 2)  # the record in the middle
    damaged = _flip(wal, (offs[k] + offs[k + 1]) // 2)
    with pytest.raises(CorruptStoreError) as e:
        MemoryIndex.open(store, mode="w")
    msg = str(e.value)
    assert layout.WAL in msg and f"record {k} at bytes {offs[k]}..{offs[k + 1]}" in msg
    assert f"{LOGGED - k - 1} valid records follow" in msg and "salvage=True" in msg
    assert (e.value.offset, e.value.seq) == (offs[k], k)
    assert wal.read_bytes() == damaged  # nothing cut
    with pytest.raises(CorruptStoreError, match=layout.WAL):  # verify sees it too, without a writer
        MemoryIndex.open(store).verify()
    ix = MemoryIndex.open(store, mode="w", salvage=True)
    rep = ix.salvage_report
    lost = BASE_ROWS + k
    assert rep["lost_ids"] == [[lost, lost]] and rep["kept"] == LOGGED - 1 and rep["lost_records"] == []
    assert len(ix) == BASE_ROWS + LOGGED - 1
    assert ix.get([lost - 1, lost + 1, BASE_ROWS + LOGGED - 1])[2].content == f"m{BASE_ROWS + LOGGED - 1}"
    assert ix.get([lost + 1])[0].content == f"m{lost + 1}"  # later ids kept their numbers
    with pytest.raises(ValueError):
        ix.get([lost])
    ix.add(_vec(999), contents="after")
    ix.close(checkpoint=False)
    aside = list(store.glob("wal.log.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # moved aside, never deleted
    back = MemoryIndex.open(store, mode="w")
    assert len(back) == BASE_ROWS + LOGGED and back.verify()["ok"]
    back.close(checkpoint=False)


def test_verify_salvage_on_the_command_line(store, capsys):
    wal = store / layout.WAL
    offs = _offsets(wal)
    _flip(wal, offs[50] + 2)  # the length field: the damaged record's extent is unknown
    assert cli.main(["verify", str(store)]) == 1
    assert layout.WAL in capsys.readouterr().err
    assert cli.main(["verify", "--salvage", "--json", str(store)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["salvage"]["lost_ids"] == [[BASE_ROWS + 50, BASE_ROWS + 50]]
    assert out["count"] == BASE_ROWS + LOGGED - 1
    assert cli.main(["verify", str(store)]) == 0


def test_a_torn_tail_is_still_cut(store):
    wal = store / layout.WAL
    offs = _offsets(wal)
    with open(wal, "r+b") as f:
        f.truncate(offs[-2] + 5)  # the last append, half written
    ix = MemoryIndex.open(store, mode="w")
    assert len(ix) == BASE_ROWS + LOGGED - 1
    ix.close(checkpoint=False)


# -- 2. and 3. rollback: verified target, the log never dropped silently ---------------------------
# the files of this store (the sparse and text files are absent here: tests/test_sparse.py damages
# them; the id map is a file only of stores with external ids: test_extids covers it; namespaces and
# validity windows: tests/test_namespaces.py; the links file only of stores with links:
# tests/test_memops.py damages it; the candidate stage only of tuned stores: tests/test_graph.py)
_PRESENT = sorted(set(layout.GENERATION_FILES) - {layout.ANN, layout.IDMAP, layout.SPARSE, layout.SPARSE_INDICES,
                                                 layout.SPARSE_VALUES, layout.TEXT, layout.TEXT_INDICES,
                                                 layout.TEXT_VALUES, layout.NAMESPACES, layout.VALIDITY, layout.LINKS,
                                                 layout.STAGE})


@pytest.mark.parametrize("name", _PRESENT)
def test_rollback_onto_a_damaged_generation_is_refused(store, name):
    shutil.move(store / layout.WAL, store / "keep")  # no log in the way
    prev = _gen(store, "previous")
    _flip(prev / name, (prev / name).stat().st_size // 2)
    current = (store / layout.CURRENT).read_bytes()
    with pytest.raises(CorruptStoreError, match=name):
        MemoryIndex.rollback(store)
    assert (store / layout.CURRENT).read_bytes() == current


def test_rollback_refuses_to_drop_acknowledged_records_unless_told(store, capsys):
    current = (store / layout.CURRENT).read_bytes()
    with pytest.raises(StoreError, match=f"{LOGGED} acknowledged records \\({LOGGED} memories added"):
        MemoryIndex.rollback(store)
    assert cli.main(["rollback", str(store)]) == 1
    assert f"{LOGGED} memories added" in capsys.readouterr().err
    assert (store / layout.CURRENT).read_bytes() == current and (store / layout.WAL).exists()
    assert cli.main(["rollback", "--discard-log", str(store)]) == 0
    assert "gen-000002" in capsys.readouterr().out
    assert len(list(store.glob("wal.log.discarded-*"))) == 1  # kept aside
    ix = MemoryIndex.open(store, mode="w")
    assert len(ix) == 100
    ix.close(checkpoint=False)


# -- 4. a writer never carries damaged bytes forward ---------------------------------------------
@pytest.mark.parametrize("name", [layout.VECTORS, layout.CONTENT])
def test_a_writer_refuses_damaged_bulk_files_and_nothing_is_published(store, name, capsys):
    gen = _gen(store)
    _flip(gen / name, (gen / name).stat().st_size // 3)
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(CorruptStoreError, match=name):
        MemoryIndex.open(store, mode="w")
    assert sorted(p.name for p in store.iterdir()) == before  # no new generation, no vectors.work
    assert cli.main(["verify", str(store)]) == 1
    assert name in capsys.readouterr().err
    # the previous generation is intact: recovery goes back to it (the log follows the damaged one)
    ix = MemoryIndex.open(store, mode="w", recover=True)
    assert len(ix) == 100 and ix.verify()["ok"]
    ix.close(checkpoint=False)
    assert len(list(store.glob("wal.log.unapplied-*"))) == 1


def test_checkpoint_reads_back_what_it_wrote(store, monkeypatch):
    """A generation never lists bytes that differ from what was meant (a write gone wrong)."""
    ix = MemoryIndex.open(store, mode="w")
    real = layout.crc32_file
    monkeypatch.setattr(layout, "crc32_file", lambda p: real(p) ^ (1 if p.name == layout.VECTORS else 0))
    with pytest.raises(CorruptStoreError, match=layout.VECTORS):
        ix.checkpoint()
    monkeypatch.undo()
    assert not list(store.glob("gen-*.tmp"))
    ix.close(checkpoint=False)
    back = MemoryIndex.open(store, mode="w")
    assert len(back) == BASE_ROWS + LOGGED
    back.close(checkpoint=False)


# -- 5. a damaged CURRENT --------------------------------------------------------------------------
def test_a_damaged_current_is_recovered(store, capsys):
    (store / layout.CURRENT).write_bytes(b"\xffen-000003\n")
    for call in (lambda: MemoryIndex.open(store), lambda: MemoryIndex.rollback(store)):
        with pytest.raises(CorruptStoreError, match=layout.CURRENT):
            call()
    assert cli.main(["recover", str(store)]) == 0
    assert "now at gen-000003" in capsys.readouterr().out
    ix = MemoryIndex.open(store, mode="w")
    assert len(ix) == BASE_ROWS + LOGGED  # the log follows gen 3: replayed
    ix.close(checkpoint=False)


def test_open_with_recover_skips_a_damaged_newest_generation(store):
    (store / layout.CURRENT).write_text("gen-000009\n")  # names a missing generation
    with pytest.raises(CorruptStoreError, match="does not exist"):
        MemoryIndex.open(store, mode="w")
    _flip(store / "gen-000003" / layout.METADATA, 40)
    ix = MemoryIndex.open(store, mode="w", recover=True)
    assert len(ix) == 100 and (store / layout.CURRENT).read_text().strip() == "gen-000002"
    ix.close(checkpoint=False)


# -- 6. manifests are held to the format -----------------------------------------------------------
def _edit_manifest(path, **change):
    gen = _gen(path)
    m = json.loads((gen / layout.MANIFEST).read_text())
    for k, v in change.items():
        if k == "files":
            v(m["files"])
        else:
            m[k] = v
    (gen / layout.MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("change, message", [
    ({"dim": 10**9}, "dim = 1000000000 is outside"),
    ({"dim": 0}, "dim = 0 is outside"),
    ({"rows": -1}, "rows = -1 is outside"),
    ({"rows": 2**40}, "rows = 1099511627776 is outside"),
    ({"count": 10**6}, "count = 1000000 is outside"),
    ({"dim": 8}, "rows x dim"),
    ({"files": lambda f: f[layout.TAGS].update(bytes=-5)}, "out-of-bounds entry for 'tags.npz'"),
    ({"files": lambda f: f[layout.TAGS].update(bytes=2**60)}, "out-of-bounds entry for 'tags.npz'"),
    ({"files": lambda f: f[layout.TAGS].update(crc32="x")}, "malformed"),
    ({"files": lambda f: f.update({"../../etc/passwd": {"bytes": 1, "crc32": 1}})}, "not a file of this format"),
])
def test_crafted_manifests_are_refused_before_any_allocation(store, monkeypatch, change, message):
    from lukhas_gpu.vectors.store import VectorStore

    def never(*a, **k):
        raise AssertionError("allocated from a manifest that was not checked")

    monkeypatch.setattr(VectorStore, "attach", never)
    _edit_manifest(store, **change)
    for mode in ("r", "w"):
        with pytest.raises(CorruptStoreError, match=message):
            MemoryIndex.open(store, mode=mode)


@pytest.mark.parametrize("name", _PRESENT)
@pytest.mark.parametrize("damage", ["truncate", "missing", "link"])
def test_damaged_generation_files_are_named(store, tmp_path, name, damage):
    p = _gen(store) / name
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "missing":
        p.unlink()
    else:  # a link to a file outside the store, of the right size: never read
        outside = tmp_path / "outside"
        outside.write_bytes(p.read_bytes())
        p.unlink()
        p.symlink_to(outside)
    with pytest.raises(CorruptStoreError, match=name):
        MemoryIndex.open(store, mode="w")


# -- 9. a rejected add leaves the log byte-identical ----------------------------------------------
def test_rejected_adds_leave_the_log_byte_identical(store, monkeypatch):
    from lukhas_gpu.index import writes

    ix = MemoryIndex.open(store, mode="w")
    wal = store / layout.WAL
    before = wal.read_bytes()
    nan = _vec(1).copy()
    nan[3] = np.nan
    big = "x" * (ix.config.max_content_bytes + 1)
    for bad in (lambda: ix.add(nan), lambda: ix.add(_vec(2), contents=big),
                lambda: ix.add(np.zeros((1, DIM + 1), np.float32)), lambda: ix.add(_vec(3), importance=2.0),
                lambda: ix.add(np.stack([_vec(4), _vec(5)]), contents=["only one"])):
        with pytest.raises((ValueError, TypeError)):
            bad()
    monkeypatch.setattr(writes, "MAX_ROWS", len(ix) + 1)
    with pytest.raises(ValueError, match="at most .* memories"):
        ix.add(np.stack([_vec(6), _vec(7)]))
    assert wal.read_bytes() == before and len(ix) == BASE_ROWS + LOGGED
    ix.close(checkpoint=False)
    assert wal.read_bytes() == before


def test_add_records_carry_their_first_id(store):
    with WalReader(store / layout.WAL) as r:
        starts = [int(rec.fields["start"]) for rec in r]
    assert starts == list(range(BASE_ROWS, BASE_ROWS + LOGGED))


def test_a_reader_refuses_a_log_corrupted_in_the_middle(store):
    """A reader treats damage like the writer does: a record in flight at the end is not read
    yet; a bad record with valid ones after it raises, at open and at refresh."""
    reader = MemoryIndex.open(store)
    assert len(reader) == BASE_ROWS + LOGGED
    w = MemoryIndex.open(store, mode="w")
    for i in range(5):
        w.add(_vec(1000 + i), contents=f"new{i}")
    w.close(checkpoint=False)
    wal = store / layout.WAL
    offs = _offsets(wal)
    k = LOGGED + 1  # the second of the new records, with three valid ones after it
    _flip(wal, (offs[k] + offs[k + 1]) // 2)
    with pytest.raises(CorruptStoreError, match=layout.WAL):
        reader.refresh()
    with pytest.raises(CorruptStoreError, match="valid records follow"):
        MemoryIndex.open(store)


# -- issue 5: a damaged last record and a damaged log header are damage, not a torn tail ---------
def test_a_flipped_byte_in_the_last_complete_record_is_named_until_salvaged(store, capsys):
    wal = store / layout.WAL
    offs = _offsets(wal)
    damaged = _flip(wal, (offs[-2] + offs[-1]) // 2)  # the last record, complete, failing its CRC
    assert cli.main(["verify", str(store)]) == 1
    assert f"record {LOGGED - 1} at byte {offs[-2]} lies within the file and fails its CRC" in capsys.readouterr().err
    with pytest.raises(CorruptStoreError, match="fails its CRC"):
        MemoryIndex.open(store)  # a reader names it too, and changes nothing
    assert wal.read_bytes() == damaged
    w = MemoryIndex.open(store, mode="w")  # a writer keeps its bytes aside, cuts, and goes on
    assert len(w) == BASE_ROWS + LOGGED - 1
    w.close(checkpoint=False)
    aside = list(store.glob("wal.log.tail-damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged[offs[-2]:]
    assert cli.main(["verify", str(store)]) == 1  # until salvaged
    assert "tail-damaged" in capsys.readouterr().err
    assert cli.main(["verify", "--salvage", "--json", str(store)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and [t["bytes"] for t in out["salvage"]["tails"]] == [len(damaged) - offs[-2]]
    assert not list(store.glob("wal.log.tail-damaged-*")) and len(list(store.glob("wal.log.tail-salvaged-*"))) == 1
    assert cli.main(["verify", str(store)]) == 0


def test_verify_salvage_keeps_a_damaged_last_record_aside_in_one_step(store, capsys):
    wal = store / layout.WAL
    offs = _offsets(wal)
    _flip(wal, offs[-2] + RECORD_HEADER_SIZE + 3)
    assert cli.main(["verify", "--salvage", str(store)]) == 0
    assert "damaged last records kept in" in capsys.readouterr().err
    assert cli.main(["verify", str(store)]) == 0


@pytest.mark.parametrize("pos", [8, 12, 16])  # the base (low byte, high byte), the header's CRC
def test_a_flipped_byte_in_the_log_header_is_an_error_for_every_reader(store, capsys, pos):
    wal = store / layout.WAL
    _flip(wal, pos)
    for open_it in (lambda: MemoryIndex.open(store), lambda: MemoryIndex.open(store, mode="w")):
        with pytest.raises(CorruptStoreError, match="damaged header") as e:
            open_it()
        assert e.value.path == str(wal)
    assert cli.main(["get", str(store), str(BASE_ROWS)]) != 0
    assert cli.main(["verify", str(store)]) == 1
    assert "damaged header" in capsys.readouterr().err


# -- issue 8: every loaded structure bounded by the manifest's rows ----------------------------------
def _resign(gen, name: str, data: bytes) -> None:
    """Replace a generation's file and re-sign the manifest (size, CRC-32, the manifest's own CRC):
    what a crafted file that passes every checksum looks like."""
    import io
    import zlib

    (gen / name).write_bytes(data)
    m = json.loads((gen / layout.MANIFEST).read_text())
    m["files"][name] = {"bytes": len(data), "crc32": zlib.crc32(data)}
    m.pop(layout.MANIFEST_CRC, None)
    m[layout.MANIFEST_CRC] = layout.manifest_crc(m)
    (gen / layout.MANIFEST).write_text(json.dumps(m))
    del io


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _crafted(gen, name):
    """Crafted, re-signed contents of ``name`` that name or cover rows beyond the store's."""
    from pyroaring import BitMap

    rows = json.loads((gen / layout.MANIFEST).read_text())["rows"]
    if name == layout.TOMBSTONES:
        return BitMap(range(rows, rows + rows // 2)).serialize()  # 2,000 "live" of 3,000, say
    arrays = layout.load_npz(gen, name)
    if name == layout.METADATA:
        arrays["flags"] = np.concatenate([arrays["flags"], arrays["flags"][:7]])
    elif name == layout.CONTENT_INDEX:
        arrays["starts"] = arrays["starts"][:-3]
    elif name == layout.TAGS:
        arrays = {k: (np.concatenate([v, v[:5]]) if k in ("start", "count") else v) for k, v in arrays.items()}
    elif name == layout.PROBE:
        arrays["memories_ids"] = arrays["memories_ids"] + rows
    return _npz_bytes(arrays)


@pytest.mark.parametrize("name", [layout.TOMBSTONES, layout.METADATA, layout.CONTENT_INDEX, layout.TAGS,
                                  layout.PROBE])
def test_crafted_resigned_files_with_rows_beyond_the_store_are_named(store, name):
    gen = _gen(store)
    _resign(gen, name, _crafted(gen, name))
    for mode in ("r", "w"):
        with pytest.raises(CorruptStoreError, match=name) as e:
            MemoryIndex.open(store, mode=mode)
        assert str(gen / name) in str(e.value)


def test_deletions_within_the_rows_that_disagree_with_the_count_are_named(store):
    from pyroaring import BitMap

    gen = _gen(store)
    _resign(gen, layout.TOMBSTONES, BitMap([0, 1, 2]).serialize())
    with pytest.raises(CorruptStoreError, match=r"deleted.roaring: 3 deletions leave \d+ live memories, the manifest"):
        MemoryIndex.open(store)


def test_one_helper_bounds_rows():
    from pyroaring import BitMap

    loadchecks.check_rows_within("f", "x", 5, length=5, values=np.array([0, 4]))
    loadchecks.check_rows_within("f", "x", 5, length=3, length_at_most=True, values=BitMap([4]))
    for kw, msg in (({"length": 6}, "x: 6 rows, the manifest says 5"), ({"values": BitMap([5])}, "row 5 is outside"),
                    ({"values": np.array([-1, 2])}, "row -1 is outside"), ({"length": 6, "length_at_most": True}, "6")):
        with pytest.raises(CorruptStoreError, match=msg):
            loadchecks.check_rows_within("f", "x", 5, **kw)


# -- issue 6: readers never serve altered content or int8 rows ---------------------------------------
def test_flipped_bits_in_content_records_are_named_never_served(store, tmp_path):
    """A reader maps content.bin without its file CRC: 40 single-bit flips, each an error naming
    the file and the row (before the record CRCs, 8 of 40 came back as altered text)."""
    w = MemoryIndex.open(store, mode="w")
    w.checkpoint()  # every row in the generation (the records with their CRCs)
    w.close()
    ids = np.arange(BASE_ROWS + LOGGED)
    want = [f"m{i}" for i in ids]
    content = _gen(store) / layout.CONTENT
    clean = content.read_bytes()
    rng = np.random.default_rng(6)
    for pos in rng.choice(len(clean), 40, replace=False).tolist():
        data = bytearray(clean)
        data[pos] ^= 1 << int(rng.integers(8))
        content.write_bytes(bytes(data))
        r = MemoryIndex.open(store)
        with pytest.raises(CorruptStoreError, match=r"content\.bin: the content record of row \d+ fails its CRC"):
            r.get(ids)
        with pytest.raises(CorruptStoreError, match="content.bin"):
            r.contents(ids)
        r.close()
    content.write_bytes(clean)
    assert [m.content for m in MemoryIndex.open(store).get(ids)] == want


def test_search_hydration_checks_the_content_records(store):
    w = MemoryIndex.open(store, mode="w")
    w.checkpoint()
    w.close()
    r = MemoryIndex.open(store)
    res = r.search(_vec(7), k=3)
    row = int(np.asarray(res.ids).reshape(-1)[0])
    offs = r.parts.contents.to_arrays()["starts"]
    content = _gen(store) / layout.CONTENT
    _flip(content, int(offs[row]) + 2)
    r = MemoryIndex.open(store)
    res = r.search(_vec(7), k=3)
    assert int(np.asarray(res.ids).reshape(-1)[0]) == row
    with pytest.raises(CorruptStoreError, match="content.bin"):
        res.contents()
    with pytest.raises(CorruptStoreError, match="content.bin"):
        res.memories()


def test_a_generation_without_record_crcs_opens_and_gets_them_at_the_next_checkpoint(store):
    gen = _gen(store)
    arrays = layout.load_npz(gen, layout.CONTENT_INDEX)
    crcs = arrays.pop("crcs")
    _resign(gen, layout.CONTENT_INDEX, _npz_bytes(arrays))  # as written before the CRCs existed
    r = MemoryIndex.open(store)
    assert [m.content for m in r.get(np.arange(5))] == [f"m{i}" for i in range(5)]
    w = MemoryIndex.open(store, mode="w")
    w.checkpoint()
    w.close()
    again = layout.load_npz(_gen(store), layout.CONTENT_INDEX)["crcs"]
    assert len(again) == BASE_ROWS + LOGGED and np.array_equal(again[:len(crcs)], crcs)


def _without(gen, name: str) -> None:
    """Drop ``name`` from a generation as if written before it existed (manifest re-signed)."""
    (gen / name).unlink()
    m = json.loads((gen / layout.MANIFEST).read_text())
    del m["files"][name]
    m.pop(layout.MANIFEST_CRC, None)
    m[layout.MANIFEST_CRC] = layout.manifest_crc(m)
    (gen / layout.MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("old", [False, True])  # with block CRCs, or a generation without them
def test_flipped_bits_in_mapped_int8_rows_are_named_never_scored(store, old):
    w = MemoryIndex.open(store, mode="w")
    w.checkpoint()
    w.close()
    gen = _gen(store)
    if old:
        _without(gen, layout.VECTOR_CRCS)
    r = MemoryIndex.open(store)
    want = r.search(_vec(3), k=5)
    _flip(gen / layout.VECTORS, 300 * DIM + 5)  # row 300: block 4 of 64 rows
    r = MemoryIndex.open(store)  # opens (sizes checked); the rows are checked when read
    with pytest.raises(CorruptStoreError, match=r"vectors\.i8: int8 rows " + ("0..399" if old else "256..319")):
        r.search(_vec(3), k=5)
    _flip(gen / layout.VECTORS, 300 * DIM + 5)
    again = MemoryIndex.open(store).search(_vec(3), k=5)
    assert np.array_equal(np.asarray(again.ids), np.asarray(want.ids))


def test_block_crcs_check_only_the_blocks_read(tmp_path):
    from lukhas_gpu.vectors.store import CRC_BLOCK_ROWS as B, VectorStore

    rng = np.random.default_rng(8)
    rows = rng.integers(-127, 128, (10 * B + 17, 8), dtype=np.int8)  # 11 blocks, the last partial
    path = tmp_path / "v.i8"
    path.write_bytes(rows.tobytes())
    crcs = VectorStore.attach(path, 8, len(rows), writable=False).block_crcs()
    assert len(crcs) == 11
    data = bytearray(path.read_bytes())
    data[(7 * B + 3) * 8] ^= 0x04  # block 7
    path.write_bytes(bytes(data))

    def reader():
        v = VectorStore.attach(path, 8, len(rows), writable=False, private=True)
        v.expect_crcs(crcs, B, str(path))
        return v

    v = reader()
    v.checked(np.array([[0, 5, -1], [B, 10 * B + 16, -1]]))  # blocks 0, 1, 10: clean, the others unread
    with pytest.raises(CorruptStoreError, match=rf"int8 rows {7 * B}\.\.{8 * B - 1} \(block 7\) fail their CRC-32"):
        v.checked([7 * B])
    with pytest.raises(CorruptStoreError, match="block 7"):
        _ = v.array
    with pytest.raises(CorruptStoreError, match="block 7"):  # half the blocks read: the rest checked at once
        reader().checked(np.arange(6) * B)
    with pytest.raises(ValueError, match="do not cover"):
        reader().expect_crcs(crcs[:3], B, "x")
    v = reader()
    v.append(np.zeros((2, 8), np.int8))  # rows of this process are not the file's: never checked
    v.checked([len(rows), len(rows) + 1])



@pytest.mark.parametrize("craft", ["doc_slot", "slot_doc"])
def test_crafted_sparse_arenas_with_rows_beyond_the_store_are_named(tmp_path, craft):
    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM)
    ix.add(np.stack([_vec(i) for i in range(6)]),
           sparse=[(np.array([1, 5]), np.array([1.0, 2.0]))] * 6)
    ix.close()
    gen = _gen(path)
    arrays = layout.load_npz(gen, layout.SPARSE)
    if craft == "doc_slot":  # more memories with a slot than the store has rows
        arrays["doc_slot"] = np.concatenate([arrays["doc_slot"], arrays["doc_slot"][:4]])
    else:  # a slot of a memory beyond the rows
        arrays["slot_doc"] = arrays["slot_doc"].copy()
        arrays["slot_doc"][0] = 8
    _resign(gen, layout.SPARSE, _npz_bytes(arrays))
    with pytest.raises(CorruptStoreError, match=r"sparse\.npz: (the memories with a slot: 10 rows|inconsistent "
                                                r"arrays \(sparse arena names a memory beyond its rows)"):
        MemoryIndex.open(path)


def test_verify_salvage_replays_a_log_whose_header_is_damaged(store, capsys):
    wal = store / layout.WAL
    damaged = _flip(wal, 9)  # the base
    assert cli.main(["verify", str(store)]) == 1
    assert cli.main(["verify", "--salvage", "--json", str(store)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == BASE_ROWS + LOGGED and out["salvage"]["header"]["replayed"]
    aside = list(store.glob("wal.log.header-damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, never deleted
    assert cli.main(["verify", str(store)]) == 0
    r = MemoryIndex.open(store)
    assert len(r) == BASE_ROWS + LOGGED and r.get([BASE_ROWS + LOGGED - 1])[0].content == f"m{BASE_ROWS + LOGGED - 1}"


def test_salvage_of_a_stale_log_with_a_damaged_header_replays_nothing(store, capsys):
    w = MemoryIndex.open(store, mode="w")
    stale = (store / layout.WAL).read_bytes()  # follows the generation before the checkpoint
    w.checkpoint()
    w.close()
    (store / layout.WAL).write_bytes(stale)
    _flip(store / layout.WAL, 9)
    assert cli.main(["verify", "--salvage", "--json", str(store)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == BASE_ROWS + LOGGED and not out["salvage"]["header"]["replayed"]
    assert "its first add starts at id 200" in out["salvage"]["damaged"][0]
    assert cli.main(["verify", str(store)]) == 0


def test_a_log_following_an_unpublished_generation_is_an_error_for_readers_and_verify(store, capsys):
    from lukhas_gpu.store.walcodec import pack_header

    wal = store / layout.WAL
    data = wal.read_bytes()
    newer = layout.generation_number(_gen(store)) + 5
    wal.write_bytes(pack_header(newer, 7) + data[HEADER_SIZE:])  # an intact header, a base never published
    with pytest.raises(CorruptStoreError, match=f"follows generation {newer}"):
        MemoryIndex.open(store)
    assert cli.main(["verify", str(store)]) == 1
    assert f"follows generation {newer}" in capsys.readouterr().err
