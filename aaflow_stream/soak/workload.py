"""The soak's load: two feeds and the query clients, all recorded and entered in the ledger.

- The ingest endpoint (``AsyncClient.ingest``): new documents, new versions of acknowledged
  ones (``--update-ratio``) and, through the gateway, deletes (``--delete-ratio``), at
  ``--rate-docs`` in all. A call that fails with a transport error is sent again, the same
  versions, until the engine acknowledges it: so the ledger never has to guess.
- A watched directory, when the topology has one: JSONL files written whole (write, rename),
  rewritten with some documents changed or dropped, and deleted. The watcher acknowledges
  nothing to a client, so a file counts as acknowledged once every document it implies reads
  back exactly through the query API (its ``lag`` is write to read-back).
- ``--query-clients`` clients, alternately sync (``Client``, a thread each) and async
  (``AsyncClient``): half their queries are free text, half read a recently acknowledged
  document back through a query filtered on its own source and must find exactly the chunks
  of its acknowledged version (or none after a delete): a read-your-writes check.

A document is never the subject of two operations at once (see ``ledger.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..client import AsyncClient, Client
from ..errors import AaflowError
from ..query.protocol import Hit, QueryFilter
from . import corpus
from .audit import QUERY_K, ChunkModel
from .ledger import Entry, Ledger
from .lifecycle import Target
from .options import SoakOptions
from .record import TRANSIENT, Recorder

TICK_S = 0.2
MAX_CALLS = 8  # ingest and delete calls in flight; past it the engine is behind: wait
FILE_SHARE = 0.2  # of --rate-docs, through the watched directory when there is one
RETRY_S = 1.0
PROBE_TIMEOUT_S = 5.0
OVERDUE_SLACK_S = 2.0  # an answer this much later than its timeout is a hang
FREE_K = 10


@dataclass(frozen=True)
class _Check:
    """A read-your-writes query: the document's chunks as acknowledged."""

    doc_id: str
    entry: Entry
    expected: frozenset[tuple[int, str]]  # (seq, text); empty after a delete
    text: str
    where: QueryFilter


