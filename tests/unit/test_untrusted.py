"""Every decoder of the package, fed hostile bytes, fails only with ``MalformedMessage``."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from aaflow_stream import protocol, untrusted
from aaflow_stream.ingest import protocol as ingest_protocol
from aaflow_stream.query import protocol as query_protocol

from ..support.hostile import deep, hostile_messages

DECODERS: dict[str, msgspec.msgpack.Decoder] = {  # type: ignore[type-arg]
    "data header": protocol.data_decoder,
    "link control": protocol.link_control_decoder,
    "actor up": protocol.actor_up_decoder,
    "actor down": protocol.actor_down_decoder,
    "ack": protocol.ack_decoder,
    "query request": query_protocol.request_decoder,
    "ingest request": ingest_protocol.request_decoder,
    "ingest document": ingest_protocol.document_decoder,
}

VALID: list[bytes] = [
    protocol.encode(protocol.Credit(receiver="embed.0", batches=4)),
    protocol.encode(protocol.Ready(actor="load.0", pid=7)),
    protocol.encode(protocol.Ack(sender="shard.0", shard=0, offsets=b"\0" * 8)),
    query_protocol.encode(query_protocol.QueryRequest(id=1, text="hello", k=3)),
    ingest_protocol.encode_request(3, [{"doc_id": "a", "text": "some text"}]),
]


def test_invalid_utf8_in_a_string_is_a_malformed_message_not_a_unicode_error() -> None:
    # Untyped msgspec decoding raises UnicodeDecodeError here: that escaped handlers before.
    with pytest.raises(UnicodeDecodeError):
        msgspec.msgpack.decode(b"\xa1\xff")
    doc = b"\x82\xa6doc_id\xa2\xff\xfe\xa4text\xa1x"
    with pytest.raises(untrusted.MalformedMessage) as caught:
        untrusted.decode(ingest_protocol.document_decoder, doc)
    assert caught.value.reason == "invalid_utf8"


def test_deep_nesting_is_a_malformed_message_not_a_recursion_error() -> None:
    # A document travels as raw msgpack inside the request: skipping it recurses.
    request = b"\x83\xa4type\xa6ingest\xa2id\x01\xa9documents\x91" + deep(5000)
    with pytest.raises(RecursionError):
        ingest_protocol.request_decoder.decode(request)
    with pytest.raises(untrusted.MalformedMessage) as caught:
        untrusted.decode(ingest_protocol.request_decoder, request)
    assert caught.value.reason == "too_deep"


def test_a_message_over_the_size_bound_is_refused_before_decoding() -> None:
    with pytest.raises(untrusted.MalformedMessage) as caught:
        untrusted.decode(protocol.ack_decoder, b"\x00" * 100, max_bytes=99)
    assert caught.value.reason == "too_large"


def test_peek_id_reads_the_id_of_a_broken_request_and_never_raises() -> None:
    assert untrusted.peek_id(b"\x82\xa2id\x05\xa1x\xa2\xff\xfe") == 5
    for junk in (b"\xa1\xff", deep(5000), b"", b"\xc1", b"\x81\xa2id\xa1\xff"):
        assert untrusted.peek_id(junk) is None


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_seeded_fuzz_of_a_decoder_raises_nothing_but_malformed_message(name: str) -> None:
    decoder = DECODERS[name]
    outcomes = {"decoded": 0, "malformed": 0}
    for message in hostile_messages(seed=zlib.crc32(name.encode()), count=3000, valid=VALID):
        try:
            untrusted.decode(decoder, message, max_bytes=1 << 20)
        except untrusted.MalformedMessage as exc:
            assert exc.reason in untrusted.REASONS
            outcomes["malformed"] += 1
        else:
            outcomes["decoded"] += 1
    assert outcomes["malformed"] > 0
