"""Observability pieces without processes: event lines, trace files and summary, status rates."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from aaflow_stream.frames import batch_message, schema_fingerprint
from aaflow_stream.observe import trace
from aaflow_stream.observe.events import format_event, parse_event
from aaflow_stream.observe.status import StatusBoard
from aaflow_stream.plan import ChainedOperator, GraphSpec, StageSpec
from aaflow_stream.protocol import ActorStats, LinkStats, OperatorStats, data_decoder


def test_an_event_line_quotes_values_that_would_split_and_parses_back() -> None:
    line = format_event("actor_crash", actor="embed.1", replica=1, code=1, reason='x = "y" z')
    assert line.startswith("event=actor_crash actor=embed.1 replica=1 code=1 reason=")
    assert parse_event(f"2026 INFO name: {line}") == {
        "event": "actor_crash",
        "actor": "embed.1",
        "replica": "1",
        "code": "1",
        "reason": 'x = "y" z',
    }
    assert parse_event("no event here") == {}


def test_a_batch_header_carries_its_origin_time() -> None:
    batch = pa.record_batch({"x": pa.array([1, 2, 3])})
    frames = batch_message(batch, "a.0", 7, schema_fingerprint(batch.schema), "buffers", 12.5)
    header = data_decoder.decode(frames[0])
    assert header.origin_at == 12.5 and header.sent_at > 0  # type: ignore[union-attr]


def test_trace_rows_survive_the_file_round_trip_and_the_summary_counts_overlap(
    tmp_path: Path,
) -> None:
    recorder = trace.TraceRecorder(tmp_path / "t", "embed.0", 0)
    recorder.arrived(trace.Arrival("load.0", 1, 0.5, 1.0, 1.0))
    recorder.call("embed", 1.0, 3.0, 10, 10)
    recorder.call("upsert", 3.0, 4.0, 10, 12)
    recorder.sent(0.25, "upsert")  # the credit wait goes on the chain's last stage
    recorder.call("embed", 5.0, 5.0, 0, 0)  # no rows either way: left out
    recorder.flush()
    recorder.arrived(trace.Arrival("load.0", 2, 2.0, 2.0, 2.0))
    recorder.call("embed", 2.0, 6.0, 5, 5)  # overlaps the first call (another replica)
    recorder.close()
    table = trace.collect(tmp_path / "t", tmp_path / "out.parquet")
    assert table.num_rows == 3
    rows = table.to_pylist()
    assert [r["seq"] for r in rows if r["stage"] == "embed"] == [0, 1]
    assert next(r for r in rows if r["stage"] == "upsert")["blocked_s"] == 0.25
    summary = trace.summarize(table, ["embed", "upsert"])
    embed, upsert = summary.stages
    assert (embed.busy_s, embed.active_s, embed.rows_in) == (6.0, 5.0, 15)
    assert (upsert.active_s, upsert.blocked_s) == (1.0, 0.25)
    assert summary.total_s == 5.0 and summary.sum_s == 6.0 and summary.overlap_s == 1.0


def test_the_status_board_computes_rates_per_stage_replica_including_chained_stages(
    tmp_path: Path,
) -> None:
    graph = GraphSpec(
        stages=[
            StageSpec("load", "m:L", chain=[ChainedOperator("transform", "m:T")]),
            StageSpec("shard", "m:S", launcher="mpi"),
        ]
    )
    board = StatusBoard(graph, tmp_path)

    def stats(rows: int, busy: float, blocked: float, vectors: int) -> list[ActorStats]:
        load = ActorStats(
            actor="load.0",
            stage="load",
            replica=0,
            blocked_s=blocked,
            outputs=[LinkStats("shard.0", 3, 1, 4, 0, 0)],
            operators=[
                OperatorStats("load", busy_s=busy, rows_out=rows, extra={"documents": rows}),
                OperatorStats("transform", busy_s=busy, rows_in=rows, rows_out=2 * rows),
            ],
        )
        shard = ActorStats(
            actor="shard.0",
            stage="shard",
            replica=0,
            operators=[
                OperatorStats(
                    "shard",
                    rows_in=2 * rows,
                    extra={"vectors": vectors, "bytes": 1000, "upserted": vectors},
                )
            ],
        )
        return [load, shard]

    for s in stats(10, 0.1, 0.0, 10):
        board.on_stats(s)
    board.write()
    for s in stats(30, 0.6, 0.5, 50):
        board.on_stats(s)
    # Pretend the second samples came one second after the first.
    for sample in board._samples.values():
        sample.at = board._previous[sample.stats.actor].at + 1.0
    status = board.write()
    load, transform, shard = status.stages
    assert (load.stage, transform.stage, shard.stage) == ("load", "transform", "shard")
    assert load.rows_out_per_s == pytest.approx(20.0)
    assert transform.rows_out_per_s == pytest.approx(40.0)
    assert load.busy_pct == pytest.approx(50.0)
    # The actor's credit wait and links belong to its last (chained) stage.
    assert (load.backpressured_pct, transform.backpressured_pct) == (0.0, pytest.approx(50.0))
    assert (transform.in_flight, transform.credits) == (1, 3)
    assert status.shards[0].vectors == 50 and status.shards[0].upserted_per_s == pytest.approx(40)
    assert (status.documents, status.chunks, status.vectors) == (30, 60, 50)
    assert (tmp_path / "status.json").exists()
