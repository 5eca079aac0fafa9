"""Hostile documents at every door a document comes in by (the ingest endpoint's desk, the file
loader, ``aaflow-stream ingest``'s reader, the client): each is accepted or rejected with a
reason, and nothing raises."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from aaflow_stream.client import InvalidRequest, QueryError, _encode, _IngestRound, _request
from aaflow_stream.ingest import endpoint, protocol
from aaflow_stream.ingest.documents import (
    REJECT_REASONS,
    BadDocument,
    Doc,
    DocLimits,
    check_document,
)
from aaflow_stream.ingest.endpoint import IngestDesk, check
from aaflow_stream.ingest.files import FileManifest
from aaflow_stream.ingest.inputs import LocalReject, read_documents
from aaflow_stream.operators.base import OperatorContext
from aaflow_stream.operators.feed import _share
from aaflow_stream.operators.load import Dead, FileLoader, read_items
from aaflow_stream.operators.params import LoadParams
from aaflow_stream.spec import SourceSpec

from ..support.hostile import deep, hostile_messages, mutate, random_value

LIMITS = DocLimits(max_doc_bytes=100, max_doc_id_bytes=16, max_source_bytes=16)
GOOD = {"doc_id": "good", "text": "fine text", "source": "s", "ts": 1_700_000_000.5}
_enc = msgspec.msgpack.Encoder()


def _str(raw: bytes) -> bytes:
    """A msgpack str of these bytes, UTF-8 or not."""
    return bytes([0xA0 | len(raw)]) + raw


def _doc(**fields: bytes) -> bytes:
    """A msgpack map of already encoded values (which may be anything)."""
    body = b"".join(_str(k.encode()) + v for k, v in fields.items())
    return bytes([0x80 | len(fields)]) + body


def _check(*docs: bytes) -> tuple[list[Doc], list[protocol.Rejected], Counter[str]]:
    counts: Counter[str] = Counter()
    request = protocol.IngestRequest(id=1, documents=[msgspec.Raw(d) for d in docs])
    accepted, rejected = check(request, LIMITS, counts)
    return accepted, rejected, counts


# --- the endpoint's checks ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["doc_id", "text", "source"])
def test_invalid_utf8_in_any_string_field_rejects_only_that_document(field: str) -> None:
    fields = {"doc_id": _str(b"bad"), "text": _str(b"some text"), "source": _str(b"s")}
    fields[field] = _str(b"\xff\xfe")
    accepted, rejected, counts = _check(_doc(**fields), _enc.encode(GOOD))
    assert [d.doc_id for d in accepted] == ["good"]
    assert [r.index for r in rejected] == [0]
    assert "invalid_utf8" in rejected[0].reason
    assert rejected[0].doc_id == (None if field == "doc_id" else "bad")
    assert counts == {"invalid_utf8": 1}


@pytest.mark.parametrize(
    "nested",
    [
        _doc(doc_id=_str(b"deep"), text=deep(5000)),
        _doc(doc_id=_str(b"deep"), text=_str(b"x"), extra=deep(5000, 0x81)),
        deep(5000),
    ],
    ids=["in text", "in an unknown field", "the document itself"],
)
def test_deep_nesting_in_a_document_rejects_it_with_a_reason(nested: bytes) -> None:
    accepted, rejected, counts = _check(nested, _enc.encode(GOOD))
    assert [d.doc_id for d in accepted] == ["good"]
    assert len(rejected) == 1 and rejected[0].reason.startswith("not a valid document")
    assert sum(counts.values()) == 1


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, 1e300, -1.0, 253402300800.0])
def test_a_ts_that_is_not_finite_unix_seconds_up_to_year_9999_is_rejected(ts: float) -> None:
    accepted, rejected, counts = _check(_enc.encode({**GOOD, "ts": ts}))
    assert not accepted
    assert rejected[0].doc_id == "good" and "unix seconds" in rejected[0].reason
    assert counts == {"bad_ts": 1}


@pytest.mark.parametrize(("ts", "ms"), [(0, 0), (253402300799, 253402300799000), (1.5, 1500)])
def test_a_ts_at_the_edges_of_the_range_is_accepted_in_milliseconds(ts: float, ms: int) -> None:
    accepted, rejected, _ = _check(_enc.encode({**GOOD, "ts": ts}))
    assert not rejected and accepted[0].ts_ms == ms


@pytest.mark.parametrize(
    ("field", "reason"), [("doc_id", "doc_id_too_long"), ("source", "source_too_long")]
)
def test_an_over_long_doc_id_or_source_is_rejected_and_not_echoed(field: str, reason: str) -> None:
    accepted, rejected, counts = _check(_enc.encode({**GOOD, field: "é" * 9}))  # 18 bytes
    assert not accepted
    assert rejected[0].reason == f"{field} of 18 bytes exceeds the limit of 16"
    assert rejected[0].doc_id == (None if field == "doc_id" else "good")
    assert counts == {reason: 1}


def test_the_document_limit_counts_utf8_bytes_not_characters() -> None:
    at_limit = {"doc_id": "at", "text": "€" * 33 + "a"}  # 34 characters, 100 bytes
    over = {"doc_id": "over", "text": "é" * 50 + "a"}  # 51 characters, 101 bytes
    accepted, rejected, counts = _check(_enc.encode(at_limit), _enc.encode(over))
    assert [d.doc_id for d in accepted] == ["at"]
    assert rejected[0].reason == "document of 101 bytes exceeds the limit of 100"
    assert counts == {"too_large": 1}


def test_a_lone_surrogate_is_a_rejection_not_a_unicode_error() -> None:
    with pytest.raises(BadDocument) as caught:
        check_document("id", "text \ud800", LIMITS)
    assert caught.value.reason == "not_unicode"
    with pytest.raises(BadDocument):
        check_document("\udcff", "text", LIMITS)


def test_every_rejection_reason_code_is_known() -> None:
    _, _, counts = _check(
        _enc.encode({"doc_id": "", "text": "x"}),
        _enc.encode({"doc_id": "e", "text": "  "}),
        _enc.encode({"doc_id": "b", "text": "a\x00b"}),
        _enc.encode(GOOD),
        _enc.encode(GOOD),
        b"\xc1",
    )
    assert counts == {"empty_doc_id": 1, "empty": 1, "binary": 1, "duplicate": 1, "undecodable": 1}
    assert set(counts) <= set(REJECT_REASONS)


# --- the endpoint's desk: every message answered ------------------------------------------------


def _reply(desk: IngestDesk, message: bytes, frames: int = 1) -> protocol.IngestReply:
    raw = desk.handle(b"client", message, frames)
    assert raw is not None, "answered only once durable"
    return protocol.reply_decoder.decode(raw)


@pytest.mark.parametrize(
    ("message", "frames", "words"),
    [
        (b"\x82\xa2id\x2a\xa4type" + _str(b"\xff\xfe"), 1, "invalid_utf8"),
        (b"\x83\xa4type\xa6ingest\xa2id\x2a\xa9documents\x91" + deep(5000), 1, "too_deep"),
        (protocol.encode_request(42, [GOOD]), 2, "one frame; this message had 2"),
        (protocol.encode_request(42, [{**GOOD, "text": "x" * 30_000}]), 1, "larger than 20000"),
        (b"\x82\xa2id\x2a\xa9documents\xc0", 1, "invalid"),
    ],
    ids=["invalid utf8", "deep", "two frames", "over-size", "wrong shape"],
)
def test_a_malformed_message_gets_a_bad_request_naming_the_problem(
    message: bytes, frames: int, words: str
) -> None:
    desk = IngestDesk(LIMITS, max_request_bytes=20_000)
    reply = _reply(desk, message, frames)
    assert isinstance(reply, protocol.IngestError) and reply.code == "bad_request"
    assert words in reply.message
    assert reply.id in (42, 0)  # addressed to the id it carries, when that can be read
    metrics = desk.metrics()
    assert metrics["ingest_malformed"] == 1 and metrics["ingest_requests"] == 0


def test_an_over_size_request_is_answered_with_its_own_id() -> None:
    desk = IngestDesk(LIMITS, max_request_bytes=1000)
    reply = _reply(desk, protocol.encode_request(42, [{**GOOD, "text": "x" * 2000}]))
    assert isinstance(reply, protocol.IngestError) and reply.id == 42
    assert desk.metrics()["ingest_malformed_too_large"] == 1


def test_rejected_documents_are_counted_by_reason_in_the_metrics() -> None:
    desk = IngestDesk(LIMITS, max_request_bytes=10_000)
    nan = {**GOOD, "doc_id": "nan", "ts": math.nan}
    message = protocol.encode_request(5, [GOOD, nan, {"doc_id": "x"}])
    assert desk.handle(b"client", message) is None  # one accepted: answered once durable
    ((doc, pending),) = desk.take(10)
    assert doc.doc_id == "good"
    reply = protocol.reply_decoder.decode(desk.done(pending) or b"")
    assert isinstance(reply, protocol.IngestResult)
    assert reply.accepted == 1 and [r.index for r in reply.rejected] == [1, 2]
    metrics = desk.metrics()
    assert metrics["ingest_rejected"] == 2
    assert metrics["ingest_rejected_bad_ts"] == metrics["ingest_rejected_invalid"] == 1


def test_an_unexpected_failure_is_answered_internal_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(endpoint, "check", broken)
    desk = IngestDesk(LIMITS, max_request_bytes=10_000)
    with caplog.at_level("WARNING", logger="aaflow_stream.ingest.endpoint"):
        reply = _reply(desk, protocol.encode_request(9, [GOOD]))
    assert isinstance(reply, protocol.IngestError)
    assert (reply.id, reply.code) == (9, "internal")
    assert desk.metrics()["ingest_internal_errors"] == 1
    assert "a request failed" in caplog.text


def _fuzz_messages(seed: int, count: int) -> list[tuple[bytes, int]]:
    rng = random.Random(seed)
    docs = [GOOD, {**GOOD, "doc_id": "g2", "text": "é" * 40}, {"doc_id": "g3", "text": "t"}]
    valid = [protocol.encode_request(7, docs), protocol.encode_request(8, docs[:1])]
    messages = list(hostile_messages(seed, count, valid))
    # Requests whose documents are hostile values: the per-document checks get them too.
    for i in range(count // 3):
        hostile = [random_value(rng) for _ in range(rng.randint(1, 4))]
        try:
            raws = [_enc.encode(v) for v in hostile]
        except (OverflowError, TypeError):
            continue
        raws.insert(rng.randrange(len(raws) + 1), mutate(rng, _enc.encode(GOOD)))
        messages.append(protocol.encode_raw_request(100 + i, raws))
    return [(m, 1 if rng.random() < 0.95 else rng.randint(2, 4)) for m in messages]


def test_a_seeded_fuzz_of_the_desk_answers_every_message_and_raises_nothing() -> None:
    desk = IngestDesk(LIMITS, max_request_bytes=4096)
    started = time.monotonic()
    messages = _fuzz_messages(seed=15, count=3000)
    outcomes: Counter[str] = Counter()
    for message, frames in messages:
        raw = desk.handle(b"client", message, frames)
        if raw is None:  # admitted: drain it as the source and the shards would
            taken = desk.take(10_000)
            assert taken
            replies = [r for _, p in taken if (r := desk.done(p)) is not None]
            assert len(replies) == 1
            raw = replies[0]
        reply = protocol.reply_decoder.decode(raw)
        if isinstance(reply, protocol.IngestError):
            assert reply.code == "bad_request" and reply.message, reply
            outcomes["refused"] += 1
            continue
        request = protocol.request_decoder.decode(message)
        assert reply.accepted + len(reply.rejected) == len(request.documents)
        assert all(r.reason for r in reply.rejected)
        outcomes["accepted" if reply.accepted else "rejected"] += 1
    assert time.monotonic() - started < 5.0
    metrics = desk.metrics()
    assert metrics["ingest_internal_errors"] == 0 and desk.pending == 0
    assert metrics["ingest_malformed"] == outcomes["refused"]
    assert outcomes["accepted"] and outcomes["rejected"] and outcomes["refused"]


# --- the file loader ----------------------------------------------------------------------------


def _items(path: Path, limits: DocLimits = LIMITS) -> list[Doc | Dead]:
    return list(read_items(path.parent, path, limits))


def _line(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"


def test_a_jsonl_file_dead_letters_each_bad_line_with_a_reason_and_reads_the_rest(
    tmp_path: Path,
) -> None:
    bad = [
        (b'{"doc_id": "\xff\xfe", "text": "x"}\n', "invalid_utf8"),
        (b'{"doc_id": "a", "text": "\xff"}\n', "invalid_utf8"),
        (b'{"doc_id": "b", "text": "x", "source": "\xc0"}\n', "invalid_utf8"),
        (b'{"doc_id": "c", "text": ' + b"[" * 2000 + b"]" * 2000 + b"}\n", "invalid"),
        (b'{"doc_id": "d", "text": "x", "more": ' + b"[" * 2000 + b"]" * 2000 + b"}\n", "too_deep"),
        (_line(doc_id="e", text="x", ts=1e300), "bad_ts"),
        (_line(doc_id="f", text="x", ts=-1), "bad_ts"),
        (b'{"doc_id": "g", "text": "x", "ts": 1e400}\n', "invalid"),
        (b'{"doc_id": "h", "text": "x", "ts": NaN}\n', "undecodable"),
        (_line(doc_id="i" * 17, text="x"), "doc_id_too_long"),
        (_line(doc_id="j", text="é" * 50 + "a"), "too_large"),
        (b'{"doc_id": "k", "text": "\\ud800"}\n', "undecodable"),
    ]
    good = [_line(doc_id="ok-1", text="é" * 50), _line(doc_id="ok-2", text="y", ts=1.5)]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(good[0] + b"".join(line for line, _ in bad) + good[1])
    items = _items(path)
    docs = [i for i in items if isinstance(i, Doc)]
    dead = [i for i in items if isinstance(i, Dead)]
    assert [(d.doc_id, d.ts_ms) for d in docs][1:] == [("ok-2", 1500)]
    assert docs[0].doc_id == "ok-1"
    assert [(d.line, d.code) for d in dead] == [(n, code) for n, (_, code) in enumerate(bad, 2)]
    assert all(d.reason for d in dead)
    assert dead[9].doc_id is None  # too long to repeat in the dead letter


def test_a_jsonl_line_longer_than_any_valid_document_is_skipped_unread(tmp_path: Path) -> None:
    limits = DocLimits(max_doc_bytes=10, max_doc_id_bytes=10, max_source_bytes=10)
    path = tmp_path / "long.jsonl"
    path.write_bytes(
        b'{"doc_id": "x", "text": "' + b"a" * 3 * 2**20 + b'"}\n' + _line(doc_id="y", text="z")
    )
    items = _items(path, limits)
    assert isinstance(items[0], Dead) and items[0].code == "too_large" and items[0].line == 1
    assert isinstance(items[1], Doc) and items[1].doc_id == "y"


def test_a_file_whose_name_is_not_utf8_is_dead_lettered_not_a_crash(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # a Latin-1 name: a lone surrogate in Python
    try:
        (tmp_path / name).write_text("some text")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    (tmp_path / "fine.txt").write_text("other text")
    loader = FileLoader(
        OperatorContext("load.0", "load", 0, 1, tmp_path),
        LoadParams(
            sources=[SourceSpec(paths=[str(tmp_path)], formats=["txt"])],
            dead_letter_dir=str(tmp_path / "dead"),
        ),
    )
    try:
        batches = list(loader.batches())
    finally:
        loader.close()
    assert [b.column("doc_id").to_pylist() for b in batches] == [["fine.txt"]]
    (letter,) = (tmp_path / "dead" / "load.0.jsonl").read_text().splitlines()
    assert json.loads(letter)["code"] == "not_unicode"
    assert isinstance(_share(str(tmp_path / name), 3), int)


@pytest.mark.parametrize(
    "content", [b'{"files": []}', b'{"files": {"a": [1]}}', b"[" * 100_000, b"\xff"]
)
def test_a_damaged_file_manifest_is_read_as_empty(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m.json").write_bytes(content)
    assert FileManifest(tmp_path / "m.json", save_every_s=0).acked == {}


def test_the_cli_reader_rejects_hostile_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + b'{"doc_id": "\xff"}\n' + _line(doc_id="a", text="t"))
    items = list(read_documents([str(path)]))
    assert [type(i) for i in items] == [LocalReject, LocalReject, dict]
    assert all("not JSON" in i.reason for i in items if isinstance(i, LocalReject))


# --- the client ---------------------------------------------------------------------------------


def test_the_client_rejects_documents_it_cannot_send_and_sends_the_others() -> None:
    docs: list[object] = [
        {"doc_id": "a", "text": "fine"},
        {"doc_id": "b", "text": "\ud800"},
        protocol.Document("\udcff", "text"),
        {"doc_id": "c", "text": "x", "n": 2**70},
        {"doc_id": "d", "text": "y" * 5000},
        {"doc_id": "e", "text": "fine too"},
    ]
    work = _IngestRound(docs, iter(range(1, 100)), max_request_bytes=1000)  # type: ignore[arg-type]
    assert [(r.index, r.doc_id) for r in work.rejected] == [
        (1, "b"),
        (2, "\\udcff"),
        (3, "c"),
        (4, "d"),
    ]
    assert "lone surrogate" in work.rejected[0].reason
    assert "does not fit a request of 1000 bytes" in work.rejected[3].reason
    sent = work.next_to_send()
    assert sent is not None and len(sent[1]) <= 1000
    request = protocol.request_decoder.decode(sent[1])
    assert [protocol.document_decoder.decode(d).doc_id for d in request.documents] == ["a", "e"]
    # The endpoint's indices are within its request: mapped back to the call's.
    reply = protocol.IngestResult(id=sent[0], accepted=1, rejected=[protocol.Rejected(1, "e", "r")])
    work.answer(reply)
    assert work.done
    assert [r.index for r in work.result().rejected] == [1, 2, 3, 4, 5]


def test_a_query_the_client_cannot_encode_raises_its_typed_error() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _encode(_request("\ud800", 3, 1))
    assert isinstance(caught.value, QueryError) and isinstance(caught.value, ValueError)
    assert caught.value.code == "bad_request"
