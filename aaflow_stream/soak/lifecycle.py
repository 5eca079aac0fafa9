"""The topology a soak drives: its working copy, ``up --detach`` and ``down``.

Without ``--attach`` the soak runs a *working copy* of the topology: the same file with its
data directory, run directory and watched directories moved under the report directory, so
that each soak starts empty, its audit sees only what it did, and runs do not accumulate data.
Everything else (stages, shards, endpoints, durability) is the topology as written.

``up`` and ``down`` are the CLI itself in a subprocess: the soak starts and restarts the
topology exactly as a user would, and waits for the directory locks (``ownership.py``) of a
killed supervisor's last processes to be released first.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import pipeline, spec
from ..errors import DirectoryBusy, SoakSetupError
from ..ownership import Ownership
from ..spec import TopologySpec

log = logging.getLogger(__name__)

CLI = [sys.executable, "-m", "aaflow_stream.cli"]
WORK_MARKER = ".aaflow-soak-work"  # only a directory holding it is ever emptied by a soak
MAX_RUN_DIR = 60  # bytes: the actors' ipc sockets live under <run_dir>/sock (108-byte limit)


@dataclass(frozen=True)
class Target:
    topology: Path  # the file ``up`` and ``down`` are given
    spec: TopologySpec
    data_dir: Path
    run_dir: Path
    watch_root: Path | None  # the first watched directory, where the soak writes files
    follow: bool  # that source follows deletes
    query_endpoint: str
    ingest_endpoint: str
    max_request_bytes: int


def target(topology_path: Path) -> Target:
    topology = spec.load(topology_path)
    if topology.ingest is None:
        raise SoakSetupError(
            f"{topology_path}: the soak feeds the ingest endpoint and the topology has none "
            "(add `ingest: {}`; topology/soak.yaml is the default plus what the soak needs)"
        )
    watched = next((s for s in topology.sources if s.watch), None)
    return Target(
        topology=topology_path,
        spec=topology,
        data_dir=pipeline.data_dir(topology),
        run_dir=pipeline.run_dir(topology),
        watch_root=Path(watched.paths[0]).resolve() if watched else None,
        follow=bool(watched and watched.deletes == "follow"),
        query_endpoint=topology.query.endpoint,
        ingest_endpoint=topology.ingest.endpoint,
        max_request_bytes=int(topology.ingest.max_request_mb * 2**20),
    )


def _fresh_dir(path: Path) -> Path:
    """``path`` emptied when a soak made it, created when missing; refused otherwise."""
    if path.exists() and any(path.iterdir()):
        if not (path / WORK_MARKER).exists():
            raise SoakSetupError(f"{path} exists and was not made by a soak: give another --report")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / WORK_MARKER).write_text("made by aaflow-stream soak; emptied by the next one\n")
    return path


def working_copy(topology_path: Path, report_dir: Path) -> Path:
    """Write ``<report>/topology.yaml``: the topology with fresh directories of its own."""
    raw: dict[str, Any] = yaml.safe_load(topology_path.read_text())
    work = _fresh_dir(report_dir / "work")
    run_dir = work / "run"
    if len(str(run_dir.resolve())) > MAX_RUN_DIR:  # sockets would not fit: a short one
        run_dir = Path(tempfile.mkdtemp(prefix="aaf-soak-"))
    raw["data_dir"] = str((work / "data").resolve())
    raw["run_dir"] = str(run_dir.resolve())
    for i, source in enumerate(raw.get("sources") or []):
        if isinstance(source, dict) and source.get("watch"):
            inbox = work / f"inbox-{i}"
            inbox.mkdir()
            source["paths"] = [str(inbox.resolve())]
    out = report_dir / "topology.yaml"
    header = f"# the working copy of {topology_path} for a soak (data, run and inboxes moved)\n"
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    spec.load(out)  # the copy must be as valid as the original
    return out


def _unlocked(target: Target) -> bool:
    try:
        owner = Ownership.acquire([(target.data_dir, "data"), (target.run_dir, "run")])
    except DirectoryBusy:
        return False
    owner.release()
    return True


async def wait_unlocked(target: Target, timeout_s: float) -> bool:
    """Until no process of an earlier ``up`` holds the data or run directory."""
    deadline = time.monotonic() + timeout_s
    while not _unlocked(target):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def _cli(*args: str, timeout_s: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout_s:.0f}s"
    return int(proc.returncode or 0), out.decode(errors="replace")


async def up(target: Target, timeout_s: float) -> float:
    """``aaflow-stream up TOPOLOGY --detach``, again while an earlier one's processes still
    hold the directories; the seconds it took. ``SoakSetupError`` when it cannot start."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        await wait_unlocked(target, max(0.0, deadline - time.monotonic()))
        log.info("directories free after %.1fs; up --detach", time.monotonic() - started)
        left = max(1.0, deadline - time.monotonic())
        code, out = await _cli("up", str(target.topology), "--detach", timeout_s=left)
        log.info("up --detach exited %d after %.1fs", code, time.monotonic() - started)
        if code == 0:
            return time.monotonic() - started
        if "in use" not in out or time.monotonic() > deadline:
            raise SoakSetupError(f"`up --detach` failed (exit {code}): {out.strip()[-800:]}")
        await asyncio.sleep(0.5)


async def down(target: Target, timeout_s: float) -> tuple[int, str]:
    """``aaflow-stream down TOPOLOGY``, then until every process has let the locks go."""
    code, out = await _cli("down", str(target.topology), timeout_s=timeout_s)
    await wait_unlocked(target, timeout_s)
    return code, out
