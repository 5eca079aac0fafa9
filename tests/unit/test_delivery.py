"""Source progress, shard acks and checkpoints (durability issue), without processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.durability import acks
from aaflow_stream.durability.checkpoint import CheckpointFile
from aaflow_stream.durability.progress import SourceProgress
from aaflow_stream.operators.base import OperatorContext
from aaflow_stream.operators.params import RouterParams
from aaflow_stream.operators.upsert import ShardRouter
from aaflow_stream.protocol import Ack, ack_decoder, encode
from aaflow_stream.schemas import CHUNK, TOMBSTONE


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _i32(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def test_the_prefix_advances_only_over_complete_documents() -> None:
    progress = SourceProgress(start=10, shards=2)
    assert [progress.emit() for _ in range(3)] == [10, 11, 12]
    progress.ack_chunks(_i64(11), _i32(2), _i32(2))
    progress.ack_tombstones(_i64(11))
    progress.ack_tombstones(_i64(11))
    assert progress.prefix == 10  # 11 is complete, 10 is not
    progress.ack_chunks(_i64(10), _i32(1), _i32(3))
    progress.ack_tombstones(_i64(10, 10))
    assert progress.prefix == 10  # 1 of 3 chunks
    progress.ack_chunks(_i64(10), _i32(2), _i32(3))
    assert progress.prefix == 12
    assert progress.outstanding == 1


def test_a_document_needs_every_shards_tombstone() -> None:
    progress = SourceProgress(start=0, shards=3)
    progress.emit()
    progress.ack_chunks(_i64(0), _i32(1), _i32(1))
    progress.ack_tombstones(_i64(0))
    progress.ack_tombstones(_i64(0))
    assert progress.prefix == 0
    progress.ack_tombstones(_i64(0))
    assert progress.prefix == 1


def test_dead_letters_are_complete_at_once_and_stale_acks_are_ignored() -> None:
    progress = SourceProgress(start=0, shards=1)
    progress.skip()
    assert progress.prefix == 1
    progress.emit()
    progress.ack_chunks(_i64(0, 7), _i32(1, 1), _i32(1, 1))  # 0 is done, 7 never emitted
    assert progress.prefix == 1 and progress.outstanding == 1


class _ReferenceProgress:
    """The rule of ``SourceProgress`` written plainly, one document at a time."""

    def __init__(self, start: int, shards: int) -> None:
        self.next, self.prefix, self.shards = start, start, shards
        self.state: dict[int, list[int]] = {}  # offset -> [expected, chunks, tombstones]
        self.complete: set[int] = set()

    def emit(self, chunks: int) -> int:
        self.state[self.next] = [chunks, 0, 0]
        self.next += 1
        return self.next - 1

    def skip(self) -> int:
        self.complete.add(self.next)
        self.next += 1
        self._advance()
        return self.next - 1

    def ack(self, offset: int, count: int, total: int | None) -> None:
        state = self.state.get(offset)
        if state is None or offset in self.complete:
            return
        if total is None:
            state[2] += 1
        else:
            state[0], state[1] = total, state[1] + count
        if state[1] >= state[0] >= 0 and state[2] >= self.shards:
            self.complete.add(offset)
            self._advance()

    def _advance(self) -> None:
        while self.prefix in self.complete:
            self.prefix += 1

    @property
    def outstanding(self) -> int:
        return self.next - self.prefix - sum(1 for o in self.complete if o >= self.prefix)


@pytest.mark.parametrize("seed", range(40))
def test_progress_matches_a_per_document_reference_under_random_acks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shards, start = int(rng.integers(1, 5)), int(rng.integers(0, 5))
    done: list[int] = []
    real = SourceProgress(start, shards, on_complete=done.append)
    ref = _ReferenceProgress(start, shards)
    totals: dict[int, int] = {}
    for _ in range(300):
        roll = rng.random()
        if roll < 0.3:
            chunks = -1 if rng.random() < 0.8 else 0  # 0: a delete
            offset = real.emit(chunks)
            assert offset == ref.emit(chunks)
            totals[offset] = int(rng.integers(1, 6)) if chunks else 0
        elif roll < 0.35:
            assert real.skip() == ref.skip()
        elif totals:
            picked = rng.choice(sorted(totals), size=int(rng.integers(1, 6)))
            if rng.random() < 0.5:  # chunk acks, each offset once per message (as acks.py sends)
                offsets = np.unique(picked)
                counts = rng.integers(1, 3, size=len(offsets)).astype(np.int32)
                total = np.array([totals[o] for o in offsets.tolist()], np.int32)
                real.ack_chunks(offsets.astype(np.int64), counts, total)
                for o, c, t in zip(offsets.tolist(), counts.tolist(), total.tolist(), strict=True):
                    ref.ack(o, c, t)
            else:  # tombstone acks; an offset may repeat
                real.ack_tombstones(picked.astype(np.int64))
                for o in picked.tolist():
                    ref.ack(o, 0, None)
        assert (real.prefix, real.emitted, real.outstanding) == (
            ref.prefix,
            ref.next,
            ref.outstanding,
        )
    assert sorted(done) == sorted(ref.complete)  # dead letters included


def _chunks(
    offsets: list[int], seqs: list[int], totals: list[int], replica: int = 0
) -> pa.RecordBatch:
    n = len(offsets)
    return pa.record_batch(
        [
            pa.array([f"d{o}" for o in offsets]),
            pa.array(seqs, pa.int32()),
            pa.array(np.arange(n, dtype=np.uint64) * 7 + np.array(offsets, dtype=np.uint64)),
            pa.array(["t"] * n, pa.large_string()),
            pa.array(["s"] * n),
            pa.array(np.zeros(n, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.full(n, 5, np.uint64)),
            pa.array(np.full(n, replica, np.int32)),
            pa.array(offsets, pa.int64()),
            pa.array(totals, pa.int32()),
        ],
        schema=CHUNK,
    )


def test_pending_acks_wait_for_the_log_and_group_by_source_replica() -> None:
    pending = acks.PendingAcks("shard.1", shard=1)
    pending.add(1, _chunks([4, 4, 5], [0, 1, 0], [2, 2, 1], replica=0))
    pending.add(2, _chunks([9], [0], [3], replica=1))
    assert pending.take(0) == []
    [(replica, ack)] = pending.take(1)
    assert replica == 0 and ack.shard == 1 and ack.sender == "shard.1"
    progress = SourceProgress(start=4, shards=1)
    progress.emit(), progress.emit()
    acks.apply(progress, ack_decoder.decode(encode(ack)))
    progress.ack_tombstones(_i64(4, 5))
    assert progress.prefix == 6
    [(replica, ack)] = pending.take(5)
    assert replica == 1 and len(pending) == 0


def test_tombstone_batches_are_acknowledged_per_shard() -> None:
    tomb = pa.record_batch(
        [
            pa.array(["a", "b"]),
            pa.array([1, 2], pa.uint64()),
            pa.array([0, 0], pa.int32()),
            pa.array([3, 4], pa.int64()),
        ],
        schema=TOMBSTONE,
    )
    pending = acks.PendingAcks("shard.0", shard=0)
    pending.add(1, tomb)
    [(_, ack)] = pending.take(1)
    assert np.frombuffer(ack.tombstones, dtype="<i8").tolist() == [3, 4]
    assert ack.offsets == b""


def test_an_inconsistent_ack_is_refused() -> None:
    bad = Ack(
        sender="x",
        shard=0,
        offsets=_i64(1, 2).tobytes(),
        counts=_i32(1).tobytes(),
        totals=_i32(1, 1).tobytes(),
    )
    with pytest.raises(ValueError, match="2 offsets, 1 counts"):
        acks.apply(SourceProgress(0, 1), bad)
    with pytest.raises(ValueError):
        acks.apply(SourceProgress(0, 1), Ack(sender="x", shard=0, offsets=b"abc"))


def test_rows_without_delivery_columns_are_not_acknowledged() -> None:
    batch = _chunks([1], [0], [1]).drop_columns(["src_replica", "src_offset"])
    pending = acks.PendingAcks("s", 0)
    pending.add(1, batch)
    assert len(pending) == 0


def test_checkpoint_round_trip_and_a_changed_input_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "cp" / "load.0.json"
    CheckpointFile(path, "files-v1").save(42)
    assert CheckpointFile(path, "files-v1").load() == 42
    assert CheckpointFile(path, "files-v2").load() == 0
    path.write_text("{not json")
    assert CheckpointFile(path, "files-v1").load() == 0
    CheckpointFile(path, "files-v1").remove()
    assert not path.exists()


def test_the_router_sends_every_shard_each_documents_tombstone_before_its_chunks() -> None:
    context = OperatorContext("upsert.0", "upsert", 0, 1, Path("."))
    router = ShardRouter(context, RouterParams(shards=3, batch_size=4))
    out = list(router.process(_chunks([0, 0, 1, 2], [0, 1, 0, 0], [2, 2, 1, 1])))
    out += list(router.flush())
    per_shard: dict[int, list[str]] = {}
    for item in out:
        kind = "tomb" if "keep_version" in item.batch.schema.names else "chunks"
        per_shard.setdefault(item.replica, []).append(kind)
    for shard in range(3):
        assert per_shard[shard][0] == "tomb"
        tombs = [
            i.batch for i in out if i.replica == shard and "keep_version" in i.batch.schema.names
        ]
        assert sorted(o for b in tombs for o in b.column("src_offset").to_pylist()) == [0, 1, 2]
    rows = sum(i.batch.num_rows for i in out if "keep_version" not in i.batch.schema.names)
    assert rows == 4