class Workload:
    def __init__(
        self,
        options: SoakOptions,
        target: Target,
        ledger: Ledger,
        recorder: Recorder,
        model: ChunkModel,
    ) -> None:
        self._options = options
        self._target = target
        self._ledger = ledger
        self._recorder = recorder
        self._model = model
        self._seed = options.seed
        self._rng = random.Random(f"{options.seed}:feed")
        self._watch_dir = target.watch_root / ledger.prefix if target.watch_root else None
        share = FILE_SHARE if self._watch_dir is not None else 0.0
        self._api_rate = options.rate_docs * (1 - share)
        self._file_rate = options.rate_docs * share
        self._feeding = True
        self._querying = threading.Event()
        self._give_up_at = float("inf")  # retries stop here (the end of the settle)
        self._calls: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: list[threading.Thread] = []
        # The watched directory: file -> {number: version}; files written and not yet read back.
        self._files: dict[str, dict[int, int]] = {}
        self._unseen: dict[str, list[tuple[str, int, int, bool]]] = {}
        self._file_numbers = 0
        self._ingest = AsyncClient(
            None,
            ingest_endpoint=target.ingest_endpoint,
            max_request_bytes=target.max_request_bytes,
        )
        self._gateway = AsyncClient(target.query_endpoint, timeout_s=options.query_timeout_s)
        self._deleter = AsyncClient(target.query_endpoint, timeout_s=options.ingest_timeout_s)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._querying.set()
        self._tasks.append(asyncio.create_task(self._feed_api(), name="soak-feed-api"))
        if self._watch_dir is not None:
            self._watch_dir.mkdir(parents=True, exist_ok=True)
            self._tasks.append(asyncio.create_task(self._feed_files(), name="soak-feed-files"))
            self._tasks.append(asyncio.create_task(self._read_back_files(), name="soak-files"))
        for i in range(self._options.query_clients):
            if i % 2 == 0:
                thread = threading.Thread(target=self._sync_client, args=(i,), daemon=True)
                thread.start()
                self._threads.append(thread)
            else:
                self._tasks.append(asyncio.create_task(self._async_client(i)))

    async def stop(self, settle_s: float) -> None:
        """Stop sending and querying; wait (at most ``settle_s``) until every operation is
        acknowledged and every written file read back. What is left stays pending."""
        self._feeding = False
        self._querying.clear()
        self._give_up_at = time.time() + settle_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, self._options.query_timeout_s + 5)
        # Polls two collections and a deadline: simpler than an event per change.
        while (self._calls or self._unseen) and time.time() < self._give_up_at:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for task in [*self._tasks, *self._calls]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._calls, return_exceptions=True)
        for client in (self._ingest, self._gateway, self._deleter):
            await client.aclose()

    # --- the ingest endpoint ------------------------------------------------------------------

    def _spawn(self, call: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(call)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _feed_api(self) -> None:
        credit = 0.0
        while self._feeding:
            await asyncio.sleep(TICK_S)
            credit = min(credit + self._api_rate * TICK_S, self._api_rate + 1)
            if len(self._calls) >= MAX_CALLS:
                continue
            count, credit = int(credit), credit - int(credit)
            now = time.time()
            writes: list[tuple[str, int, int]] = []
            deletes: list[str] = []
            for _ in range(count):
                roll = self._rng.random()
                picked = None
                if roll < self._options.delete_ratio + self._options.update_ratio:
                    picked = self._ledger.pick(self._rng, "api")
                if picked is not None and roll < self._options.delete_ratio:
                    deletes.append(self._begin(picked.number, picked.version, True, now))
                elif picked is not None:
                    version = picked.version + 1
                    writes.append(
                        (self._begin(picked.number, version, False, now), *(picked.number, version))
                    )
                else:
                    number = self._ledger.new_number()
                    writes.append((self._begin(number, 1, False, now), number, 1))
            if writes:
                self._recorder.sent_docs(len(writes), now)
                self._spawn(self._send(writes))
            if deletes:
                self._recorder.sent_docs(len(deletes), now)
                self._spawn(self._delete(deletes))

    def _begin(self, number: int, version: int, delete: bool, at: float) -> str:
        return self._ledger.begin(number, version=version, delete=delete, feed="api", at=at)

    def _document(self, number: int, version: int) -> dict[str, Any]:
        return {
            "doc_id": self._ledger.doc_id(number),
            "text": corpus.text(self._seed, number, version),
            "source": corpus.source_of(self._ledger.prefix, number),
        }

    async def _retrying(self, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` until it answers; a transport error is retried (until the settle gives
        up: then None), any other error is recorded and ends it (None)."""
        while True:
            started = time.time()
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = self._recorder.exception(op, exc, started)
                if kind not in TRANSIENT or time.time() > self._give_up_at:
                    return None
            await asyncio.sleep(RETRY_S)

    async def _send(self, docs: list[tuple[str, int, int]], timeout_s: float | None = None) -> bool:
        payload = [self._document(number, version) for _, number, version in docs]
        timeout = timeout_s or self._options.ingest_timeout_s
        result = await self._retrying(
            "ingest", lambda: self._ingest.ingest(payload, timeout_s=timeout)
        )
        if result is None:
            if time.time() <= self._give_up_at:  # refused for good: nothing was stored
                for doc_id, _, _ in docs:
                    self._ledger.abandon(doc_id)
            return False
        refused = {r.index: r.reason for r in result.rejected}
        now = time.time()
        for index, (doc_id, _, _) in enumerate(docs):
            if index in refused:
                self._recorder.error("ingest", "rejected", now, f"{doc_id}: {refused[index]}")
                self._ledger.abandon(doc_id)
            else:
                self._recorder.acknowledged(self._ledger.acknowledge(doc_id, now), now)
        return True

    async def _delete(self, doc_ids: list[str]) -> None:
        removed = await self._retrying("delete", lambda: self._deleter.delete(doc_ids))
        if removed is None:
            return
        now = time.time()
        for doc_id in doc_ids:
            self._recorder.acknowledged(self._ledger.acknowledge(doc_id, now), now)

    async def probe(self, deadline: float) -> bool:
        """One new document through the ingest endpoint, acknowledged and read back (until
        ``deadline``): the engine is whole again after a fault."""
        number = self._ledger.new_number()
        now = time.time()
        doc_id = self._begin(number, 1, False, now)
        self._recorder.sent_docs(1, now)
        payload = [self._document(number, 1)]
        while time.time() < deadline:
            started = time.time()
            try:
                result = await self._ingest.ingest(payload, timeout_s=PROBE_TIMEOUT_S)
            except AaflowError as exc:
                self._recorder.exception("probe", exc, started)
                await asyncio.sleep(0.5)
                continue
            if result.rejected:
                self._recorder.error("probe", "rejected", started, str(result.rejected[0]))
                self._ledger.abandon(doc_id)
                return False
            now = time.time()
            self._recorder.acknowledged(self._ledger.acknowledge(doc_id, now), now)
            break
        else:
            return False
        while time.time() < deadline:
            check = self._plan_check(doc_id)
            if check is None:
                return True  # a newer operation took it over: it was acknowledged
            started = time.time()
            try:
                hits = await self._gateway.query(check.text, k=QUERY_K, where=check.where)
            except AaflowError as exc:
                self._recorder.exception("probe", exc, started)
                await asyncio.sleep(0.5)
                continue
            self._recorder.query(time.time() - started, True)
            return self._judge(check, hits, "probe")
        return False

    # --- the watched directory ----------------------------------------------------------------

    async def _feed_files(self) -> None:
        assert self._watch_dir is not None
        every = self._options.watch_every_s
        while self._feeding:
            await asyncio.sleep(every)
            if not self._feeding:
                break
            idle = sorted(set(self._files) - set(self._unseen))
            roll = self._rng.random()
            if idle and roll < 0.15:
                self._delete_file(self._rng.choice(idle))
            elif idle and roll < 0.45:
                self._change_file(self._rng.choice(idle))
            else:
                self._new_file(max(1, round(self._file_rate * every)))

    def _write(self, name: str, docs: dict[int, int]) -> None:
        assert self._watch_dir is not None
        lines = [
            json.dumps(self._document(number, version)) + "\n" for number, version in docs.items()
        ]
        tmp = self._watch_dir / f".{name}.tmp"
        tmp.write_text("".join(lines))
        os.replace(tmp, self._watch_dir / name)  # whole: the watcher never sees half a file

    def _expect(self, name: str, ops: list[tuple[str, int, int, bool]], at: float) -> None:
        if ops:
            self._unseen[name] = ops
            self._recorder.sent_docs(len(ops), at)

    def _file_op(
        self, number: int, version: int, delete: bool, at: float
    ) -> tuple[str, int, int, bool]:
        doc_id = self._ledger.begin(number, version=version, delete=delete, feed="file", at=at)
        return doc_id, number, version, delete

    def _new_file(self, count: int) -> None:
        self._file_numbers += 1
        name = f"f{self._file_numbers:05d}.jsonl"
        docs = {self._ledger.new_number(): 1 for _ in range(count)}
        now = time.time()
        ops = [self._file_op(n, 1, False, now) for n in docs]
        self._files[name] = docs
        self._write(name, docs)
        self._expect(name, ops, now)

    def _change_file(self, name: str) -> None:
        before = self._files[name]
        after: dict[int, int] = {}
        ops = []
        now = time.time()
        for number, version in before.items():
            roll = self._rng.random()
            if roll < 0.2 and len(before) > 1:  # dropped from the file
                if self._target.follow:
                    ops.append(self._file_op(number, version, True, now))
            elif roll < 0.7:
                after[number] = version + 1
                ops.append(self._file_op(number, version + 1, False, now))
            else:
                after[number] = version  # read again, same version: replaces itself
        added = self._ledger.new_number()
        after[added] = 1
        ops.append(self._file_op(added, 1, False, now))
        self._files[name] = after
        self._write(name, after)
        self._expect(name, ops, now)

    def _delete_file(self, name: str) -> None:
        assert self._watch_dir is not None
        docs = self._files.pop(name)
        now = time.time()
        ops = []
        if self._target.follow:  # with deletes: keep, its documents stay as they are
            ops = [self._file_op(n, v, True, now) for n, v in docs.items()]
        (self._watch_dir / name).unlink()
        self._expect(f"{name} (deleted)", ops, now)

    async def _read_back_files(self) -> None:
        """Acknowledge a file's operations once each reads back exactly."""
        while True:
            await asyncio.sleep(0.5)
            for name, ops in list(self._unseen.items()):
                if not await self._file_seen(ops):
                    continue
                now = time.time()
                for doc_id, _, _, _ in ops:
                    self._recorder.acknowledged(self._ledger.acknowledge(doc_id, now), now)
                del self._unseen[name]

    async def _file_seen(self, ops: list[tuple[str, int, int, bool]]) -> bool:
        for doc_id, number, version, delete in ops:
            expected = frozenset() if delete else self._chunks(number, version)
            check = _Check(
                doc_id,
                Entry(number, version, delete, "file", 0.0),
                expected,
                corpus.text(self._seed, number, version)[:2000],
                QueryFilter(sources=[corpus.source_of(self._ledger.prefix, number)]),
            )
            started = time.time()
            try:
                hits = await self._gateway.query(check.text, k=QUERY_K, where=check.where)
            except AaflowError as exc:
                self._recorder.exception("watch", exc, started)
                return False
            if _found(doc_id, hits) != expected:
                return False
        return True

    # --- queries ------------------------------------------------------------------------------

    def _chunks(self, number: int, version: int) -> frozenset[tuple[int, str]]:
        chunks = self._model.of(self._seed, self._ledger.doc_id(number), number, version)
        return frozenset((c.seq, c.text) for c in chunks)

    def _plan_check(self, doc_id: str) -> _Check | None:
        entry = self._ledger.settled(doc_id)
        if entry is None:
            return None
        expected = frozenset() if entry.deleted else self._chunks(entry.number, entry.version)
        return _Check(
            doc_id,
            entry,
            expected,
            corpus.text(self._seed, entry.number, entry.version)[:2000],
            QueryFilter(sources=[corpus.source_of(self._ledger.prefix, entry.number)]),
        )

    def _plan(self, rng: random.Random) -> _Check | str:
        if rng.random() < 0.5 and (recent := self._ledger.recent(rng)) is not None:
            check = self._plan_check(recent[0])
            if check is not None:
                return check
        return corpus.query(rng)

    def _judge(self, check: _Check, hits: list[Hit], op: str = "check") -> bool:
        """A check's answer; inconclusive (True, not counted) when the document changed
        meanwhile."""
        if self._ledger.settled(check.doc_id) != check.entry:
            return True
        found = _found(check.doc_id, hits)
        ok = found == check.expected and len(hits) == len(check.expected)
        self._recorder.check(ok)
        if not ok:
            state = "deleted" if check.entry.deleted else f"version {check.entry.version}"
            self._recorder.error(
                op,
                "stale_read",
                time.time(),
                f"{check.doc_id} ({state}): expected {len(check.expected)} chunks, the query "
                f"found {len(hits)} hits, {len(found & check.expected)} of them right",
            )
        return ok

    def _answered(self, started: float, rng_plan: _Check | str, hits: list[Hit]) -> None:
        took = time.time() - started
        self._recorder.query(took, True)
        if took > self._options.query_timeout_s + OVERDUE_SLACK_S:
            self._recorder.error("query", "overdue", started, f"answered after {took:.1f}s")
        if isinstance(rng_plan, _Check):
            self._judge(rng_plan, hits)

    def _failed(self, started: float, exc: BaseException) -> None:
        took = time.time() - started
        self._recorder.query(took, False)
        self._recorder.exception("query", exc, started)
        if took > self._options.query_timeout_s + OVERDUE_SLACK_S:
            self._recorder.error("query", "overdue", started, f"failed after {took:.1f}s")

    def _sync_client(self, index: int) -> None:
        rng = random.Random(f"{self._seed}:query:{index}")
        with Client(self._target.query_endpoint, timeout_s=self._options.query_timeout_s) as c:
            while self._querying.wait(0) and not self._pause(rng):
                plan = self._plan(rng)
                started = time.time()
                try:
                    if isinstance(plan, _Check):
                        hits = c.query(plan.text, k=QUERY_K, where=plan.where)
                    else:
                        hits = c.query(plan, k=FREE_K)
                except Exception as exc:  # typed or not: recorded, judged by the verdict
                    self._failed(started, exc)
                    continue
                self._answered(started, plan, hits)

    def _pause(self, rng: random.Random) -> bool:
        """Wait for the next query (Poisson arrivals); True when the clients were stopped."""
        deadline = time.monotonic() + rng.expovariate(self._options.query_rate)
        while (left := deadline - time.monotonic()) > 0:
            if not self._querying.is_set():
                return True
            time.sleep(min(left, 0.2))
        return not self._querying.is_set()

    async def _async_client(self, index: int) -> None:
        rng = random.Random(f"{self._seed}:query:{index}")
        async with AsyncClient(
            self._target.query_endpoint, timeout_s=self._options.query_timeout_s
        ) as client:
            while self._querying.is_set():
                await asyncio.sleep(rng.expovariate(self._options.query_rate))
                if not self._querying.is_set():
                    break
                plan = self._plan(rng)
                started = time.time()
                try:
                    if isinstance(plan, _Check):
                        hits = await client.query(plan.text, k=QUERY_K, where=plan.where)
                    else:
                        hits = await client.query(plan, k=FREE_K)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(started, exc)
                    continue
                self._answered(started, plan, hits)

    # --- figures ------------------------------------------------------------------------------

    @property
    def files(self) -> int:
        return len(self._files)


def _found(doc_id: str, hits: list[Hit]) -> frozenset[tuple[int, str]]:
    """(seq, text) of the hits, a foreign document's hit made to never match."""
    return frozenset((h.seq, h.text) if h.doc_id == doc_id else (-1, h.doc_id) for h in hits)


__all__ = ["Workload"]
