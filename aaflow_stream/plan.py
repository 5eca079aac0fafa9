"""A dataflow graph description → the actors that run it: names, endpoints, links, start order.

Pure: no sockets, no processes. The supervisor writes each ``ActorSpec`` to a file and starts
``python -m aaflow_stream.runtime.actor FILE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import SpecError
from .spec import FlowSpec, TimeoutSpec, spec_field

# sun_path of a unix socket holds 108 bytes; ZeroMQ needs room for the terminating NUL.
MAX_IPC_PATH = 100


class ChainedOperator(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A stage that runs inside the actors of the stage it is chained to."""

    stage: str
    operator: str
    params: dict[str, Any] = {}


class StageSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One stage: an operator reference, its parameters and how many replicas run it."""

    name: str
    operator: str
    params: dict[str, Any] = {}
    replicas: int = 1
    launcher: Literal["process", "mpi"] = "process"
    # Modules the stage's actors never import (see runtime/imports.py).
    block_imports: list[str] = []
    # Stages run inside this stage's actors, after its operator, in order.
    chain: list[ChainedOperator] = []
    # Keep running after end of stream, until stopped (a shard that serves queries).
    linger: bool = False
    # The stage whose replicas this stage acknowledges durable rows to (its source).
    acks_to: str | None = None


class GraphSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A linear pipeline: every replica of a stage links to every replica of the next."""

    stages: list[StageSpec]
    # Defaults: the topology's (spec.py); ``stats_interval_s`` is the runtime's own.
    window: int = spec_field(FlowSpec, "window")
    encoding: str = spec_field(FlowSpec, "encoding")
    eos_timeout_s: float = spec_field(TimeoutSpec, "eos_s")
    drain_timeout_s: float = spec_field(TimeoutSpec, "drain_s")
    stats_interval_s: float = 0.5
    # A stage holding rows back for batching releases them after this long without input.
    flush_ms: float = spec_field(FlowSpec, "flush_ms")
    # An actor silent this long is suspect (runtime/liveness.py); None: the default there.
    heartbeat_s: float | None = spec_field(TimeoutSpec, "heartbeat_s")


class InputSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_endpoint: str
    control_endpoint: str
    senders: list[str]
    window: int


