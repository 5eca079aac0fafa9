"""The topology file → frozen msgspec Structs. No I/O beyond reading the file itself.

A topology declares the sources, the pipeline of stages (load, transform, any custom stages,
embed, upsert), the embedder, the shards, the flow-control window, limits and the data
directory. Decoding is strict: an unknown key, a wrong type or a missing field is an error that
names the field path (``$.stages[2].replicas``) and, where it can be found, the file line.
Then the whole topology is checked for problems that types cannot express, all listed at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import SpecError

Positive = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class SourceSpec(_Spec, frozen=True):
    """Files and directories (searched recursively) to ingest; .txt, .md and .jsonl.

    ``watch``: after the initial scan keep watching (``operators/feed.py``): new and changed
    files are ingested, ``up`` runs until stopped. ``deletes: follow`` removes the documents
    of a deleted file (``keep`` leaves them).
    """

    paths: list[str]
    formats: list[Literal["txt", "md", "jsonl"]] = msgspec.field(
        default_factory=lambda: ["txt", "md", "jsonl"]
    )
    watch: bool = False
    deletes: Literal["keep", "follow"] = "keep"


class _Stage(_Spec, frozen=True):
    # Run inside the actors of the stage before (Flink's operator chaining): batches pass
    # in memory, with no socket, no copy and no process of its own. Replicas must match.
    chain: bool = False


class LoadStage(_Stage, tag="load", tag_field="operator", frozen=True):
    name: Name = "load"
    replicas: Positive = 1
    batch_docs: Positive = 64


class TransformStage(_Stage, tag="transform", tag_field="operator", frozen=True):
    name: Name = "transform"
    replicas: Positive = 1
    chunk_size: Positive = 512
    overlap: Annotated[int, msgspec.Meta(ge=0)] = 64
    prefer: Literal["none", "paragraph", "sentence"] = "none"
    # Collapse whitespace runs and strip ends first. W1 (docs/benchmarks.md) cuts the raw
    # text: false.
    normalize: bool = True


class EmbedStage(_Stage, tag="embed", tag_field="operator", frozen=True):
    name: Name = "embed"
    replicas: Positive = 1
    batch_size: Positive = 256


class UpsertStage(_Stage, tag="upsert", tag_field="operator", frozen=True):
    name: Name = "upsert"
    replicas: Positive = 1
    batch_size: Positive = 2048


class CustomStage(_Stage, tag="custom", tag_field="operator", frozen=True, kw_only=True):
    """A user operator, ``module:callable`` (see ``operators.base`` for the contract)."""

    name: Name
    ref: str
    params: dict[str, Any] = {}
    replicas: Positive = 1


Stage = LoadStage | TransformStage | EmbedStage | UpsertStage | CustomStage


class HashEmbedderSpec(_Spec, tag="hash", tag_field="kind", frozen=True):
    dim: Positive = 384


class SentenceTransformerSpec(_Spec, tag="sentence-transformers", tag_field="kind", frozen=True):
    """A sentence-transformers model, loaded offline (``embedders/sentence_transformer.py``).

    ``model``: a packaged model (``all-MiniLM-L6-v2``, from the ``minilm`` extra) or a local
    model directory. ``dim``: known for packaged models, required for others; the model is
    checked against it when it loads, before the stage is ready.
    """

    model: str = "all-MiniLM-L6-v2"
    dim: Positive | None = None
    device: Annotated[str, msgspec.Meta(pattern=r"^(cpu|cuda(:\d+)?)$")] = "cpu"
    batch_size: Positive = 64  # rows per forward pass (model.encode's batch_size)
    normalize: bool = True  # unit vectors, so inner product is cosine similarity
    # torch and tokenizer threads per embed replica; default: the cores divided among the
    # embed replicas, at least 1 (replicas x threads beyond the cores only contend).
    threads: Positive | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


Embedder = HashEmbedderSpec | SentenceTransformerSpec


class ShardSpec(_Spec, frozen=True):
    """``count`` MPI ranks; each holds ``IndexIDMap2(index_factory(dim, index, metric))``."""

    count: Positive = 4
    index: str = "Flat"
    metric: Literal["ip", "l2"] = "ip"
    # FAISS (OpenMP) threads per rank; default: the cores divided among the ranks, at least 1.
    # More ranks' threads than cores spin against each other: a 4-rank search round on 2 cores
    # took 15 ms at the median with FAISS's default threads, 1.9 ms with one thread per rank.
    threads: Positive | None = None
    # A BM25 keyword index beside each vector shard (tantivy), for ``mode: hybrid`` queries;
    # it costs ~20 us of shard CPU per chunk ingested, so it is asked for (docs/answer.md).
    keywords: bool = False


class QuerySpec(_Spec, frozen=True):
    """The gateway on shard rank 0 (when ``up`` serves queries: ``--serve`` or ``--detach``)."""

    endpoint: str = "tcp://127.0.0.1:7070"
    max_batch: Positive = 64
    # Rounds run one at a time, so the queries that arrive during a round form the next
    # batch by themselves; waiting longer only delays a lone query. 0: no extra wait.
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # A collective round (search, count, delete) that has not finished on a rank after this
    # long means a rank is gone or wedged: the job is aborted and the graph restarted.
    round_timeout_s: PositiveFloat = 30.0


MEMORY_KINDS = ("summary", "intermediate", "state")
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


def _kind_weights() -> dict[str, float]:
    return {"knowledge": 0.0, "summary": 0.05, "intermediate": 0.02, "state": 0.0}


class MemoryWeights(_Spec, frozen=True):
    """How a dual-path query (``mode: memory`` or ``both``) ranks knowledge chunks and memory
    entries on one scale (docs/memory.md)::

        score = sim * similarity + kind[kind or "knowledge"] + recency * 2 ** (-age_s / half_life_s)

    ``similarity`` is the inner product (``ip``) or minus the squared L2 distance (``l2``);
    ``age_s`` is the round's time minus the row's ``ts`` (a chunk's document time, a memory
    entry's last write), never negative. ``mode: knowledge`` keeps the plain FAISS score."""

    sim: PositiveFloat = 1.0
    kind: dict[str, float] = msgspec.field(default_factory=_kind_weights)
    recency: NonNegative = 0.1
    half_life_s: PositiveFloat = 86_400.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kind) - {"knowledge", *MEMORY_KINDS})
        if unknown:
            raise ValueError(
                f"unknown kind {unknown[0]!r} in memory weights: the kinds are "
                f"knowledge, {', '.join(MEMORY_KINDS)}"
            )

    def of_kind(self, kind: str) -> float:
        return self.kind.get(kind, 0.0)


