"""A watched directory with ``deletes: follow``, driven without processes: the continuous
loader (``operators/feed.py``) feeds the real transform and upsert router, whose rows reach
model shards that apply them in arrival order and acknowledge them; restarts drop every
process's state but the shards' and the files'.

The router sends a shard its pending tombstones before its pending chunks, so a delete sent
while an earlier upsert of the same document waits in the router is undone by that upsert:
the loader must never have two operations on one file in flight, and must know after a
restart which documents of a file the shards may hold, even when its reading never completed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from aaflow_stream.durability.acks import PendingAcks
from aaflow_stream.ingest.documents import Doc
from aaflow_stream.operators.base import OperatorContext, Routed
from aaflow_stream.operators.feed import ContinuousLoader
from aaflow_stream.operators.load import document_batch
from aaflow_stream.operators.params import CheckpointParams, ChunkerParams, FeedParams, RouterParams
from aaflow_stream.operators.transform import Chunker
from aaflow_stream.operators.upsert import ShardRouter
from aaflow_stream.spec import SourceSpec

SHARDS = 2
CHUNKER = ChunkerParams(chunk_size=32, overlap=0)


def _loader(root: Path) -> ContinuousLoader:
    context = OperatorContext("load.0", "load", 0, 1, root)
    params = FeedParams(
        sources=[SourceSpec(paths=[str(root / "watch")], watch=True, deletes="follow")],
        dead_letter_dir=str(root / "dead"),
        # No periodic save runs here (serve() is not started): only forced saves persist.
        checkpoint=CheckpointParams(dir=str(root / "ckpt"), shards=SHARDS, interval_ms=1e9),
        batch_docs=4,
    )
    return ContinuousLoader(context, params)


def _write(path: Path, docs: dict[str, str]) -> None:
    """Written whole (write, rename), as the soak and editors do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps({"doc_id": d, "text": t}) + "\n" for d, t in docs.items()))
    os.replace(tmp, path)


@dataclass
class Shards:
    """Shards as dicts, ``chunk_id -> (doc_id, doc_version)``; they outlive restarts."""

    stored: list[dict[int, tuple[str, int]]] = field(
        default_factory=lambda: [{} for _ in range(SHARDS)]
    )

    def apply(self, shard: int, batch: pa.RecordBatch) -> None:
        rows = self.stored[shard]
        if "keep_version" in batch.schema.names:
            for doc_id, keep in zip(
                batch.column("doc_id").to_pylist(),
                batch.column("keep_version").to_pylist(),
                strict=True,
            ):
                # Every chunk of the document but the version kept (DELETE_ALL: none).
                gone = [c for c, (d, v) in rows.items() if d == doc_id and v != keep]
                for c in gone:
                    del rows[c]
            return
        for chunk, doc_id, version in zip(
            batch.column("chunk_id").to_pylist(),
            batch.column("doc_id").to_pylist(),
            batch.column("doc_version").to_pylist(),
            strict=True,
        ):
            rows[chunk] = (doc_id, version)

    def docs(self) -> dict[str, set[tuple[int, int]]]:
        """doc_id -> its stored (chunk_id, doc_version), over every shard."""
        out: dict[str, set[tuple[int, int]]] = {}
        for rows in self.stored:
            for chunk, (doc_id, version) in rows.items():
                out.setdefault(doc_id, set()).add((chunk, version))
        return out


class Pipeline:
    """One run of the stages behind the loader: the transform, ``routers`` upsert replicas
    (rows held until ``flush``), and the shards' acknowledgements back to the loader."""

    def __init__(self, loader: ContinuousLoader, shards: Shards, routers: int = 1) -> None:
        context = OperatorContext("t.0", "t", 0, 1, Path("."))
        self._loader = loader
        self._shards = shards
        self._chunker = Chunker(context, CHUNKER)
        self._routers = [
            ShardRouter(context, RouterParams(shards=SHARDS, batch_size=100_000))
            for _ in range(routers)
        ]
        self._acks = [PendingAcks(f"shard.{s}", s) for s in range(SHARDS)]
        self._lsn = 0

    def send(self, batch: pa.RecordBatch, router: int = 0) -> None:
        for chunks in self._chunker.process(batch):
            self._deliver(self._routers[router].process(chunks))

    def flush(self, router: int | None = None) -> None:
        """What the routers hold reaches the shards (as an idle flush sends it)."""
        for r in range(len(self._routers)) if router is None else [router]:
            self._deliver(self._routers[r].idle())

    def _deliver(self, routed: Iterable[Routed]) -> None:
        for item in routed:
            shard, batch = item.replica, item.batch
            assert isinstance(batch, pa.RecordBatch)  # the router sends one batch a message
            self._shards.apply(shard, batch)
            self._lsn += 1
            self._acks[shard].add(self._lsn, batch)
            for _replica, ack in self._acks[shard].take(self._lsn):
                self._loader.acknowledge(ack)


