"""One `up` per data directory, and a topology that keeps to itself: nothing of its MPI job
listens off loopback, its sockets are its owner's only."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from aaflow_stream.client import Client
from aaflow_stream.observe.status import StatusUnavailable, read_status

from ..conftest import REPO_DIR
from .ingest import expected_chunks, read_shards

pytestmark = pytest.mark.mpi

CLI = [sys.executable, "-m", "aaflow_stream.cli"]


def _topology(root: Path, name: str, data_dir: Path, extra: str = "") -> Path:
    """A continuous topology (an ingest endpoint, no files): `up` runs until stopped."""
    path = root / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndata_dir: {data_dir}\nrun_dir: {root}/{name}-run\n"
        f"ingest: {{endpoint: 'ipc://{root}/{name}-in.sock'}}\n"
        f"query: {{endpoint: 'ipc://{root}/{name}-q.sock'}}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 8}\n"
        "  - {operator: transform, chain: true}\n"
        "  - {operator: embed, batch_size: 64}\n"
        "  - {operator: upsert, batch_size: 64, chain: true}\n"
        f"shards: {{count: 2}}\nflow: {{window: 4}}\n{extra}"
    )
    return path


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _running(run_dir: Path) -> bool:
    try:
        return read_status(run_dir).state == "running"
    except StatusUnavailable:
        return False


@contextmanager
def _up(topology: Path, run_dir: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`up` in the foreground until the block ends (then Ctrl-C; it must drain cleanly),
    unless the block killed it."""
    proc = subprocess.Popen(
        [*CLI, "up", str(topology), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_DIR,
    )
    stopped = False
    try:
        _until(lambda: _running(run_dir) or proc.poll() is not None, "up did not start")
        assert proc.poll() is None, "up ended at start"
        yield proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            stopped = True
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=30)
    assert not stopped or proc.returncode == 0, err


def _files(directory: Path) -> dict[str, tuple[int, int, int]]:
    """name → (inode, size, mtime_ns) of every file under ``directory``."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            info = path.stat()
            found[str(path.relative_to(directory))] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def _kill_9_everything(holder: psutil.Process) -> None:
    """SIGKILL `up` and every process below it at once (a host crash, as far as they see)."""
    family = [holder, *holder.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    _gone, alive = psutil.wait_procs(family, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@contextmanager
def _holder(topology: Path, run_dir: Path, how: str) -> Iterator[psutil.Process]:
    """The first `up` of ``topology``, in the foreground or detached; the block must end it."""
    if how == "foreground":
        with _up(topology, run_dir) as proc:
            yield psutil.Process(proc.pid)
        return
    started = subprocess.run(
        [*CLI, "up", str(topology), "--detach"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_DIR,
    )
    assert started.returncode == 0, started.stderr
    holder = psutil.Process(int((run_dir / "up.pid").read_text()))
    try:
        _until(lambda: _running(run_dir), "the detached up did not start")
        yield holder
    finally:
        if holder.is_running():  # it is ours: started by this test through `up --detach`
            _kill_9_everything(holder)


@pytest.mark.parametrize("how", ["foreground", "detached"])
def test_a_second_up_on_a_data_dir_in_use_is_refused_and_touches_nothing(
    tmp_path: Path, how: str
) -> None:
    data = tmp_path / "data"
    first = _topology(tmp_path, "first", data)
    other = _topology(tmp_path, "other", data)  # another file, the same data directory
    docs = [{"doc_id": f"d{i}", "text": f"document {i} about owners " * 40} for i in range(24)]
    with _holder(first, tmp_path / "first-run", how) as holder:
        with Client(None, ingest_endpoint=f"ipc://{tmp_path}/first-in.sock") as client:
            result = client.ingest(docs, timeout_s=60)
        assert result.accepted == len(docs) and not result.rejected  # durable: acknowledged
        wal = {shard.name: _files(shard / "wal") for shard in data.glob("shard-*")}
        run_files = _files(tmp_path / "first-run")
        for args in ([str(other)], [str(first)], [str(first), "--detach"]):
            refused = subprocess.run(
                [*CLI, "up", *args, "--quiet"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO_DIR,
            )
            assert refused.returncode == 2, (args, refused.stderr)
            assert "in use by another `aaflow-stream up`" in refused.stderr
            assert f"pid {holder.pid}" in refused.stderr
        assert not (tmp_path / "other-run").exists()
        assert {shard.name: _files(shard / "wal") for shard in data.glob("shard-*")} == wal
        now = _files(tmp_path / "first-run")
        assert {k: v for k, v in now.items() if k != "status.json"} == {
            k: v for k, v in run_files.items() if k != "status.json"
        }
        assert read_status(tmp_path / "first-run").state == "running"
        _kill_9_everything(holder)
    # The kernel released the locks with the processes: the same topology starts again, and
    # everything the first run acknowledged is there.
    with _up(first, tmp_path / "first-run"):
        pass
    ids, _vectors, _meta = read_shards(data)
    wanted = expected_chunks([(d["doc_id"], d["text"]) for d in docs])
    assert sorted(ids.tolist()) == sorted(wanted)


def _listening(process: psutil.Process) -> list[str]:
    """The inet addresses ``process`` listens (TCP) or receives (UDP) on."""
    found = []
    for conn in process.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):
            found.append(f"{conn.laddr.ip}:{conn.laddr.port}")
    return found


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def test_a_serving_topology_listens_only_on_loopback_and_keeps_its_sockets_private(
    tmp_path: Path,
) -> None:
    topology = _topology(tmp_path, "local", tmp_path / "data", "metrics: {port: 0}\n")
    run_dir = tmp_path / "local-run"
    with _up(topology, run_dir, "--serve") as proc:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        ranks = [p for p in family if "shard.{rank}.json" in " ".join(p.cmdline())]
        assert len(ranks) >= 2  # mpiexec and its ranks are among what was looked at
        listening = {f"{p.pid} {' '.join(p.cmdline()[:3])}": _listening(p) for p in family}
        assert any(listening.values())  # the gateway's wake-up ports, the metrics, MPI
        off = {who: [a for a in addrs if not _loopback(a)] for who, addrs in listening.items()}
        assert not any(off.values()), off
        sock = run_dir / "sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        sockets = [p for p in sock.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert len(sockets) >= 5  # the supervisor's, each actor's data and control ones
        assert all(stat.S_IMODE(p.lstat().st_mode) & 0o077 == 0 for p in sockets), sockets
        manifest = next((tmp_path / "data").glob("shard-*/shard.json"))
        assert os.access(manifest, os.R_OK) and manifest.stat().st_mode & stat.S_IRUSR
