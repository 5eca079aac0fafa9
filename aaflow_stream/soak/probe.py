"""Every process of a running topology (the supervisor, its actors and shard ranks, the MPI
process manager) with its resident memory and open descriptors, and the data directory's size.

The supervisor is ``<run_dir>/up.pid`` (or the status file's supervisor pid); every process
below it is named after the actor spec it was started with (``embed.0``, ``shard.3``), else
after its executable. A process that is gone (or a zombie) at the look is left out.
``actor_pids`` (``<run_dir>/actors/pids.json``) is what the faults pick their victims from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from .. import daemon
from .record import Proc, Sample


def supervisor_pid(run_dir: Path) -> int | None:
    pid = daemon.running_pid(run_dir)
    if pid is not None:
        return pid
    try:  # a topology started in the foreground (``up --serve``) has no up.pid
        found = int(json.loads((run_dir / "status.json").read_text())["supervisor_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if psutil.pid_exists(found) else None


def actor_pids(run_dir: Path) -> dict[str, int]:
    """``pids.json`` as the current supervisor last wrote it (empty before it is ready)."""
    try:
        raw = json.loads((run_dir / "actors" / "pids.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in raw.items() if v}


def _name_of(process: psutil.Process) -> str:
    """An actor's name from the spec file it was started with (``.../actors/embed.0.json``;
    a shard rank's ``shard.{rank}.json`` plus its ``PMI_RANK``), else the executable's name.
    Read from the process itself: ``pids.json`` lags behind a restart."""
    command = process.cmdline()
    if command and "mpiexec" in Path(command[0]).name:  # its arguments name the ranks' spec
        return Path(command[0]).name
    for arg in command:
        if arg.endswith(".json") and "/actors/" in arg:
            name = Path(arg).stem
            if "{rank}" in name:
                name = name.replace("{rank}", process.environ().get("PMI_RANK", "?"))
            return name
    return process.name()


def processes(run_dir: Path) -> dict[str, psutil.Process]:
    """name -> process, for every live process of the topology: the supervisor and all its
    descendants (actors, the MPI process manager, its ranks)."""
    supervisor = supervisor_pid(run_dir)
    if supervisor is None:
        return {}
    try:
        root = psutil.Process(supervisor)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    found: dict[str, psutil.Process] = {}
    for process in tree:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:  # killed, not reaped yet
                continue
            name = "supervisor" if process.pid == supervisor else _name_of(process)
        except psutil.Error:
            continue
        found[name if name not in found else f"{name}.{process.pid}"] = process
    return found


def dir_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total / 2**20


def held_mb(run_dir: Path) -> dict[str, float]:
    """Per shard rank, the data it reports holding in memory (index codes, ids, metadata):
    growth the RSS bound must not count as a leak."""
    try:
        raw = json.loads((run_dir / "status.json").read_text())
        return {str(s["actor"]): float(s["bytes"]) / 2**20 for s in raw["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def sample(run_dir: Path, data_dir: Path) -> Sample:
    procs: dict[str, Proc] = {}
    held = held_mb(run_dir)
    for name, process in processes(run_dir).items():
        try:
            with process.oneshot():
                rss = process.memory_info().rss / 2**20
                procs[name] = Proc(process.pid, rss, process.num_fds(), held.get(name, 0.0))
        except psutil.Error:
            continue
    return Sample(time.time(), procs, dir_mb(data_dir))
