from __future__ import annotations

import pytest

from aaflow_stream import pipeline, spec
from aaflow_stream.errors import SpecError

HEAD = "name: t\ndata_dir: /tmp/d\nsources: [{paths: [x]}]\n"


def _stages(*lines: str) -> str:
    return HEAD + "stages:\n" + "".join(f"  - {line}\n" for line in lines)


def test_a_valid_topology_decodes_with_defaults() -> None:
    t = spec.decode(
        _stages(
            "{operator: load}", "{operator: transform}", "{operator: embed}", "{operator: upsert}"
        )
    )
    assert t.shards.count == 4 and t.embedder.dim == 384 and t.flow.window == 16
    assert [s.name for s in t.stages] == ["load", "transform", "embed", "upsert"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _stages("{operator: load, replicas: two}"),
            "Expected `int`, got `str` - at `$.stages[0].replicas`",
        ),
        (_stages("{operator: load, replica: 2}"), "unknown field `replica`"),
        (
            _stages("{operator: load}", "{operator: embed, batch_size: 0}", "{operator: upsert}"),
            "Expected `int` >= 1 - at `$.stages[1].batch_size`",
        ),
        (
            HEAD.replace("data_dir: /tmp/d\n", "") + "stages: [{operator: load}]\n",
            "missing required field `data_dir`",
        ),
        (_stages("{operator: load}", "{operator: upsert}"), "needs exactly one 'embed' stage"),
        (
            _stages(
                "{operator: load}",
                "{operator: transform, chunk_size: 64, overlap: 64}",
                "{operator: embed}",
                "{operator: upsert}",
            ),
            "overlap: must be < chunk_size",
        ),
        (
            _stages("{operator: load, chain: true}", "{operator: embed}", "{operator: upsert}"),
            "the first stage has no stage to chain onto",
        ),
        (
            _stages(
                "{operator: load}",
                "{operator: embed, replicas: 2}",
                "{operator: upsert, chain: true}",
            ),
            "needs its replicas (2), got 1",
        ),
        ("name: t\n  bad: [indent", "not valid YAML"),
    ],
)
def test_a_bad_topology_is_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        spec.decode(text)
    assert message in str(error.value)


def test_an_error_names_the_file_line_of_the_bad_value() -> None:
    text = _stages("{operator: load}", "{operator: embed, replicas: two}", "{operator: upsert}")
    with pytest.raises(SpecError, match=r"<topology>:6: Expected `int`"):
        spec.decode(text)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SpecError) as error:
        spec.decode(_stages("{operator: embed}", "{operator: load}"))
    text = str(error.value)
    assert "3 problem(s)" in text and "first stage must be 'load'" in text


def test_chained_stages_run_in_the_actors_of_the_stage_before() -> None:
    t = spec.decode(
        _stages(
            "{operator: load}",
            "{operator: transform, chain: true}",
            "{operator: embed, replicas: 2}",
            "{operator: upsert, replicas: 2, chain: true}",
        )
    )
    graph = pipeline.ingestion_graph(t)
    assert [s.name for s in graph.stages] == ["load", "embed", "shard"]
    assert [c.stage for c in graph.stages[0].chain] == ["transform"]
    assert [c.stage for c in graph.stages[1].chain] == ["upsert"]
    assert graph.stages[1].replicas == 2
    assert pipeline.stage_order(t) == ["load", "transform", "embed", "upsert", "shard"]


def test_the_json_schema_describes_the_topology() -> None:
    schema = spec.json_schema()
    assert "TopologySpec" in str(schema)
