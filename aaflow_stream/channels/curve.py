"""ZeroMQ CURVE for every socket that listens beyond loopback: keys, allow-list, refusals.

A socket bound to loopback (or an ipc path) is reachable only from this machine and needs no
keys. One bound anywhere else is a CURVE server: clients must know its public key (so nobody
can pose as it) and hold a secret key whose public half is on the allow-list (so nobody else
is served). Traffic is encrypted either way once CURVE is on.

The keys live in the data directory (``aaflow-stream keys`` writes them, mode 0600)::

    <data_dir>/keys/server.key           the server's public key (give it to clients)
    <data_dir>/keys/server.key_secret    its secret key
    <data_dir>/keys/clients/NAME.key     the allow-list: one public key per client

Both are ZeroMQ's certificate files (``zmq.auth.create_certificates``). The allow-list is
re-read when the directory changes, so a client added while a topology serves is admitted
without a restart; a removed one is refused from its next connection on.

The checks run in ZeroMQ's ZAP handler (``zmq.auth``), in a thread of the process; every
peer refused at the handshake is counted from the socket's monitor (``Guard.refused``:
``curve_refused`` in the metrics).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
import zmq.utils.monitor
from zmq.auth.thread import ThreadAuthenticator

from ..errors import SpecError

log = logging.getLogger(__name__)

KEYS_DIR: Final = "keys"
SERVER: Final = "server"
# The client pair of this machine's own commands (`up --detach`'s readiness check, the CLI
# given --topology): made with the server pair, its secret kept beside the server's.
LOCAL_CLIENT: Final = "local"
CLIENTS_DIR: Final = "clients"
ZAP_DOMAIN: Final = "aaflow"
# What the monitor reports of a refused peer: a key not on the allow-list (AUTH), a peer
# without CURVE or with a wrong server key (PROTOCOL, NO_DETAIL).
HANDSHAKE_FAILED: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
MONITOR_POLL_MS: Final = 200


def needs_curve(endpoint: str) -> bool:
    """Whether a socket bound at ``endpoint`` is reachable from beyond this machine: a tcp
    address that is not loopback (``*``, ``0.0.0.0`` and host names included)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return False  # ipc and inproc never leave the machine
    host = rest.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # '*', an interface or a host name: assume reachable


