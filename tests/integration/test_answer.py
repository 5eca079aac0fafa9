"""The answer path against a real serving topology: retrieve -> reason -> generate, the
semantic cache (hits, and never a stale result after an update or an acknowledged delete),
promotion into memory, and a failing generator that leaves the gateway serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaflow_stream.client import Client, QueryError

from .ingest import detached

pytestmark = pytest.mark.mpi

DOCS = [
    ("vault", "The vault opens at dawn. The guards change at noon. Nobody enters at night."),
    ("credit", "Credit flow control bounds every queue. A sender waits for credit."),
    ("otter", "Sea otters hold hands while they sleep. They eat urchins and crabs."),
]


def _topology(root: Path, generator: str = "{kind: extractive, sentences: 1}") -> Path:
    path = root / "t.yaml"
    (root / "watch").mkdir(exist_ok=True)
    path.write_text(
        f"name: answer\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources:\n  - {{paths: [{root}/watch], watch: true}}\n"
        f"ingest: {{endpoint: 'ipc://{root}/in.sock'}}\n"
        f"query: {{endpoint: 'ipc://{root}/q.sock'}}\n"
        f"answer: {{generator: {generator}, k: 4, budget_chars: 400}}\n"
        "cache: {enabled: true, threshold: 0.99, ttl_s: 600}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 16}\n"
        "  - {operator: transform, chunk_size: 200, overlap: 0, chain: true}\n"
        "  - {operator: embed, batch_size: 64}\n"
        "  - {operator: upsert, batch_size: 64, chain: true}\n"
        "shards: {count: 2, keywords: true}\nflow: {window: 4}\n"
    )
    return path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = Path(tmp_path_factory.mktemp("answer"))
    with (
        detached(_topology(root)),
        Client(f"ipc://{root}/q.sock", ingest_endpoint=f"ipc://{root}/in.sock") as client,
    ):
        result = client.ingest([{"doc_id": d, "text": t, "source": "test"} for d, t in DOCS])
        assert result.accepted == len(DOCS)
        yield client


def test_an_answer_cites_its_evidence_and_a_repeat_comes_from_the_cache(running: Client) -> None:
    reply = running.answer("when does the vault open", promote=False)
    [answer] = reply.answers
    assert answer.text == "The vault opens at dawn."
    assert [c.doc_id for c in answer.citations] == ["vault"]
    assert not answer.cached and 0 < answer.context_chars <= 400
    t = reply.timings
    assert t.retrieve_ms > 0 and t.total_ms >= t.retrieve_ms + t.generate_ms
    again = running.answer("when does the vault open", promote=False)
    assert again.answers[0].cached and again.answers[0].text == answer.text
    assert again.timings.retrieve_ms == 0.0
    # Found by its text: not even embedded; the answer to another question is not.
    mixed = running.answer(["when does the vault open", "who changes at noon"], promote=False)
    assert [a.cached for a in mixed.answers] == [True, False]


def test_sub_questions_share_one_round(running: Client) -> None:
    before = running.stats().rounds
    reply = running.answer(
        ["what do sea otters eat", "what bounds every queue", "who changes at noon"],
        promote=False,
    )
    assert [a.citations[0].doc_id for a in reply.answers] == ["otter", "credit", "vault"]
    assert running.stats().rounds == before + 1


def test_the_cache_never_serves_a_stale_result_after_an_update_or_a_delete(
    running: Client,
) -> None:
    first = running.query_reply("sea otters hold hands", k=2)
    assert not first.timings.cached and first.hits[0].doc_id == "otter"
    cached = running.query_reply("sea otters hold hands", k=2)
    assert cached.timings.cached and cached.hits == first.hits
    # A repeated text is answered on arrival: no batch, no embedding.
    assert cached.timings.batch == 0 and cached.timings.embed_ms == 0.0
    # Another text, the same embedding (punctuation is no token): found by its vector once,
    # then by its text.
    near = running.query_reply("Sea otters, hold hands!", k=2)
    assert near.timings.cached and near.hits == first.hits and near.timings.embed_ms > 0
    again = running.query_reply("Sea otters, hold hands!", k=2)
    assert again.timings.cached and again.timings.embed_ms == 0.0
    # An update (a new version, acknowledged once durable) drops the entries citing it.
    new_text = "Sea otters hold hands while they sleep so they do not drift apart."
    assert running.ingest([{"doc_id": "otter", "text": new_text, "source": "test"}]).accepted == 1
    updated = running.query_reply("sea otters hold hands", k=2)
    assert not updated.timings.cached
    assert updated.hits[0].text == new_text
    # An acknowledged delete: gone at once, never served from the cache.
    running.query_reply("sea otters hold hands", k=2)
    assert running.delete(["otter"]) > 0
    after = running.query_reply("sea otters hold hands", k=2)
    assert not after.timings.cached and all(h.doc_id != "otter" for h in after.hits)
    stats = running.stats()
    assert stats.cache_hits >= 2 and stats.cache_misses >= 3


def test_a_vector_query_is_looked_up_once_on_arrival(running: Client) -> None:
    vector = [0.0] * 384
    vector[7] = 1.0
    before = running.stats()
    first = running.query_reply(vector, k=2)
    after_first = running.stats()
    assert not first.timings.cached and first.timings.batch >= 1
    assert after_first.cache_misses == before.cache_misses + 1  # not once more in its batch
    again = running.query_reply(vector, k=2)
    assert again.timings.cached and again.timings.batch == 0 and again.hits == first.hits
    assert running.stats().cache_hits == after_first.cache_hits + 1


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.1)


def test_hybrid_finds_a_rare_identifier_by_its_keywords_and_forgets_a_deleted_one(
    running: Client,
) -> None:
    doc = {
        "doc_id": "ticket",
        "text": "Escalated under ticket QX-9931-ZB last week.",
        "source": "t",
    }
    assert running.ingest([doc]).accepted == 1

    def found() -> bool:
        hits = running.query("QX-9931-ZB", k=3, mode="hybrid")
        return bool(hits) and hits[0].doc_id == "ticket" and hits[0].keyword_rank == 1

    _until(found)  # the keyword index commits within a second of the log
    top = running.query("QX-9931-ZB", k=3, mode="hybrid")[0]
    assert top.keyword_rank == 1 and top.bm25 is not None and top.bm25 > 0
    assert running.delete(["ticket"]) > 0
    assert all(h.doc_id != "ticket" for h in running.query("QX-9931-ZB", k=3, mode="hybrid"))
    with pytest.raises(QueryError, match="needs a text"):
        running.query([0.0] * 384, k=1, mode="hybrid")


def test_an_answer_with_a_session_promotes_its_evidence_into_memory(running: Client) -> None:
    reply = running.answer("who changes at noon", session="promo", mode="both")
    assert reply.timings.memory_ms > 0
    hits = running.query("guards change at noon", k=3, mode="memory", session="promo")
    assert hits and hits[0].path == "memory" and hits[0].source.startswith("chunk:")
    assert hits[0].kind == "intermediate"
    running.forget("promo")


def test_a_failing_generator_gets_a_typed_error_and_the_gateway_goes_on(tmp_path: Path) -> None:
    # A chat endpoint nobody listens on: the generator fails, the request gets an error.
    topology = _topology(
        tmp_path, "{kind: openai, url: 'http://127.0.0.1:9', model: m, timeout_s: 2}"
    )
    with detached(topology), Client(f"ipc://{tmp_path}/q.sock", timeout_s=30) as client:
        client_in = Client(None, ingest_endpoint=f"ipc://{tmp_path}/in.sock")
        assert client_in.ingest([{"doc_id": "a", "text": "alpha beta"}]).accepted == 1
        client_in.close()
        with pytest.raises(QueryError) as failed:
            client.answer("alpha", promote=False)
        assert failed.value.code == "unavailable" and "chat endpoint" in str(failed.value)
        assert client.query("alpha beta", k=1)[0].doc_id == "a"  # still serving