class MemorySpec(_Spec, frozen=True):
    """The memory index beside the knowledge index on every shard rank (docs/memory.md).

    ``near_duplicate``: a new entry this close to an entry of the same session merges into it
    (its weight added, its time updated) instead of adding a row: with ``ip`` the least inner
    product, with ``l2`` the largest squared distance. A session keeps at most
    ``max_session_entries`` entries and ``max_session_bytes`` of text; over either, the
    entries of least weight go first, the oldest first among equals."""

    weights: MemoryWeights = MemoryWeights()
    near_duplicate: float = 0.95
    max_session_entries: Positive = 1000
    max_session_bytes: Positive = 1 << 20


class ExtractiveSpec(_Spec, tag="extractive", tag_field="kind", frozen=True):
    """No model: the answer is the context's best sentences for the question."""

    sentences: Positive = 3


class OpenAIChatSpec(_Spec, tag="openai", tag_field="kind", frozen=True):
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, Ollama).
    The API key is read from the environment variable ``api_key_env`` names, if any."""

    url: str
    model: str
    api_key_env: str | None = None
    max_tokens: Positive = 512
    timeout_s: PositiveFloat = 60.0
    system: str = (
        "Answer the question from the numbered context only. Cite the pieces you use as [n]. "
        "If the context does not hold the answer, say so."
    )


GeneratorSpec = ExtractiveSpec | OpenAIChatSpec


class AnswerSpec(_Spec, frozen=True):
    """``answer``: retrieve -> reason -> generate (docs/answer.md)."""

    generator: GeneratorSpec = ExtractiveSpec()
    k: Positive = 10  # candidates retrieved per question
    budget_chars: Positive = 4000  # context a generator reads per question
    dedup: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8  # shingle Jaccard of a duplicate
    max_concurrent: Positive = 8  # answers in progress at once; 8x as many wait, more: busy


class CacheSpec(_Spec, frozen=True):
    """The gateway's semantic cache: a query whose vector's cosine similarity to a cached
    query's is at least ``threshold``, with the same mode, filter, k, session and weights,
    gets the cached result without a round (docs/answer.md: what invalidates an entry).

    Off unless asked for: while documents stream in, the gateway learns of a new document when
    its tombstone reaches the gateway's own rank, which can be after another rank applied its
    chunks, so a cached result may briefly be older than a round that already saw them."""

    enabled: bool = False
    capacity: Positive = 4096
    ttl_s: PositiveFloat = 300.0
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.98


class FlowSpec(_Spec, frozen=True):
    window: Positive = 16
    encoding: Literal["auto", "buffers", "ipc"] = "auto"
    # Rows a stage holds back for batching (embed micro-batches, upsert per-shard batches)
    # go out after at most this long without input, so a trickle is not stuck in them.
    flush_ms: PositiveFloat = 50.0


class IngestSpec(_Spec, frozen=True):
    """The ingest endpoint (a ROUTER on load replica 0): ``Client.ingest`` / ``aaflow-stream
    ingest`` send documents, the reply comes once they are durable.

    ``max_pending``: requests read and not yet durable; while that many are, the endpoint
    reads no more (a flooding client is slowed; ZeroMQ holds at most ``max_queued`` messages
    per client connection). ``max_request_mb``: a larger request gets a ``bad_request`` reply
    (a frame beyond a hard cap a little above it is dropped by ZeroMQ with the connection).
    """

    endpoint: str = "tcp://127.0.0.1:7071"
    max_pending: Positive = 32
    max_queued: Positive = 4
    max_request_mb: PositiveFloat = 32.0


class LimitSpec(_Spec, frozen=True):
    """What one document may hold, in UTF-8 bytes. ``doc_id`` and ``source`` are copied into
    every chunk (and every log line about it), so they are bounded apart from the text."""

    max_doc_bytes: Positive = 10 * 1024 * 1024
    max_doc_id_bytes: Positive = 1024
    max_source_bytes: Positive = 4096  # a file's source is its path: PATH_MAX on Linux


class EndpointSpec(_Spec, frozen=True):
    """Where sockets live. ``ipc`` keeps everything on this host (and off the network)."""

    transport: Literal["ipc", "tcp"] = "ipc"
    host: str = "127.0.0.1"


class TimeoutSpec(_Spec, frozen=True):
    """``heartbeat_s``: an actor that sent nothing this long (every actor reports its stats
    every 0.5 s) is judged by its event-loop thread: stopped or blocked, it is declared hung,
    killed and the graph restarted; busy in an operator call, it gets 12 times as long.
    Default (unset): 5 stats intervals, at least 5 s (``runtime/liveness.py``)."""

    start_s: PositiveFloat = 60.0
    drain_s: PositiveFloat = 30.0
    eos_s: PositiveFloat = 120.0
    heartbeat_s: PositiveFloat | None = None


class RestartSpec(_Spec, frozen=True):
    """After a crash the supervisor restarts the failed region this many times, waiting
    ``backoff_s`` (doubled each time, at most ``max_backoff_s``) before each try."""

    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    max_backoff_s: PositiveFloat = 5.0


class MetricsSpec(_Spec, frozen=True):
    """The supervisor's Prometheus endpoint (``observe/metrics.py``): ``http://host:port/metrics``.
    No ``metrics`` section: no endpoint. ``port: 0``: a free port, shown in ``status.json``."""

    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    host: str = "127.0.0.1"


class DurabilitySpec(_Spec, frozen=True):
    """How shards make upserts durable before they acknowledge them.

    The mechanism: docs/architecture.md, "Shards".

    ``wal_sync``: ``batch`` fsyncs the write-ahead log after every batch; ``interval`` fsyncs
    at most every ``sync_interval_ms`` (group commit: fewer fsyncs, acks wait for the next one);
    ``none`` keeps no log: a batch is durable, and acknowledged to its source, only once a
    snapshot holds it, so after a crash the sources send again everything since the last
    snapshot (no log writes: for bulk loads that can be redone; ``snapshot_wal_mb`` then
    counts the bytes applied since the snapshot).
    A snapshot (index + metadata) is taken every ``snapshot_interval_s`` or once the log has
    grown by ``snapshot_wal_mb``, whichever comes first, and the log is truncated after it.
    """

    wal_sync: Literal["batch", "interval", "none"] = "interval"
    sync_interval_ms: PositiveFloat = 20.0
    snapshot_interval_s: PositiveFloat = 300.0
    snapshot_wal_mb: PositiveFloat = 512.0
    # A shard whose disk is full pauses ingestion (backpressure) and retries; it gives up
    # (the actor fails) after this long.
    full_disk_wait_s: PositiveFloat = 600.0
    # How often a source persists its checkpoint (the contiguous acknowledged prefix).
    checkpoint_interval_ms: PositiveFloat = 200.0
    restart: RestartSpec = RestartSpec()


class TopologySpec(_Spec, frozen=True, kw_only=True):
    name: Name
    sources: list[SourceSpec] = []
    stages: list[Stage]
    data_dir: str
    embedder: Embedder = HashEmbedderSpec()
    shards: ShardSpec = ShardSpec()
    flow: FlowSpec = FlowSpec()
    limits: LimitSpec = LimitSpec()
    endpoints: EndpointSpec = EndpointSpec()
    timeouts: TimeoutSpec = TimeoutSpec()
    query: QuerySpec = QuerySpec()
    memory: MemorySpec = MemorySpec()
    answer: AnswerSpec = AnswerSpec()
    cache: CacheSpec = CacheSpec()
    durability: DurabilitySpec = DurabilitySpec()
    ingest: IngestSpec | None = None
    metrics: MetricsSpec | None = None
    run_dir: str | None = None

    @property
    def continuous(self) -> bool:
        """A watched source or an ingest endpoint: the feed runs until stopped."""
        return self.ingest is not None or any(s.watch for s in self.sources)

    def stage(self, kind: type[Any]) -> Any:
        return next(s for s in self.stages if isinstance(s, kind))


def _line_of(raw: str, path: str, message: str) -> int | None:
    """Best-effort file line of the value a msgspec error path points at.

    Follows ``$.key`` and ``[n]`` steps through block-style YAML (flow-style maps inside are
    fine); an unknown field's own name, quoted in the message, is the last step.
    """
    steps: list[str | int] = [
        key if key else int(index) for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", path)
    ]
    unknown = re.search(r"unknown field `([^`]+)`", message)
    if unknown:
        steps.append(unknown.group(1))
    position, found = 0, False
    for step in steps:
        if isinstance(step, int):
            items = list(re.compile(r"^\s*-\s", re.MULTILINE).finditer(raw, position))
            if len(items) <= step:
                break
            match: re.Match[str] | None = items[step]
        else:
            match = re.compile(rf"(^|[{{,\s]){re.escape(step)}\s*:", re.MULTILINE).search(
                raw, position
            )
        if match is None:
            break
        position, found = match.end(), True
    return raw.count("\n", 0, position) + 1 if found else None


def problems(topology: TopologySpec) -> list[str]:
    """Everything wrong with a decoded topology that its types cannot express."""
    found = []
    kinds = [type(s) for s in topology.stages]
    for required, label in ((LoadStage, "load"), (EmbedStage, "embed"), (UpsertStage, "upsert")):
        if kinds.count(required) != 1:
            found.append(
                f"$.stages: needs exactly one '{label}' stage, found {kinds.count(required)}"
            )
    if kinds and kinds[0] is not LoadStage:
        found.append("$.stages[0]: the first stage must be 'load'")
    if kinds and kinds[-1] is not UpsertStage:
        found.append(f"$.stages[{len(kinds) - 1}]: the last stage must be 'upsert'")
    if EmbedStage in kinds and UpsertStage in kinds and kinds.index(EmbedStage) != len(kinds) - 2:
        found.append("$.stages: 'embed' must come right before 'upsert'")
    names = [s.name for s in topology.stages]
    for i, name in enumerate(names):
        if names.index(name) != i:
            found.append(f"$.stages[{i}].name: duplicate stage name {name!r}")
    for i, stage in enumerate(topology.stages):
        if isinstance(stage, TransformStage) and stage.overlap >= stage.chunk_size:
            found.append(f"$.stages[{i}].overlap: must be < chunk_size ({stage.chunk_size})")
        if isinstance(stage, CustomStage) and not re.fullmatch(r"[\w.]+:[\w.]+", stage.ref):
            found.append(f"$.stages[{i}].ref: {stage.ref!r} is not 'module:callable'")
    for i, stage in enumerate(topology.stages):
        if not stage.chain:
            continue
        if i == 0:
            found.append("$.stages[0].chain: the first stage has no stage to chain onto")
        elif stage.replicas != topology.stages[i - 1].replicas:
            found.append(
                f"$.stages[{i}].replicas: a chained stage runs in the actors of the stage "
                f"before, so it needs its replicas ({topology.stages[i - 1].replicas}), "
                f"got {stage.replicas}"
            )
    if not topology.sources and topology.ingest is None:
        found.append("$.sources: at least one source is needed (or an ingest endpoint)")
    for i, source in enumerate(topology.sources):
        if not source.paths:
            found.append(f"$.sources[{i}].paths: at least one path is needed")
    return found


def decode(raw: str, origin: str = "<topology>") -> TopologySpec:
    """Decode and check a topology; SpecError lists every problem found."""
    # Here, not at the top: every actor and rank imports this module for the parameter
    # types, and only the commands read YAML (~10 ms of start-up a process).
    import yaml

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise SpecError(f"{origin}: not valid YAML: {exc}") from exc
    try:
        topology = msgspec.convert(data, TopologySpec)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rpartition(" - at `")[2].rstrip("`") if " - at `" in message else ""
        line = _line_of(raw, path, message) if path else None
        where = f"{origin}:{line}" if line else origin
        raise SpecError(f"{where}: {message}") from exc
    found = problems(topology)
    if found:
        raise SpecError(f"{origin}: {len(found)} problem(s):\n  " + "\n  ".join(found))
    return topology


def load(path: Path) -> TopologySpec:
    try:
        raw = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read topology {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"topology {path} is not UTF-8 text: {exc}") from exc
    return decode(raw, str(path))


def json_schema() -> dict[str, Any]:
    return msgspec.json.schema(TopologySpec)


def spec_field(spec: type[msgspec.Struct], name: str) -> Any:
    """A Struct field whose default is the one ``spec.name`` has: a default lives in one
    place, the topology's Spec, and operator parameters and actor specs take it from there."""
    for info in msgspec.structs.fields(spec):
        if info.name != name:
            continue
        if info.default is not msgspec.NODEFAULT:
            return msgspec.field(default=info.default)
        if info.default_factory is not msgspec.NODEFAULT:
            return msgspec.field(default_factory=info.default_factory)
        raise TypeError(f"{spec.__name__}.{name} has no default")
    raise TypeError(f"{spec.__name__} has no field {name!r}")