def keys_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / KEYS_DIR


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    clients: Path  # the allow-list directory

    @classmethod
    def load(cls, directory: Path) -> ServerKeys:
        """The server keys of ``directory`` (``keys_dir``); SpecError naming what is missing."""
        secret_file = directory / f"{SERVER}.key_secret"
        if not secret_file.exists():
            raise SpecError(
                f"{secret_file} is missing: an endpoint off loopback needs CURVE keys "
                "(create them with `aaflow-stream keys TOPOLOGY`)"
            )
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise SpecError(f"{secret_file} holds no secret key")
        return cls(public, secret, directory / CLIENTS_DIR)


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CURVE server: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_secret_file: Path | str, server_public_file: Path | str) -> ClientKeys:
        public, secret = zmq.auth.load_certificate(client_secret_file)
        if secret is None:
            raise ValueError(f"{client_secret_file} holds no secret key (a .key_secret file)")
        server_public, _ = zmq.auth.load_certificate(server_public_file)
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the server (before it connects)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class _AllowList:
    """The allow-list as the ZAP handler asks it: re-read when its directory changes."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._stamp: int | None = None
        self._allowed: frozenset[bytes] = frozenset()
        self._lock = threading.Lock()

    def callback(self, domain: str, client_key: bytes) -> bool:
        with self._lock:
            self._refresh()
            return client_key in self._allowed

    def _refresh(self) -> None:
        try:
            stamp: int | None = self._directory.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and stamp is not None:
            return
        self._stamp = stamp
        found = set()
        for path in sorted(self._directory.glob("*.key")) if stamp is not None else []:
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("allow-list: cannot read %s: %s", path, exc)
                continue
            found.add(public)
        self._allowed = frozenset(found)


class Guard:
    """The CURVE side of one server socket: the ZAP handler of its process's context, and a
    count of the peers refused at the handshake (a key not on the allow-list, or no CURVE at
    all), read from the socket's monitor."""

    def __init__(self, ctx: zmq.Context[Any], keys: ServerKeys) -> None:
        self._keys = keys
        self._auth = ThreadAuthenticator(zmq.Context.shadow(ctx.underlying), log=log)
        self._auth.start()
        self._auth.configure_curve_callback(
            domain=ZAP_DOMAIN, credentials_provider=_AllowList(keys.clients)
        )
        self._refused = 0
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def refused(self) -> int:
        return self._refused

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server (before it binds); once per Guard."""
        if self._watcher is not None:
            raise RuntimeError("a Guard secures one socket")
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_secretkey = self._keys.secret
        sock.curve_publickey = self._keys.public
        sock.curve_server = True
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        self._watcher = threading.Thread(
            target=self._count_refusals, args=(monitor,), name="curve-monitor", daemon=True
        )
        self._watcher.start()

    def _count_refusals(self, monitor: zmq.Socket[Any]) -> None:
        try:
            while not self._closing.is_set():
                if not monitor.poll(MONITOR_POLL_MS):
                    continue
                event = zmq.utils.monitor.recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                self._refused += 1
                log.warning("refused a peer at the CURVE handshake (event %s)", event["event"])
        finally:
            monitor.close(linger=0)

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
        self._auth.stop()


def guard_for(ctx: zmq.Context[Any], endpoint: str, directory: Path | str | None) -> Guard | None:
    """A Guard for a server socket at ``endpoint`` when it needs one (``needs_curve``), with
    the keys of ``directory`` (``keys_dir``)."""
    if not needs_curve(endpoint):
        return None
    if directory is None:
        raise SpecError(f"{endpoint} is off loopback and no keys directory is known")
    return Guard(ctx, ServerKeys.load(Path(directory)))


# --- key files ---------------------------------------------------------------------------------


def create_server_keys(directory: Path) -> tuple[Path, bool]:
    """The server pair of ``directory`` and the local client's (created if missing):
    (the server's public key file, whether it was created now)."""
    public = directory / f"{SERVER}.key"
    if (directory / f"{SERVER}.key_secret").exists():
        return public, False
    _private_dir(directory)
    _private_dir(directory / CLIENTS_DIR)
    zmq.auth.create_certificates(directory, SERVER)
    _private_files(directory, SERVER)
    if not (directory / CLIENTS_DIR / f"{LOCAL_CLIENT}.key").exists():
        create_client_keys(directory, LOCAL_CLIENT, directory)
    return public, True


def local_client_keys(directory: Path) -> ClientKeys:
    """This machine's client keys for the servers of ``directory`` (``create_server_keys``)."""
    secret = directory / f"{LOCAL_CLIENT}.key_secret"
    if not secret.exists():
        raise SpecError(f"{secret} is missing: create the keys with `aaflow-stream keys TOPOLOGY`")
    return ClientKeys.load(secret, directory / f"{SERVER}.key")


def create_client_keys(directory: Path, name: str, out_dir: Path) -> Path:
    """A client pair named ``name``: its secret file goes to ``out_dir`` (for the client),
    its public key onto the allow-list of ``directory``. Returns the secret file."""
    if not name or "/" in name or name.startswith(".") or name == SERVER:
        raise SpecError(f"client name {name!r}: use letters, digits, '-' or '_'")
    allowed = directory / CLIENTS_DIR / f"{name}.key"
    if allowed.exists():
        raise SpecError(f"{allowed} exists: a client named {name!r} is already allowed")
    _private_dir(out_dir)
    zmq.auth.create_certificates(out_dir, name)
    _private_files(out_dir, name)
    _private_dir(directory / CLIENTS_DIR)
    shutil.copyfile(out_dir / f"{name}.key", allowed)
    os.chmod(allowed, 0o600)
    return out_dir / f"{name}.key_secret"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _private_files(directory: Path, name: str) -> None:
    for suffix in (".key", ".key_secret"):
        os.chmod(directory / f"{name}{suffix}", 0o600)
