"""Hostile input at a running topology (real actors, sockets, MPI shards): every hostile
message to the ingest endpoint is answered, and hostile JSONL lines are dead-lettered, with no
actor crashing and no graph restart (issue 15)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from aaflow_stream.client import Client, InvalidRequest
from aaflow_stream.ingest import protocol

from .ingest import detached, read_shards, up, write_topology

pytestmark = pytest.mark.mpi

REPLY_TIMEOUT_S = 10.0
SETTLE_S = 15.0
MAX_REQUEST_MB = 1.0
_enc = msgspec.msgpack.Encoder()


def _topology(root: Path) -> Path:
    (root / "corpus").mkdir()
    (root / "corpus" / "seed.txt").write_text("a first document about lighthouses")
    path = root / "t.yaml"
    path.write_text(
        f"name: hostile\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources:\n  - {{paths: [{root}/corpus]}}\n"
        f"ingest: {{endpoint: 'ipc://{root}/in.sock', max_request_mb: {MAX_REQUEST_MB}}}\n"
        f"query: {{endpoint: 'ipc://{root}/q.sock'}}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 16}\n"
        "  - {operator: transform, chunk_size: 64, overlap: 8, chain: true}\n"
        "  - {operator: embed, batch_size: 256}\n"
        "  - {operator: upsert, batch_size: 512, chain: true}\n"
        "shards: {count: 2}\nflow: {window: 4}\n"
    )
    return path


def _until(check: Callable[[], bool], timeout_s: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.05)


def _status(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "run" / "status.json").read_text()))


def _load_pid(root: Path) -> int:
    path = root / "run" / "actors" / "pids.json"
    _until(path.exists)
    return int(json.loads(path.read_text())["load.0"])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    with detached(_topology(tmp_path)):
        yield tmp_path


def _request(request_id: int, *docs: bytes) -> bytes:
    return protocol.encode_raw_request(request_id, list(docs))


def _hostile() -> list[tuple[str, list[bytes], str]]:
    """(what, frames, expected reply: 'error' for the whole message, 'rejected' per document)."""
    good = {"doc_id": "h", "text": "some text"}
    bad_utf8_id = b"\x82\xa6doc_id\xa2\xff\xfe\xa4text\xa1x"
    bad_utf8_text = b"\x82\xa6doc_id\xa1t\xa4text\xa3a\xff\xfe"
    deep_doc = b"\x82\xa6doc_id\xa1d\xa4text" + b"\x91" * 5000 + b"\xc0"
    over = int(MAX_REQUEST_MB * 2**20) + 1000  # over the limit, under ZeroMQ's hard cap
    return [
        ("invalid utf8 doc_id", [_request(1, bad_utf8_id)], "rejected"),
        ("invalid utf8 text", [_request(2, bad_utf8_text)], "rejected"),
        ("deep nesting in a document", [_request(3, deep_doc)], "error"),  # the request
        ("deep nesting", [b"\x91" * 5000 + b"\xc0"], "error"),
        (
            "a request nested deep",
            [b"\x83\xa2id\x04\xa4type\xa6ingest\xa9documents\x91" + b"\x91" * 5000 + b"\xc0"],
            "error",
        ),
        ("NaN ts", [_request(5, _enc.encode({**good, "ts": math.nan}))], "rejected"),
        ("1e300 ts", [_request(6, _enc.encode({**good, "ts": 1e300}))], "rejected"),
        ("4 KiB doc_id", [_request(7, _enc.encode({**good, "doc_id": "x" * 4096}))], "rejected"),
        ("two frames", [_request(8, _enc.encode(good)), b"more"], "error"),
        ("an empty frame first", [b"", _request(9, _enc.encode(good))], "error"),
        ("over-size", [_request(10, _enc.encode({**good, "text": "y" * over}))], "error"),
        ("random bytes", [b"\xc1\x00\xffnot msgpack at all"], "error"),
        ("empty", [b""], "error"),
        ("invalid utf8 type tag", [b"\x82\xa2id\x0b\xa4type\xa2\xff\xfe"], "error"),
    ]


def test_hostile_messages_each_get_an_answer_and_nothing_restarts(running: Path) -> None:
    root = running
    pid = _load_pid(root)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{root}/in.sock")
    errors = 0
    try:
        for what, frames, expected in _hostile():
            sock.send_multipart(frames)
            assert sock.poll(int(REPLY_TIMEOUT_S * 1000)), f"{what}: no answer"
            reply = protocol.reply_decoder.decode(sock.recv())
            if expected == "error":
                assert isinstance(reply, protocol.IngestError), what
                assert reply.code == "bad_request" and reply.message, what
                errors += 1
            else:
                assert isinstance(reply, protocol.IngestResult), what
                assert reply.accepted == 0 and len(reply.rejected) == 1, what
                assert reply.rejected[0].reason, what
    finally:
        sock.close(linger=0)
        ctx.term()
    with Client(f"ipc://{root}/q.sock", ingest_endpoint=f"ipc://{root}/in.sock") as client:
        result = client.ingest(
            [{"doc_id": "lone", "text": "\ud800"}, {"doc_id": "after", "text": "kestrel osprey"}]
        )
        assert result.accepted == 1
        assert [(r.index, r.doc_id) for r in result.rejected] == [(0, "lone")]
        assert "after" in {h.doc_id for h in client.query("kestrel osprey", k=5)}
        with pytest.raises(InvalidRequest):
            client.query("\ud800")

    def counted() -> bool:
        loads = [s for s in _status(root)["stages"] if s["stage"] == "load"]  # type: ignore[attr-defined]
        return bool(loads) and loads[0]["metrics"].get("ingest_malformed", 0) >= errors

    _until(counted)
    status = _status(root)
    assert status["restarts"] == 0 and status["state"] == "running"
    assert _load_pid(root) == pid


def test_up_dead_letters_hostile_jsonl_lines_and_ingests_the_rest(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [{"doc_id": f"ok-{i}", "text": f"good document number {i}"} for i in range(3)]
    lines = [
        json.dumps(good[0]).encode(),
        json.dumps({"doc_id": "big-ts", "text": "x", "ts": 1e300}).encode(),
        json.dumps(good[1]).encode(),
        b'{"doc_id": "nan-ts", "text": "x", "ts": NaN}',
        json.dumps({"doc_id": "neg-ts", "text": "x", "ts": -1}).encode(),
        b'{"doc_id": "\xff\xfe", "text": "x"}',
        json.dumps({"doc_id": "x" * 2000, "text": "x"}).encode(),
        b'{"doc_id": "deep", "text": "x", "more": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        json.dumps(good[2]).encode(),
    ]
    (corpus / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    data_dir = tmp_path / "data"
    result = up(write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=2), "--json")
    assert result.code == 0, result.stderr
    assert result.summary["restarts"] == []
    assert result.summary["documents"] == 3 and result.summary["dead_letters"] == 6
    letters = [
        json.loads(line)
        for f in (data_dir / "deadletter").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    codes = {x["line"]: x["code"] for x in letters}
    assert codes == {
        2: "bad_ts",
        4: "undecodable",
        5: "bad_ts",
        6: "invalid_utf8",
        7: "doc_id_too_long",
        8: "too_deep",
    }
    assert "unix seconds" in next(x["reason"] for x in letters if x["line"] == 2)
    _, _, meta = read_shards(data_dir)
    assert sorted(set(meta.column("doc_id").to_pylist())) == ["ok-0", "ok-1", "ok-2"]
