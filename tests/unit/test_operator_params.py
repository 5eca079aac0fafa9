"""Typed operator parameters and hooks: a built-in operator's ``Params`` Struct, its defaults
(the topology's, from one place), and the hooks ``build`` checks before the actor runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pyarrow as pa
import pytest

from aaflow_stream import pipeline, spec
from aaflow_stream.errors import OperatorError
from aaflow_stream.operators import params
from aaflow_stream.operators.base import OperatorContext, build, resolve
from aaflow_stream.plan import ActorSpec, GraphSpec

CTX = OperatorContext("a.0", "a", 0, 1, Path("/tmp"))
HERE = __name__

# Each built-in's Params → the Spec Structs its defaults come from, and fields named otherwise
# there. A default not listed in any (PARAMS_ONLY) is one the topology does not have.
DEFAULTS_FROM: dict[type[msgspec.Struct], tuple[list[type[msgspec.Struct]], dict[str, str]]] = {
    params.CheckpointParams: ([spec.DurabilitySpec], {"interval_ms": "checkpoint_interval_ms"}),
    params.LoadParams: ([spec.LoadStage, spec.TopologySpec], {}),
    params.FeedParams: ([spec.LoadStage, spec.TopologySpec], {}),
    params.ChunkerParams: ([spec.TransformStage], {}),
    params.EmbedParams: ([spec.EmbedStage, spec.TopologySpec], {}),
    params.RouterParams: ([spec.UpsertStage], {}),
    params.ShardParams: (
        [spec.ShardSpec, spec.QuerySpec, spec.DurabilitySpec, spec.TopologySpec],
        {"query_endpoint": "endpoint"},
    ),
}
PARAMS_ONLY = {
    (params.LoadParams, "checkpoint"),  # a FileLoader used alone keeps no checkpoint
    (params.ShardParams, "embedder"),  # None: a hash embedder of the shards' dim
    (params.ShardParams, "serve"),  # the command's flag, not the topology's
    (params.FeedParams, "keys_dir"),  # resolved by the planner: <data_dir>/keys
}

TOPOLOGY = """
name: t
data_dir: {data}
sources: [{{paths: [{data}], watch: {watch}}}]
stages:
  - {{operator: load}}
  - {{operator: transform}}
  - {{operator: embed}}
  - {{operator: upsert}}
