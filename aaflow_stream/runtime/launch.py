"""Launching a graph: its actors planned (``plan``), their specs written under the run
directory and started as OS processes (``launches``) in plan order, sinks first; the replicas
of an MPI stage as the ranks of one ``mpiexec`` job. The supervisor (``supervisor.py``)
watches what is started here.

The run directory: ``actors/`` (each actor's spec, ``pids.json``), ``logs/`` (one log per
launch) and ``sock/`` (0700) for the ipc sockets, or a private temporary directory when
``sock/`` is too deep for a unix socket's path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

import msgspec

from ..plan import MAX_IPC_PATH, ActorSpec, GraphSpec, plan_actors
from . import launches
from .actor import PARENT_PID_ENV
from .launches import ActorProcess, Launch

ACTOR_MODULE: Final = "aaflow_stream.runtime.actor"


class GraphLauncher:
    """Plans a graph's actors once and starts them, at the first start and at each restart."""

    def __init__(
        self,
        graph: GraphSpec,
        run_dir: Path,
        *,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        trace_dir: Path | None = None,
        inherit_fds: tuple[int, ...] = (),
    ) -> None:
        self.graph = graph
        self.run_dir = run_dir
        self._log_level = log_level
        self._env = env or {}
        self._trace_dir = trace_dir
        # Descriptors every started process inherits: the run's directory locks.
        self._inherit_fds = inherit_fds
        self.specs: list[ActorSpec] = []
        self.socket_dir: Path | None = None

    def make_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "actors").mkdir(exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)

    def make_socket_dir(self) -> Path:
        """Where the ipc sockets live: mode 0700, so no other user can reach them."""
        preferred = self.run_dir / "sock"
        longest_name = max(len(s.name) for s in self.graph.stages) + 12
        if len(str(preferred.resolve())) + longest_name <= MAX_IPC_PATH:
            preferred.mkdir(mode=0o700, exist_ok=True)
            preferred.chmod(0o700)  # also when an earlier run left it with another mode
            self.socket_dir = preferred.resolve()
        else:  # the run directory is too deep for unix socket paths
            self.socket_dir = Path(tempfile.mkdtemp(prefix="aaf-"))
        return self.socket_dir

    def remove_socket_dir(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def plan(self, supervisor_endpoint: str) -> None:
        """Plan every actor (after ``make_socket_dir``); a restart starts the same plan."""
        assert self.socket_dir is not None
        self.specs = plan_actors(
            self.graph,
            self.run_dir,
            self.socket_dir,
            supervisor_endpoint=supervisor_endpoint,
            log_level=self._log_level,
            trace_dir=self._trace_dir,
        )

    def launch_all(self, actors: dict[str, ActorProcess]) -> None:
        """Start every planned actor, stage by stage in plan order. Each goes into ``actors``
        as it starts, so that after a failure part way its owner stops those started."""
        stages = {s.name: s for s in self.graph.stages}
        for stage_name in dict.fromkeys(spec.stage for spec in self.specs):
            stage_specs = [spec for spec in self.specs if spec.stage == stage_name]
            if stages[stage_name].launcher == "mpi":
                self._launch_mpi_job(stage_specs, actors)
            else:
                for spec in stage_specs:
                    actors[spec.name] = ActorProcess(spec, self._launch(spec))

    def write_pids(self, actors: dict[str, ActorProcess]) -> None:
        """``<run_dir>/actors/pids.json``: each actor's process id, for tools and operators."""
        pids = {name: a.pid for name, a in actors.items()}
        path = self.run_dir / "actors" / "pids.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(pids))
        os.replace(tmp, path)

    def _write_spec(self, spec: ActorSpec) -> Path:
        path = self.run_dir / "actors" / f"{spec.name}.json"
        path.write_bytes(msgspec.json.encode(spec))
        return path

    def _start_process(
        self, argv: list[str], log_name: str, extra_env: dict[str, str] | None = None
    ) -> Launch:
        log_path = self.run_dir / "logs" / f"{log_name}.log"
        env = {**os.environ, **self._env, PARENT_PID_ENV: str(os.getpid()), **(extra_env or {})}
        popen, log_file = launches.start_process(argv, log_path, env, self._inherit_fds)
        return Launch(popen, log_path, log_file, mpi=extra_env is not None)

    def _launch(self, spec: ActorSpec) -> Launch:
        argv = [sys.executable, "-m", ACTOR_MODULE, str(self._write_spec(spec))]
        return self._start_process(argv, spec.name)

    def _launch_mpi_job(self, specs: list[ActorSpec], actors: dict[str, ActorProcess]) -> None:
        """All replicas of a stage as the ranks of one job (rank = replica), on this host:
        under ``mpiexec.gforker`` (no listening port), its transport on loopback."""
        specs = sorted(specs, key=lambda s: s.replica)
        for spec in specs:
            self._write_spec(spec)
        template = self.run_dir / "actors" / f"{specs[0].stage}.{{rank}}.json"
        argv = [
            launches.local_mpiexec(),
            "-n",
            str(len(specs)),
            sys.executable,
            "-m",
            ACTOR_MODULE,
            str(template),
        ]
        launch = self._start_process(argv, specs[0].stage, launches.loopback_env())
        for spec in specs:
            actors[spec.name] = ActorProcess(spec, launch)
