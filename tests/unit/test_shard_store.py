"""ShardStore on real FAISS and real files: snapshots interrupted at every step, tombstones,
and restarts (a new store on the same directory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.errors import SpecError, StorageError
from aaflow_stream.schemas import DELETE_ALL
from aaflow_stream.shard import snapshot as snap
from aaflow_stream.shard.filters import QueryFilter
from aaflow_stream.shard.store import WAL_DIR, ShardStore
from aaflow_stream.shard.wal import segments

from ..support.chunks import chunk_rows, ids_of, tombstones

DIM = 8


def _open(directory: Path, wal_sync: str = "batch") -> ShardStore:
    return ShardStore(directory, dim=DIM, index="Flat", metric="ip", wal_sync=wal_sync)  # type: ignore[arg-type]


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _state(store: ShardStore) -> dict[int, tuple[str, int, list[float]]]:
    """chunk id -> (text, doc_version, vector), read from the index and the metadata."""
    import faiss

    ids = faiss.vector_to_array(store.index.id_map).tolist()
    vectors = store.index.index.reconstruct_n(0, store.index.ntotal)
    meta = store.metadata()
    chunks, texts, versions = (
        meta.column(c).to_pylist() for c in ("chunk_id", "text", "doc_version")
    )
    rows = {c: (t, v) for c, t, v in zip(chunks, texts, versions, strict=True)}
    assert sorted(rows) == sorted(ids), "index and metadata disagree"
    return {i: (*rows[i], v.round(5).tolist()) for i, v in zip(ids, vectors, strict=True)}


def _everything(store: ShardStore, k: int = 100) -> list[int]:
    """Every id a search finds (k is larger than the shard)."""
    _, ids = store.search(np.ones((1, DIM), np.float32), k)
    return [i for i in ids[0].tolist() if i >= 0]


# --- snapshots -------------------------------------------------------------------------------


def _history(root: Path) -> tuple[Path, Path, dict[int, tuple[str, int, list[float]]]]:
    """``before``: snapshot S1 (docs a, b) plus a log with c and a tombstone for b.
    ``after``: the same history with S2 (covering everything) taken. Both closed."""
    before = root / "before"
    store = _open(before)
    store.append(chunk_rows("a", _vectors(1, 3)))
    store.append(chunk_rows("b", _vectors(2, 2)))
    assert store.snapshot("test") is not None
    store.append(chunk_rows("c", _vectors(3, 4)))
    store.append(tombstones([("b", DELETE_ALL)]))
    want = _state(store)
    store.close()
    after = root / "after"
    shutil.copytree(before, after)
    store = _open(after)
    store.snapshot("test")
    store.close()
    return before, after, want


def _recover_and_check(directory: Path, want: dict[int, tuple[str, int, list[float]]]) -> None:
    store = _open(directory)
    assert _state(store) == want
    assert sorted(_everything(store)) == sorted(want)
    assert not (directory / snap.TMP_DIR).exists() and not (directory / snap.OLD_DIR).exists()
    info = directory / snap.SNAPSHOT_DIR / snap.INFO_FILE
    first = json.loads(info.read_text())["wal_segment"] if info.exists() else 1
    assert all(n >= first for n, _ in segments(directory / WAL_DIR)), "covered log left"
    # It goes on working: append, snapshot, reopen.
    store.append(chunk_rows("d", _vectors(4, 1)))
    store.snapshot("test")
    store.close()
    again = _open(directory)
    assert len(_state(again)) == len(want) + 1
    again.close()


def test_a_snapshot_and_its_log_recover_the_whole_history(tmp_path: Path) -> None:
    before, after, want = _history(tmp_path)
    for directory in (before, after):
        store = _open(directory)
        assert _state(store) == want
        store.close()
    info = json.loads((after / snap.SNAPSHOT_DIR / snap.INFO_FILE).read_text())
    assert info["vectors"] == 7 and info["lsn"] == 4
    assert all(n >= info["wal_segment"] for n, _ in segments(after / WAL_DIR))


def _crash_writing_tmp(before: Path, after: Path) -> None:
    tmp = before / snap.TMP_DIR
    tmp.mkdir()
    shutil.copy(after / snap.SNAPSHOT_DIR / snap.INDEX_FILE, tmp)  # meta and info not yet


def _crash_before_swap(before: Path, after: Path) -> None:
    shutil.copytree(after / snap.SNAPSHOT_DIR, before / snap.TMP_DIR)


def _crash_between_renames(before: Path, after: Path) -> None:
    (before / snap.SNAPSHOT_DIR).rename(before / snap.OLD_DIR)
    shutil.copytree(after / snap.SNAPSHOT_DIR, before / snap.TMP_DIR)


def _crash_before_removing_old(before: Path, after: Path) -> None:
    (before / snap.SNAPSHOT_DIR).rename(before / snap.OLD_DIR)
    shutil.copytree(after / snap.SNAPSHOT_DIR, before / snap.SNAPSHOT_DIR)


def _crash_before_dropping_the_log(before: Path, after: Path) -> None:
    shutil.rmtree(before / snap.SNAPSHOT_DIR)
    shutil.copytree(after / snap.SNAPSHOT_DIR, before / snap.SNAPSHOT_DIR)


@pytest.mark.parametrize(
    "crash",
    [
        _crash_writing_tmp,
        _crash_before_swap,
        _crash_between_renames,
        _crash_before_removing_old,
        _crash_before_dropping_the_log,
    ],
    ids=lambda f: f.__name__.removeprefix("_crash_"),
)
def test_a_snapshot_interrupted_at_any_step_recovers_the_same_state(
    tmp_path: Path, crash: object
) -> None:
    before, after, want = _history(tmp_path)
    crash(before, after)  # type: ignore[operator]
    _recover_and_check(before, want)


def test_the_first_snapshot_interrupted_leaves_the_log_to_replay(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    store = _open(directory)
    store.append(chunk_rows("a", _vectors(1, 3)))
    want = _state(store)
    store.close()
    (directory / snap.TMP_DIR).mkdir()
    (directory / snap.TMP_DIR / snap.INDEX_FILE).write_bytes(b"half an index")
    _recover_and_check(directory, want)


def test_a_snapshot_that_disagrees_with_its_record_is_an_error(tmp_path: Path) -> None:
    _, after, _ = _history(tmp_path)
    info = after / snap.SNAPSHOT_DIR / snap.INFO_FILE
    info.write_text(json.dumps({**json.loads(info.read_text()), "vectors": 99}))
    with pytest.raises(StorageError, match="the snapshot is inconsistent"):
        _open(after)


def test_a_shard_of_another_shape_is_refused(tmp_path: Path) -> None:
    _open(tmp_path / "s").close()
    with pytest.raises(SpecError, match="was built with"):
        ShardStore(tmp_path / "s", dim=DIM, index="Flat", metric="l2")


# --- tombstones ------------------------------------------------------------------------------


def test_an_update_that_shortens_a_document_removes_its_old_tail(tmp_path: Path) -> None:
    store = _open(tmp_path / "s", "interval")
    old = _vectors(1, 5)
    store.append(chunk_rows("doc", old, version=1))
    store.append(chunk_rows("other", _vectors(2, 2)))
    new = _vectors(3, 3)
    store.append(chunk_rows("doc", new, version=2))
    store.append(tombstones([("doc", 2), ("never-seen", 5)]))
    kept, tail = ids_of("doc", [0, 1, 2]), ids_of("doc", [3, 4])
    others = ids_of("other", [0, 1])

    def check(s: ShardStore) -> None:
        assert s.count == 5
        state = _state(s)
        assert sorted(state) == sorted(kept + others)
        assert {state[i][1] for i in kept} == {2}
        assert state[kept[0]][2] == new[0].round(5).tolist()
        for query in old[3:]:  # the removed chunks' own vectors find only live ones
            for allowed in (None, QueryFilter(sources=["src"])):
                _, ids = s.search(query[None, :], 10, allowed)
                found = set(ids[0].tolist())
                assert not found & set(tail) and found - {-1} <= set(kept + others)
        with pytest.raises(KeyError, match="is not stored"):
            s.rows(tail[:1])
        _, ids, rows = s.search_rows(old[3:4], 3)
        assert rows.column("chunk_id").to_pylist() == ids[0].tolist()

    check(store)
    store.close()
    check(_open(tmp_path / "s"))  # from the log


def test_a_delete_removes_every_chunk_of_the_document_and_survives_restarts(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path / "s")
    doomed = _vectors(1, 4)
    store.append(chunk_rows("gone", doomed, source="a"))
    store.append(chunk_rows("kept", _vectors(2, 3), source="a"))
    store.snapshot("test")
    lsn = store.delete_docs(["gone"])
    assert lsn == store.last_lsn == store.durable_lsn
    kept = ids_of("kept", [0, 1, 2])

    def check(s: ShardStore) -> None:
        assert sorted(_state(s)) == sorted(kept) and s.count == 3
        assert s.metadata().column("doc_id").to_pylist() == ["kept"] * 3
        for allowed in (None, QueryFilter(sources=["a"]), QueryFilter(ts_from_ms=0)):
            _, ids = s.search(doomed, 10, allowed)
            assert set(ids.ravel().tolist()) - {-1} == set(kept)

    check(store)
    store.close()
    store = _open(tmp_path / "s")  # snapshot + a logged tombstone
    check(store)
    store.snapshot("test")
    store.close()
    check(_open(tmp_path / "s"))  # the snapshot alone


def test_a_re_upserted_chunk_replaces_and_a_tombstone_first_then_new_version_works(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path / "s")
    store.append(chunk_rows("doc", _vectors(1, 3), version=1))
    store.append(chunk_rows("doc", _vectors(1, 3), version=1))  # a replay: same rows again
    assert store.count == 3 and store.metadata().num_rows == 3
    store.append(tombstones([("doc", 2)]))  # the tombstone overtook the new version
    assert store.count == 0
    store.append(chunk_rows("doc", _vectors(2, 2), version=2))
    assert sorted(_everything(store)) == sorted(ids_of("doc", [0, 1]))
    store.close()
    assert sorted(_everything(_open(tmp_path / "s"))) == sorted(ids_of("doc", [0, 1]))


def test_a_batch_that_could_not_be_applied_is_refused_before_it_is_logged(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path / "s")
    wrong_dim = chunk_rows("doc", np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="column 'embedding' is fixed_size_list"):
        store.append(wrong_dim)
    no_text = chunk_rows("doc", _vectors(1, 2)).drop_columns(["text"])
    with pytest.raises(ValueError, match="lacks column 'text'"):
        store.append(no_text)
    assert store.last_lsn == 0
    store.close()
    _open(tmp_path / "s").close()


def test_duplicate_ids_in_one_batch_keep_the_last_row(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    first, second = chunk_rows("doc", _vectors(1, 2)), chunk_rows("doc", _vectors(2, 2), version=2)
    store.append(pa.concat_batches([first, second]))
    assert store.count == 2
    assert set(store.metadata().column("doc_version").to_pylist()) == {2}


def test_an_empty_shard_snapshots_and_reopens_empty(tmp_path: Path) -> None:
    store = _open(tmp_path / "s")
    assert store.snapshot("drain", force=True) is not None
    store.close()
    again = _open(tmp_path / "s")
    assert again.count == 0 and again.metadata().num_rows == 0


def test_a_shard_in_the_layout_before_the_log_is_loaded_and_moved_to_a_snapshot(
    tmp_path: Path,
) -> None:
    import faiss

    directory = tmp_path / "s"
    store = _open(directory)
    store.append(chunk_rows("a", _vectors(1, 3)))
    want = _state(store)
    store.close()
    # What the store wrote before the WAL: index.faiss and meta.arrow beside shard.json.
    faiss.write_index(store.index, str(directory / snap.INDEX_FILE))
    with pa.ipc.new_file(directory / snap.META_FILE, store.metadata().schema) as writer:
        writer.write_table(store.metadata())
    shutil.rmtree(directory / WAL_DIR)
    legacy = _open(directory)
    assert _state(legacy) == want
    legacy.snapshot("drain", force=True)
    legacy.close()
    assert not (directory / snap.INDEX_FILE).exists()
    assert _state(_open(directory)) == want


def test_a_data_directory_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")  # fails for root too, unlike chmod
    with pytest.raises(StorageError, match=r"cannot open the shard in .*file/s: "):
        _open(tmp_path / "file" / "s")


def test_without_a_log_only_a_snapshot_makes_batches_durable(tmp_path: Path) -> None:
    """``wal_sync: none``: no log is written; the durable LSN moves only when a snapshot
    lands, and a restart finds exactly what the last snapshot held."""
    store = _open(tmp_path, wal_sync="none")
    store.append(chunk_rows("a", _vectors(1, 3)))
    assert (store.last_lsn, store.sync(), store.durable_lsn) == (1, 0, 0)
    assert store.snapshot("test") is not None
    assert store.durable_lsn == 1
    held = _state(store)
    store.append(chunk_rows("b", _vectors(2, 2)))  # never snapshotted: a crash loses it
    assert store.durable_lsn == 1 and len(_state(store)) == 5
    assert segments(tmp_path / WAL_DIR) == [], "a log was written"
    store.close()
    again = _open(tmp_path, wal_sync="none")
    assert _state(again) == held and again.last_lsn == again.durable_lsn == 1
    again.close()


def test_without_a_log_make_durable_snapshots_so_a_delete_survives_a_crash(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path, wal_sync="none")
    store.append(chunk_rows("a", _vectors(1, 3)))
    store.append(chunk_rows("b", _vectors(2, 2)))
    store.snapshot("test")
    store.delete_docs(["a"])
    assert store.durable_lsn < store.last_lsn
    assert store.make_durable("delete") == store.last_lsn
    want = _state(store)
    del store  # a crash: no close, no snapshot at stop
    again = _open(tmp_path, wal_sync="none")
    assert _state(again) == want and len(want) == 2
    again.close()