"""


def _default(info: msgspec.structs.FieldInfo) -> Any:
    if info.default_factory is not msgspec.NODEFAULT:
        return info.default_factory()
    return info.default


def test_every_params_default_is_the_topologys_default() -> None:
    for kind, (specs, renamed) in DEFAULTS_FROM.items():
        for info in msgspec.structs.fields(kind):
            if info.required or (kind, info.name) in PARAMS_ONLY:
                continue
            name = renamed.get(info.name, info.name)
            owners = [s for s in specs if name in s.__struct_fields__]
            assert owners, f"{kind.__name__}.{info.name} has a default the topology lacks"
            (owner_info,) = (f for f in msgspec.structs.fields(owners[0]) if f.name == name)
            assert _default(info) == _default(owner_info), (
                f"{kind.__name__}.{info.name} defaults to {_default(info)!r}, "
                f"{owners[0].__name__}.{name} to {_default(owner_info)!r}"
            )


def test_every_builtin_operator_of_the_pipeline_declares_its_params() -> None:
    declared = {getattr(resolve(ref), "Params", None) for ref in _operators(watch=False)}
    declared |= {getattr(resolve(ref), "Params", None) for ref in _operators(watch=True)}
    assert None not in declared
    assert declared <= set(DEFAULTS_FROM)


def _operators(*, watch: bool, tmp: Path = Path("/tmp")) -> dict[str, dict[str, Any]]:
    text = TOPOLOGY.format(data=tmp, watch=str(watch).lower())
    graph = pipeline.ingestion_graph(spec.decode(text))
    out = {s.operator: s.params for s in graph.stages}
    out.update({c.operator: c.params for s in graph.stages for c in s.chain})
    return out


@pytest.mark.parametrize("watch", [False, True])
def test_the_pipelines_params_convert_into_each_operators_params(watch: bool) -> None:
    for ref, given in _operators(watch=watch).items():
        kind = resolve(ref).Params
        converted = msgspec.convert(given, kind)
        assert msgspec.to_builtins(converted) == given, ref


def test_shards_take_the_topologys_wal_sync_by_default() -> None:
    assert params.ShardParams(data_dir="d", dim=8, threads=1).wal_sync == "interval"
    assert spec.DurabilitySpec().wal_sync == "interval"


def test_graph_and_actor_timeouts_default_to_the_topologys() -> None:
    timeouts, flow = spec.TimeoutSpec(), spec.FlowSpec()
    graph = GraphSpec(stages=[])
    assert (graph.eos_timeout_s, graph.drain_timeout_s) == (timeouts.eos_s, timeouts.drain_s)
    assert (graph.window, graph.encoding, graph.flush_ms) == (
        flow.window,
        flow.encoding,
        flow.flush_ms,
    )
    assert graph.heartbeat_s == timeouts.heartbeat_s
    fields = {f.name: f.default for f in msgspec.structs.fields(ActorSpec)}
    assert (fields["eos_timeout_s"], fields["drain_timeout_s"]) == (120.0, 30.0)
    assert fields["flush_ms"] == flow.flush_ms


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"chunk_size": "big"}, "$.chunk_size"),
        ({"chunk_size": 0}, "$.chunk_size"),
        ({"chunk_sise": 8}, "chunk_sise"),
        ({"prefer": "words"}, "$.prefer"),
    ],
)
def test_a_wrong_builtin_parameter_is_refused_naming_the_field(
    given: dict[str, Any], field: str
) -> None:
    with pytest.raises(OperatorError, match=r"transform:Chunker.*invalid parameters") as caught:
        build("aaflow_stream.operators.transform:Chunker", CTX, given, source=False)
    assert field in str(caught.value)


def test_a_wrong_nested_parameter_is_refused_naming_its_path() -> None:
    given = {"sources": [{"paths": ["/nowhere"], "formats": ["pdf"]}], "dead_letter_dir": "/d"}
    with pytest.raises(OperatorError, match=r"\$\.sources\[0\]\.formats\[0\]"):
        build("aaflow_stream.operators.load:FileLoader", CTX, given, source=True)


def test_a_missing_builtin_parameter_is_refused_naming_it() -> None:
    with pytest.raises(OperatorError, match="shards"):
        build("aaflow_stream.operators.upsert:ShardRouter", CTX, {}, source=False)


def test_a_builtin_gets_its_params_struct() -> None:
    router = build("aaflow_stream.operators.upsert:ShardRouter", CTX, {"shards": 2}, source=False)
    assert router._batch_size == spec.UpsertStage().batch_size


def test_a_custom_operator_still_takes_keyword_parameters() -> None:
    relay = build("aaflow_stream.operators.basic:PassThrough", CTX, {"delay_ms": 1}, source=False)
    assert relay._delay_s == pytest.approx(0.001)


# --- hooks -------------------------------------------------------------------------------------


class _Stage:
    def __init__(self, context: OperatorContext) -> None:
        self.context = context

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return [batch]

    def flush(self) -> Iterable[pa.RecordBatch]:
        return []


class ProcessWithoutBatch(_Stage):
    def process(self) -> Iterable[pa.RecordBatch]:  # type: ignore[override]
        return []


class IdleWithAnArgument(_Stage):
    def idle(self, since: float) -> list[pa.RecordBatch]:
        return []


class MetricsNotCallable(_Stage):
    metrics: ClassVar[dict[str, float]] = {"rows": 1.0}


class AcknowledgeWithoutAck(_Stage):
    def acknowledge(self) -> None:
        pass


class BatchesWithRequiredArgument:
    def __init__(self, context: OperatorContext) -> None:
        pass

    def batches(self, count: int) -> Iterator[pa.RecordBatch]:
        return iter([])


class EveryHook(_Stage):
    """Every optional hook, each callable as the runtime calls it (extras with defaults)."""

    async def serve(self) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def idle(self, *, final: bool = False) -> list[pa.RecordBatch]:
        return []

    def acknowledge(self, ack: Any, *more: Any) -> None:
        pass

    def unacknowledged(self) -> int:
        return 0

    def end_feed(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "hook", "source"),
    [
        ("ProcessWithoutBatch", "process", False),
        ("IdleWithAnArgument", "idle", False),
        ("MetricsNotCallable", "metrics", False),
        ("AcknowledgeWithoutAck", "acknowledge", False),
        ("BatchesWithRequiredArgument", "batches", True),
    ],
)
def test_a_hook_with_the_wrong_signature_is_refused_at_build(
    name: str, hook: str, source: bool
) -> None:
    with pytest.raises(OperatorError, match=rf"{name}'.*{hook}"):
        build(f"{HERE}:{name}", CTX, {}, source=source)


def test_an_operator_with_every_hook_callable_is_built() -> None:
    assert isinstance(build(f"{HERE}:EveryHook", CTX, {}, source=False), EveryHook)
