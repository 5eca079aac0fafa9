"""CURVE on the sockets bound off loopback: which endpoints need it, the key files, and real
sockets: an allowed client is served; a client with another key, or without CURVE, is refused
and counted, never served; a client added to the allow-list while serving gets in."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
import zmq

from aaflow_stream.channels import curve, sockets
from aaflow_stream.channels.curve import ClientKeys, Guard, ServerKeys
from aaflow_stream.errors import SpecError


@pytest.mark.parametrize(
    ("endpoint", "needed"),
    [
        ("tcp://127.0.0.1:7070", False),
        ("tcp://127.8.9.10:7070", False),
        ("tcp://localhost:7070", False),
        ("tcp://[::1]:7070", False),
        ("ipc:///tmp/q.sock", False),
        ("inproc://q", False),
        ("tcp://10.1.2.3:7070", True),
        ("tcp://0.0.0.0:7070", True),
        ("tcp://*:7070", True),
        ("tcp://[fe80::1]:7070", True),
        ("tcp://eth0:7070", True),
        ("tcp://db.example:7070", True),
    ],
)
def test_only_endpoints_off_loopback_need_curve(endpoint: str, needed: bool) -> None:
    assert curve.needs_curve(endpoint) is needed


def test_keys_are_private_files_and_missing_keys_are_named(tmp_path: Path) -> None:
    directory = curve.keys_dir(tmp_path)
    with pytest.raises(SpecError, match=r"server\.key_secret is missing.*aaflow-stream keys"):
        ServerKeys.load(directory)
    public, created = curve.create_server_keys(directory)
    assert created and public.exists()
    assert curve.create_server_keys(directory) == (public, False)  # kept, not replaced
    secret = curve.create_client_keys(directory, "alice", tmp_path / "alice")
    with pytest.raises(SpecError, match="already allowed"):
        curve.create_client_keys(directory, "alice", tmp_path / "again")
    for path in [*directory.rglob("*.key*"), secret]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    allowed = {p.stem for p in (directory / "clients").glob("*.key")}
    assert allowed == {"alice", curve.LOCAL_CLIENT}
    assert not (directory / "clients" / "alice.key_secret").exists()


def _echo_once(server: zmq.Socket[bytes], timeout_ms: int) -> bool:
    if not server.poll(timeout_ms):
        return False
    ident, body = server.recv_multipart()
    server.send_multipart([ident, b"re:" + body])
    return True


def _asks(client: zmq.Socket[bytes], server: zmq.Socket[bytes], timeout_ms: int) -> bool:
    client.send(b"hello")
    served = _echo_once(server, timeout_ms)
    return served and bool(client.poll(timeout_ms)) and client.recv() == b"re:hello"


def _wait_refused(guard: Guard, at_least: int) -> int:
    deadline = time.monotonic() + 10
    while guard.refused < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return guard.refused


def test_a_curve_server_serves_allowed_clients_only_and_counts_the_refused(
    tmp_path: Path,
) -> None:
    directory = curve.keys_dir(tmp_path)
    server_public, _ = curve.create_server_keys(directory)
    alice = ClientKeys.load(
        curve.create_client_keys(directory, "alice", tmp_path / "alice"), server_public
    )
    mallory = ClientKeys.load(
        curve.create_client_keys(tmp_path / "elsewhere", "mallory", tmp_path / "m"),
        server_public,
    )
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    guard = Guard(ctx, ServerKeys.load(directory))
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    guard.secure(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    opened = []
    try:
        plain = sockets.client_dealer(ctx, endpoint)
        opened.append(plain)
        assert not _asks(plain, server, 1000)
        refused_plain = _wait_refused(guard, 1)
        assert refused_plain >= 1

        stranger = sockets.client_dealer(ctx, endpoint, mallory)
        opened.append(stranger)
        assert not _asks(stranger, server, 1000)
        assert _wait_refused(guard, refused_plain + 1) > refused_plain

        friend = sockets.client_dealer(ctx, endpoint, alice)
        opened.append(friend)
        assert _asks(friend, server, 5000)

        # Allowed while serving: the allow-list is read again when it changes.
        time.sleep(0.01)  # a distinct directory mtime on coarse clocks
        (tmp_path / "elsewhere" / "clients" / "mallory.key").replace(
            directory / "clients" / "mallory.key"
        )
        stranger.close(linger=0)
        welcome = sockets.client_dealer(ctx, endpoint, mallory)
        opened.append(welcome)
        assert _asks(welcome, server, 5000)
    finally:
        for sock in opened:
            sock.close(linger=0)
        server.close(linger=0)
        guard.close()
        ctx.term()