class OutputLink(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_endpoint: str
    control_endpoint: str
    peer: str


class ActorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything one actor process needs to know, written as JSON next to its log."""

    name: str
    stage: str
    replica: int
    replicas: int
    operator: str
    params: dict[str, Any]
    input: InputSpec | None
    outputs: list[OutputLink]
    window: int
    encoding: str
    run_dir: str
    supervisor_endpoint: str | None = None
    wait_for_start: bool = False
    eos_timeout_s: float = spec_field(TimeoutSpec, "eos_s")
    drain_timeout_s: float = spec_field(TimeoutSpec, "drain_s")
    stats_interval_s: float = 0.5
    flush_ms: float = spec_field(FlowSpec, "flush_ms")
    log_level: str = "INFO"
    block_imports: list[str] = []
    chain: list[ChainedOperator] = []
    linger: bool = False
    # A source that receives acknowledgements binds this PULL endpoint ...
    ack_endpoint: str | None = None
    # ... and a stage that sends them connects to every source replica's, by replica.
    ack_peers: list[str] = []
    # Record the stage timing trace into this directory (observe/trace.py); None: off.
    trace_dir: str | None = None

    @property
    def is_source(self) -> bool:
        return self.input is None


def actor_name(stage: str, replica: int) -> str:
    return f"{stage}.{replica}"


def validate_graph(graph: GraphSpec) -> list[str]:
    """Every problem with the graph at once (empty when it is valid)."""
    problems = []
    if not graph.stages:
        problems.append("$.stages: a graph needs at least one stage")
    if graph.window < 1:
        problems.append(f"$.window: must be >= 1, got {graph.window}")
    if graph.flush_ms <= 0:
        problems.append(f"$.flush_ms: must be > 0, got {graph.flush_ms}")
    if graph.heartbeat_s is not None and graph.heartbeat_s <= 0:
        problems.append(f"$.heartbeat_s: must be > 0, got {graph.heartbeat_s}")
    if graph.encoding not in ("auto", "buffers", "ipc"):
        problems.append(f"$.encoding: expected auto, buffers or ipc, got {graph.encoding!r}")
    seen: set[str] = set()
    for i, stage in enumerate(graph.stages):
        where = f"$.stages[{i}]"
        if not stage.name or not stage.name.replace("_", "").replace("-", "").isalnum():
            problems.append(f"{where}.name: {stage.name!r} must be letters, digits, '-' or '_'")
        if stage.name in seen:
            problems.append(f"{where}.name: duplicate stage name {stage.name!r}")
        seen.add(stage.name)
        if stage.replicas < 1:
            problems.append(f"{where}.replicas: must be >= 1, got {stage.replicas}")
        if ":" not in stage.operator:
            problems.append(f"{where}.operator: {stage.operator!r} is not 'module:callable'")
        if stage.acks_to is not None and stage.acks_to not in {s.name for s in graph.stages}:
            problems.append(f"{where}.acks_to: no stage named {stage.acks_to!r}")
    return problems


def plan_actors(
    graph: GraphSpec,
    run_dir: Path,
    socket_dir: Path,
    *,
    supervisor_endpoint: str | None,
    log_level: str = "INFO",
    trace_dir: Path | None = None,
) -> list[ActorSpec]:
    """The actors of ``graph``, sinks first (the order to start them in)."""
    problems = validate_graph(graph)
    if problems:
        raise SpecError("invalid graph:\n  " + "\n  ".join(problems))

    def endpoint(name: str, kind: str) -> str:
        path = socket_dir / f"{name}.{kind}"
        if len(str(path)) > MAX_IPC_PATH:
            raise SpecError(
                f"socket path {path} is longer than {MAX_IPC_PATH} bytes; "
                "use a shorter run directory"
            )
        return f"ipc://{path}"

    acked = {s.acks_to: s for s in graph.stages if s.acks_to is not None}
    by_name = {s.name: s for s in graph.stages}
    actors: list[ActorSpec] = []
    for index, stage in enumerate(graph.stages):
        upstream = graph.stages[index - 1] if index > 0 else None
        downstream = graph.stages[index + 1] if index + 1 < len(graph.stages) else None
        for replica in range(stage.replicas):
            name = actor_name(stage.name, replica)
            input_spec = None
            if upstream is not None:
                input_spec = InputSpec(
                    data_endpoint=endpoint(name, "d"),
                    control_endpoint=endpoint(name, "c"),
                    senders=[actor_name(upstream.name, r) for r in range(upstream.replicas)],
                    window=graph.window,
                )
            outputs = []
            if downstream is not None:
                for r in range(downstream.replicas):
                    peer = actor_name(downstream.name, r)
                    outputs.append(OutputLink(endpoint(peer, "d"), endpoint(peer, "c"), peer))
            ack_peers = []
            if stage.acks_to is not None:
                source = by_name[stage.acks_to]
                ack_peers = [
                    endpoint(actor_name(source.name, r), "a") for r in range(source.replicas)
                ]
            actors.append(
                ActorSpec(
                    name=name,
                    stage=stage.name,
                    replica=replica,
                    replicas=stage.replicas,
                    operator=stage.operator,
                    params=stage.params,
                    input=input_spec,
                    outputs=outputs,
                    window=graph.window,
                    encoding=graph.encoding,
                    run_dir=str(run_dir),
                    supervisor_endpoint=supervisor_endpoint,
                    wait_for_start=upstream is None and supervisor_endpoint is not None,
                    eos_timeout_s=graph.eos_timeout_s,
                    drain_timeout_s=graph.drain_timeout_s,
                    stats_interval_s=graph.stats_interval_s,
                    flush_ms=graph.flush_ms,
                    log_level=log_level,
                    block_imports=stage.block_imports,
                    chain=stage.chain,
                    linger=stage.linger,
                    ack_endpoint=endpoint(name, "a") if stage.name in acked else None,
                    ack_peers=ack_peers,
                    trace_dir=str(trace_dir) if trace_dir is not None else None,
                )
            )
    order = {stage.name: i for i, stage in enumerate(graph.stages)}
    return sorted(actors, key=lambda a: -order[a.stage])