class Feed:
    """The loader's batches, pulled by a task as an actor pulls them."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[pa.RecordBatch] = asyncio.Queue()

    async def quiet(self) -> list[pa.RecordBatch]:
        """Every batch the loader has to give now (its work is synchronous: a few loop
        iterations let it run until it waits for a change or an acknowledgement)."""
        for _ in range(20):
            await asyncio.sleep(0)
        out = []
        while not self.batches.empty():
            out.append(self.batches.get_nowait())
        return out


@asynccontextmanager
async def running(loader: ContinuousLoader) -> AsyncIterator[Feed]:
    """The loader's source loop until the scope ends: a restart (nothing saved) unless the
    test calls ``end_feed`` itself."""
    feed = Feed()

    async def pump() -> None:
        async for batch in loader.abatches():
            feed.batches.put_nowait(batch)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(pump())
        try:
            yield feed
        finally:
            task.cancel()


async def _settle(loader: ContinuousLoader, feed: Feed, pipeline: Pipeline) -> None:
    """Everything reaches the shards and is acknowledged, in the routers' order."""
    for _ in range(100):
        batches = await feed.quiet()  # what the last flush's acknowledgements let out too
        if not batches and not loader.unacknowledged():
            return
        for batch in batches:
            pipeline.send(batch)
        pipeline.flush()
    raise AssertionError("the loader never settled")


def _of(docs: dict[str, set[tuple[int, int]]], prefix: str) -> set[str]:
    return {d for d in docs if d.startswith(prefix)}


def _saved(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "ckpt" / "load.0.files.json").read_text())
    return data


def test_a_file_deleted_while_a_reading_of_it_is_in_flight_loses_its_documents(
    tmp_path: Path,
) -> None:
    """The soak's lost delete: a restart reads a file again (its completion was not saved);
    the file is deleted while that reading waits in the router; the delete must not go out
    before the reading is durable, or the router's order undoes it."""
    (tmp_path / "watch").mkdir()
    path = tmp_path / "watch" / "f.jsonl"
    _write(path, {f"f-{i}": f"document {i} " * 8 for i in range(3)})
    shards = Shards()

    async def main() -> None:
        loader = _loader(tmp_path)
        async with running(loader) as feed:
            await _settle(loader, feed, Pipeline(loader, shards))
        assert _of(shards.docs(), "f-") == {"f-0", "f-1", "f-2"}
        # Killed before the manifest recorded the file complete: the restart reads it again.
        loader = _loader(tmp_path)
        pipeline = Pipeline(loader, shards)
        async with running(loader) as feed:
            (again,) = await feed.quiet()
            assert again.column("text").null_count == 0
            pipeline.send(again)  # held in the router
            path.unlink()
            loader.changed([path])
            for batch in await feed.quiet():
                pipeline.send(batch)
            await _settle(loader, feed, pipeline)
            loader.end_feed()
        assert _of(shards.docs(), "f-") == set()
        assert str(path) not in json.dumps(_saved(tmp_path))

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_file_never_recorded_complete_and_deleted_while_down_loses_its_documents(
    tmp_path: Path,
) -> None:
    """Stored, but killed before its reading completed (or was saved): the restart does not
    find the file, and only the manifest can say that its documents are there."""
    (tmp_path / "watch").mkdir()
    path = tmp_path / "watch" / "g.jsonl"
    _write(path, {f"g-{i}": f"text of {i} " * 5 for i in range(4)})
    shards = Shards()

    async def main() -> None:
        loader = _loader(tmp_path)
        pipeline = Pipeline(loader, shards)
        async with running(loader) as feed:
            for batch in await feed.quiet():
                pipeline.send(batch)
            pipeline.flush()
        assert _of(shards.docs(), "g-") == {f"g-{i}" for i in range(4)}
        path.unlink()  # while nothing runs
        loader = _loader(tmp_path)
        async with running(loader) as feed:
            await _settle(loader, feed, Pipeline(loader, shards))
        assert _of(shards.docs(), "g-") == set()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_file_deleted_before_the_watcher_started_is_seen_once_it_runs(tmp_path: Path) -> None:
    """The initial scan found the file as recorded; it went before the watcher ran (a restart
    is that busy): the watcher's first answer starts a rescan that finds it gone."""
    (tmp_path / "watch").mkdir()
    path = tmp_path / "watch" / "h.jsonl"
    _write(path, {f"h-{i}": f"words {i} " * 4 for i in range(3)})
    shards = Shards()

    async def main() -> None:
        loader = _loader(tmp_path)
        async with running(loader) as feed:
            await _settle(loader, feed, Pipeline(loader, shards))
            loader.end_feed()
        loader = _loader(tmp_path)
        async with running(loader) as feed, asyncio.TaskGroup() as tg:
            assert await feed.quiet() == []  # as recorded
            path.unlink()
            serving = tg.create_task(loader.serve())  # the watcher starts only now
            deletes = await asyncio.wait_for(feed.batches.get(), 20)
            serving.cancel()
        assert deletes.column("text").null_count == deletes.num_rows == 3

    asyncio.run(asyncio.wait_for(main(), 30))


