"""The memory index of one rank: compaction, the session bound, forgetting, recovery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aaflow_stream.shard.memory import MemoryStore, memory_id, owner, rows_to_table
from aaflow_stream.shard.memory_sessions import Entry
from aaflow_stream.spec import MemorySpec, MemoryWeights

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def entries(session: str, texts: list[str], vectors: np.ndarray, **kw: object) -> object:
    rows = [
        (
            Entry(
                memory_id(session, t),
                session,
                str(kw.get("kind", "summary")),
                t,
                "user",
                float(kw.get("ts", 1000.0)),  # type: ignore[arg-type]
                float(kw.get("weight", 1.0)),  # type: ignore[arg-type]
                bool(kw.get("ephemeral", False)),
            ),
            v,
        )
        for t, v in zip(texts, vectors, strict=True)
    ]
    return rows_to_table(rows, DIM)


def store(path: Path, **spec: object) -> MemoryStore:
    return MemoryStore(path, dim=DIM, metric="ip", spec=MemorySpec(**spec), record=True)  # type: ignore[arg-type]


def test_a_near_duplicate_merges_into_the_entry_it_repeats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    v = unit(rng, 2)
    near = v[0] + 0.01 * unit(rng, 1)[0]
    near /= np.linalg.norm(near)
    s = store(tmp_path)
    first = s.remember(entries("a", ["alpha", "beta"], v, ts=10.0))  # type: ignore[arg-type]
    assert (first.added, first.merged) == (2, 0)
    again = s.remember(entries("a", ["alpha again"], near[None, :], ts=20.0, weight=2.0))  # type: ignore[arg-type]
    assert (again.added, again.merged) == (0, 1)
    kept = {e.memory_id: e for e, _ in s.entries()}
    assert len(kept) == 2
    alpha = kept[memory_id("a", "alpha")]
    assert (alpha.weight, alpha.ts, alpha.text) == (3.0, 20.0, "alpha")
    # Another session's near-duplicate is its own entry.
    other = s.remember(entries("b", ["alpha"], v[:1]))  # type: ignore[arg-type]
    assert other.added == 1 and s.count == 3


def test_duplicates_within_one_batch_merge_too(tmp_path: Path) -> None:
    v = unit(np.random.default_rng(2), 1)
    s = store(tmp_path)
    counts = s.remember(entries("a", ["x", "y", "z"], np.repeat(v, 3, axis=0)))  # type: ignore[arg-type]
    assert (counts.added, counts.merged) == (1, 2) and s.count == 1


def test_the_session_bound_holds_under_ten_thousand_remembers(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    s = store(tmp_path, max_session_entries=50, max_session_bytes=4000, near_duplicate=2.0)
    for start in range(0, 10_000, 500):
        texts = [f"note {i:05d} " + "w" * (i % 40) for i in range(start, start + 500)]
        weights = rng.uniform(0, 1, len(texts))
        rows = [
            (
                Entry(
                    memory_id("a", t), "a", "state", t, "tool", float(start + i), float(w), False
                ),
                v,
            )
            for i, (t, w, v) in enumerate(zip(texts, weights, unit(rng, 500), strict=True))
        ]
        s.remember(rows_to_table(rows, DIM))
        held = [e for e, _ in s.entries()]
        assert len(held) <= 50
        assert sum(len(e.text.encode()) for e in held) <= 4000
    # The rule: the heaviest survive (then the newest).
    held = sorted(e.weight for e, _ in s.entries())
    assert held[0] > 0.8


def test_forget_removes_a_session_and_survives_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    s = store(tmp_path)
    s.remember(entries("a", ["1", "2"], unit(rng, 2)))  # type: ignore[arg-type]
    s.remember(entries("b", ["3"], unit(rng, 1)))  # type: ignore[arg-type]
    assert s.forget(["a"]) == 2
    s._wal.close()  # a crash: no snapshot at close
    again = store(tmp_path)
    assert [e.session for e, _ in again.entries()] == ["b"]
    again.close()
    third = store(tmp_path)  # from the snapshot written at close
    assert [e.text for e, _ in third.entries()] == ["3"]


def test_ephemeral_entries_are_not_logged(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    s = store(tmp_path)
    s.remember(entries("a", ["keep"], unit(rng, 1)))  # type: ignore[arg-type]
    s.remember(entries("a", ["scratch"], unit(rng, 1), ephemeral=True))  # type: ignore[arg-type]
    assert s.count == 2
    s._wal.close()
    assert [e.text for e, _ in store(tmp_path).entries()] == ["keep"]


def test_the_owner_rule_is_stable_and_keeps_a_session_on_one_rank() -> None:
    owners = {owner("session-7", memory_id("session-7", str(i)), 4) for i in range(100)}
    assert len(owners) == 1
    assert owner("session-7", 0, 4) == owner("session-7", 0, 4)
    shared = {owner("", memory_id("", str(i)), 4) for i in range(100)}
    assert shared == {0, 1, 2, 3}


def test_memory_search_ranks_by_the_documented_score(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    v = unit(rng, 3)
    s = store(tmp_path)
    s.remember(entries("a", ["old"], v[:1], ts=0.0, kind="summary"))  # type: ignore[arg-type]
    s.remember(entries("a", ["new"], v[1:2], ts=1000.0, kind="state"))  # type: ignore[arg-type]
    q = v[:1]
    w = MemoryWeights(sim=1.0, kind={"summary": 0.0, "state": 0.0}, recency=0.0)
    hits = s.search(q, ["a"], 2, w, 1000.0, 0).to_pylist()
    assert [h["text"] for h in hits] == ["old", "new"]  # by similarity alone
    w = MemoryWeights(sim=1.0, kind={"summary": 0.0, "state": 0.0}, recency=5.0, half_life_s=100)
    hits = s.search(q, ["a"], 2, w, 1000.0, 0).to_pylist()
    assert [h["text"] for h in hits] == ["new", "old"]  # recency lifts the newer one
    new = hits[0]
    assert new["recency_score"] == pytest.approx(5.0)
    assert hits[1]["recency_score"] == pytest.approx(5.0 * 2 ** (-10))
    assert new["score"] == pytest.approx(new["sim"] + new["kind_score"] + new["recency_score"])
    assert s.search(q, ["zzz"], 2, w, 1000.0, 0).num_rows == 0  # another session sees nothing


def _state(s: MemoryStore) -> list[tuple[object, ...]]:
    return sorted(
        (e.memory_id, e.kind, e.text, e.source, e.ts, e.weight, tuple(v.tolist()))
        for e, v in s.entries()
        if not e.ephemeral
    )


def test_a_mixed_batch_recovers_after_a_crash_exactly_as_it_was_acknowledged(
    tmp_path: Path,
) -> None:
    # New rows (logged as received), merges into held and into earlier new rows, a repeated
    # text, ephemeral rows and evictions of rows of the same batch, all in one remember.
    rng = np.random.default_rng(7)
    s = store(tmp_path, max_session_entries=12, near_duplicate=0.98)
    held = unit(rng, 6)
    s.remember(entries("a", [f"held {i}" for i in range(6)], held, ts=5.0))  # type: ignore[arg-type]
    fresh = unit(rng, 10)
    near_held = held[:2] + 0.001 * unit(rng, 2)
    vectors = np.concatenate([fresh, near_held, fresh[:1], fresh[3:4]])
    texts = [f"new {i}" for i in range(10)] + ["near 0", "near 1", "new 0", "again 3"]
    weights = rng.uniform(0.1, 2.0, len(texts))
    rows = [
        (Entry(memory_id("a", t), "a", "summary", t, "user", 10.0 + i, float(w), False), v)
        for i, (t, w, v) in enumerate(zip(texts, weights, vectors, strict=True))
    ]
    rows.append(
        (
            Entry(memory_id("a", "scratch"), "a", "state", "scratch", "tool", 9.0, 1.0, True),
            fresh[5],
        )
    )
    counts = s.remember(rows_to_table(rows, DIM))
    assert counts.merged == 4  # two into held rows, a repeated text, a near-duplicate in the batch
    assert counts.evicted > 0 and s.count <= 12
    before = _state(s)
    s._wal.close()  # a crash: recovery replays the log alone
    again = store(tmp_path)
    assert _state(again) == before
    again.close()


def test_the_near_duplicate_threshold_is_met_as_in_float64(tmp_path: Path) -> None:
    # 0.95 is not a float32: the largest float32 below it is not near, the next one is.
    below = np.float32(0.95)
    assert float(below) < 0.95
    above = np.nextafter(below, np.float32(1.0))
    base = np.zeros(DIM, dtype=np.float32)
    base[0] = 1.0
    s = store(tmp_path, near_duplicate=0.95)
    s.remember(entries("a", ["base"], base[None, :]))  # type: ignore[arg-type]
    for text, value, merges in (("below", below, 0), ("above", above, 1)):
        v = np.zeros(DIM, dtype=np.float32)
        v[0] = value  # its inner product with base is exactly ``value``
        assert s.remember(entries("a", [text], v[None, :])).merged == merges  # type: ignore[arg-type]
