from __future__ import annotations

from pathlib import Path

import pytest

from aaflow_stream.errors import SpecError
from aaflow_stream.plan import GraphSpec, StageSpec, plan_actors, validate_graph


def _graph(*replicas: int) -> GraphSpec:
    return GraphSpec(
        stages=[StageSpec(f"s{i}", "m:f", replicas=r) for i, r in enumerate(replicas)], window=4
    )


def test_every_replica_links_to_every_replica_of_the_next_stage() -> None:
    actors = {
        a.name: a
        for a in plan_actors(_graph(1, 3, 2), Path("/r"), Path("/r/s"), supervisor_endpoint=None)
    }
    assert [o.peer for o in actors["s0.0"].outputs] == ["s1.0", "s1.1", "s1.2"]
    assert [o.peer for o in actors["s1.2"].outputs] == ["s2.0", "s2.1"]
    assert actors["s2.1"].input is not None
    assert actors["s2.1"].input.senders == ["s1.0", "s1.1", "s1.2"]
    assert actors["s0.0"].input is None and actors["s2.0"].outputs == []


def test_actors_are_planned_sinks_first() -> None:
    actors = plan_actors(_graph(1, 2, 1), Path("/r"), Path("/r/s"), supervisor_endpoint=None)
    assert [a.stage for a in actors] == ["s2", "s1", "s1", "s0"]


def test_only_sources_wait_for_start_under_a_supervisor() -> None:
    actors = plan_actors(_graph(1, 1), Path("/r"), Path("/r/s"), supervisor_endpoint="ipc://x")
    assert {a.name: a.wait_for_start for a in actors} == {"s0.0": True, "s1.0": False}


def test_an_invalid_graph_lists_every_problem_at_once() -> None:
    bad = GraphSpec(
        stages=[
            StageSpec("a", "nocolon", replicas=0),
            StageSpec("a", "m:f"),
            StageSpec("b c", "m:f"),
        ],
        window=0,
    )
    problems = validate_graph(bad)
    assert any("$.window" in p for p in problems)
    assert any("$.stages[0].replicas" in p for p in problems)
    assert any("$.stages[0].operator" in p for p in problems)
    assert any("duplicate stage name 'a'" in p for p in problems)
    assert any("$.stages[2].name" in p for p in problems)
    with pytest.raises(SpecError, match="replicas"):
        plan_actors(bad, Path("/r"), Path("/r/s"), supervisor_endpoint=None)


def test_a_socket_path_too_long_for_unix_sockets_is_refused() -> None:
    deep = Path("/" + "d" * 120)
    with pytest.raises(SpecError, match="longer than"):
        plan_actors(_graph(1, 1), deep, deep, supervisor_endpoint=None)