def _expected(files: dict[str, dict[str, str]]) -> dict[str, set[tuple[int, int]]]:
    """What the shards must hold once settled: the chunks of every document the files hold."""
    docs = [Doc(d, t, "s", 0) for held in files.values() for d, t in held.items()]
    out: dict[str, set[tuple[int, int]]] = {}
    if not docs:
        return out
    chunker = Chunker(OperatorContext("t.0", "t", 0, 1, Path(".")), CHUNKER)
    for chunks in chunker.process(document_batch([(d, i) for i, d in enumerate(docs)], 0)):
        for doc_id, chunk, version in zip(
            chunks.column("doc_id").to_pylist(),
            chunks.column("chunk_id").to_pylist(),
            chunks.column("doc_version").to_pylist(),
            strict=True,
        ):
            out.setdefault(doc_id, set()).add((chunk, version))
    return out


async def _schedule(root: Path, seed: int) -> None:
    """One seeded run: files written, rewritten and deleted, batches sent to either of two
    router replicas, flushes in any order, kills (nothing saved, the routers' rows lost) and
    clean stops; then everything settles and the shards must hold exactly the files."""
    rng = random.Random(seed)
    watch = root / "watch"
    files: dict[str, dict[str, str]] = {}  # name -> doc_id -> text, as on disk
    shards = Shards()
    serial = 0
    for _run in range(rng.randint(2, 4)):
        loader = _loader(root)
        pipeline = Pipeline(loader, shards, routers=2)
        async with running(loader) as feed:
            for _step in range(rng.randint(3, 10)):
                roll = rng.random()
                if roll < 0.3 or not files:
                    serial += 1
                    name = f"n{serial}.jsonl"
                    files[name] = {
                        f"{name}-{i}": f"{name} {i} " * rng.randint(1, 9)
                        for i in range(rng.randint(1, 4))
                    }
                    _write(watch / name, files[name])
                    loader.changed([watch / name])
                elif roll < 0.55:
                    name = rng.choice(sorted(files))
                    held = {d: t for d, t in files[name].items() if rng.random() < 0.7}
                    held.update({d: t + " again" for d, t in held.items() if rng.random() < 0.5})
                    serial += 1
                    held[f"{name}-{serial}"] = f"added {serial} " * rng.randint(1, 6)
                    files[name] = held
                    _write(watch / name, held)
                    loader.changed([watch / name])
                elif roll < 0.75:
                    name = rng.choice(sorted(files))
                    del files[name]
                    (watch / name).unlink()
                    if rng.random() < 0.8:  # the watcher may not have seen it before a kill
                        loader.changed([watch / name])
                for batch in await feed.quiet():
                    pipeline.send(batch, router=rng.randrange(2))
                if rng.random() < 0.5:
                    pipeline.flush(rng.randrange(2))
            if rng.random() < 0.3:  # a clean stop; otherwise a kill
                pipeline.flush()
                loader.end_feed()
    loader = _loader(root)
    async with running(loader) as feed:
        await _settle(loader, feed, Pipeline(loader, shards))
        loader.end_feed()
    assert shards.docs() == _expected(files), f"seed {seed}"
    saved = _saved(root)
    assert saved["pending"] == {}
    assert sorted(Path(k).name for k in saved["files"]) == sorted(files)


def test_any_schedule_of_changes_kills_and_flushes_leaves_exactly_what_the_files_hold(
    tmp_path: Path,
) -> None:
    for seed in range(24):
        root = tmp_path / str(seed)
        (root / "watch").mkdir(parents=True)
        asyncio.run(asyncio.wait_for(_schedule(root, seed), 30))
