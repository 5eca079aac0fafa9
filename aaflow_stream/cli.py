"""The ``aaflow-stream`` command.

  aaflow-stream up TOPOLOGY        ingest the topology's sources into its shards, then exit
                 [--serve]        ... and answer queries until Ctrl-C
                 [--detach]       ... in the background, until `aaflow-stream down`
                 [--trace F]      ... and write the stage timing trace to F (Parquet)
  aaflow-stream down TOPOLOGY      stop a detached topology
  aaflow-stream status             a running topology's live figures (--topology or --run-dir)
  aaflow-stream query TEXT         ask a serving topology (--topology or --endpoint);
                 [--mode M --session S]  memory, or both, of a session
  aaflow-stream remember SESSION TEXT...  write memory entries (returns once durable)
  aaflow-stream forget SESSION...  remove sessions' memory from every rank
  aaflow-stream answer TEXT...     retrieve, reason and generate (several texts: one round)
  aaflow-stream delete DOC_ID...   remove documents from a serving topology; returns once durable
  aaflow-stream ingest FILES...    send documents (JSONL files, text files, - for stdin JSONL)
                                   to a running topology's ingest endpoint; returns once durable
  aaflow-stream keys TOPOLOGY      create the CURVE keys of endpoints off loopback
                 [--client NAME]  ... and a key pair for a remote client
  aaflow-stream validate TOPOLOGY  check a topology file; start nothing
  aaflow-stream schema             print the topology file's JSON Schema
  aaflow-stream run-graph FILE     run a raw actor graph (stages of module:callable operators)
  aaflow-stream soak --topology T  drive a topology for --minutes with feeds, queries, updates,
                                   deletes and faults, then audit it (docs/soak.md)

Exit codes:
  0  the run finished (or was interrupted and drained) cleanly
  1  an actor failed (and the restart policy was spent); the supervisor stopped the rest
  2  the command line, the topology, a source path or the data directory is invalid, the
     data or run directory is in use by another `up`, or an operator could not be built
     at start-up; nothing was started (or what started was stopped, and not restarted)
  3  ingest: some documents were rejected (the others are durable)
  4  soak: the verdict is fail (the audit, an unexpected error or RSS growth)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import access, daemon, pipeline, report, spec
from .client import Client, GatewayUnavailable, RequestError
from .errors import ActorFailed, SpecError
from .observe.status import StatusUnavailable
from .ownership import DirectoryBusy, Ownership
from .plan import GraphSpec, validate_graph
from .protocol import ActorStats
from .query.protocol import QueryFilter
from .runtime.failures import BadOperator
from .soak import options as soak_options
from .spec import MetricsSpec, RestartSpec

if TYPE_CHECKING:
    from .runtime.supervisor import Restart

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_EVERY_S = 1.0


def load_graph(path: Path) -> GraphSpec:
    """Decode a raw graph file strictly; the error names the field path and what was expected."""
    try:
        graph = msgspec.yaml.decode(path.read_bytes(), type=GraphSpec)
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from exc
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    problems = validate_graph(graph)
    if problems:
        raise SpecError(f"{path}:\n  " + "\n  ".join(problems))
    return graph


class _Progress:
    """Keeps the latest stats of every actor and prints a progress line now and then."""

    def __init__(self, order: list[str], enabled: bool) -> None:
        self.latest: dict[str, ActorStats] = {}
        self._order = order
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
        self._started = time.monotonic()
        self._printed = 0.0

    def __call__(self, stats: ActorStats) -> None:
        self.latest[stats.actor] = stats
        now = time.monotonic()
        if self._enabled and now - self._printed >= PROGRESS_EVERY_S:
            self._printed = now
            line = report.progress_line(
                report.summarize(self.latest.values(), self._order), now - self._started
            )
            print(
                f"\r{line}" if self._tty else line,
                end="" if self._tty else "\n",
                file=sys.stderr,
                flush=True,
            )

    def finish(self) -> None:
        if self._enabled and self._tty:
            print(file=sys.stderr)


async def _run(
    graph: GraphSpec,
    run_dir: Path,
    log_level: str,
    progress: _Progress,
    start_timeout_s: float = 60.0,
    restart: RestartSpec | None = None,
    metrics: MetricsSpec | None = None,
    trace_dir: Path | None = None,
    inherit_fds: tuple[int, ...] = (),
) -> tuple[float, dict[str, ActorStats], list[Restart]]:
    from .runtime.supervisor import Supervisor

    supervisor = Supervisor(
        graph,
        run_dir,
        log_level=log_level,
        on_stats=progress,
        start_timeout_s=start_timeout_s,
        restart=restart,
        metrics=metrics,
        trace_dir=trace_dir,
        inherit_fds=inherit_fds,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    try:
        async with supervisor:
            print(
                f"started {len(supervisor.actors)} actors in {supervisor.startup_s:.2f}s "
                f"(run directory {run_dir})",
                file=sys.stderr,
            )
            result = await supervisor.wait()
    finally:
        progress.finish()
    return result.startup_s, result.stats, result.restarts


def _up(args: argparse.Namespace) -> int:
    topology = spec.load(args.topology)
    pipeline.preflight(topology)
    run_dir = args.run_dir.resolve() if args.run_dir else pipeline.run_dir(topology)
    if args.trace and args.detach:
        raise SpecError("--trace needs a run in the foreground (not --detach)")
    trace_dir = run_dir / "trace" if args.trace else None
    # One owner per directory, held until every process this `up` starts is gone; taken
    # before anything in them is touched (ownership.py).
    directories = [(pipeline.data_dir(topology), "data directory"), (run_dir, "run directory")]
    if args.held_lock:  # the detached child of `up --detach`: its parent took them
        owner = Ownership.adopt(args.held_lock, directories)
    else:
        owner = Ownership.acquire(directories)
    with owner:
        if args.detach:
            pid = daemon.detach(
                args.topology.resolve(),
                run_dir,
                topology.query.endpoint,
                args.log_level,
                topology.timeouts.start_s + 60,
                locks=owner.fds,
                curve=access.keys_for_serving(topology),
            )
            log_path = run_dir / daemon.LOG_FILE
            print(f"serving on {topology.query.endpoint} (pid {pid}; log {log_path})")
            return EXIT_OK
        graph = pipeline.ingestion_graph(topology, serve=args.serve)
        order = pipeline.stage_order(topology)
        progress = _Progress(order, enabled=not args.quiet)
        import uvloop

        startup_s, stats, restarts = uvloop.run(
            _run(
                graph,
                run_dir,
                args.log_level,
                progress,
                topology.timeouts.start_s,
                topology.durability.restart,
                topology.metrics,
                trace_dir,
                owner.fds,
            )
        )
    finished_at = time.time()  # every process `up` started is gone
    summary = report.summarize(stats.values(), order)
    shutdown_s = max(0.0, finished_at - summary.last_applied_at) if summary.last_applied_at else 0.0
    timing = None
    if trace_dir is not None:
        from .observe import trace as tracing

        table = tracing.collect(trace_dir, args.trace)
        timing = tracing.summarize(table, order)
    if args.json:
        restarted = [dataclasses.asdict(r) for r in restarts]
        out = {**_summary_json(summary, startup_s, shutdown_s), "restarts": restarted}
        if timing is not None:
            out["trace"] = {"file": str(args.trace), **timing.as_json()}
        print(json.dumps(out))
    else:
        print(report.table(summary, startup_s, shutdown_s))
        for restart in restarts:
            took = restart.ready_at - restart.detected_at
            print(f"restarted in {took:.2f}s after: {restart.reason}")
        if timing is not None:
            from .observe.trace import table_text

            print(f"\nstage timing trace {args.trace}:\n{table_text(timing)}")
        print(f"data directory {pipeline.data_dir(topology)}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from .observe import view

    if args.run_dir:
        run_dir = args.run_dir.resolve()
    elif args.topology:
        run_dir = pipeline.run_dir(spec.load(args.topology))
    else:
        raise SpecError("give --topology or --run-dir")
    try:
        view.show(run_dir, as_json=args.json, watch=args.watch)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _summary_json(
    summary: report.RunSummary, startup_s: float, shutdown_s: float
) -> dict[str, Any]:
    return {
        "documents": summary.documents,
        "chunks": summary.chunks,
        "vectors": summary.vectors,
        "dead_letters": summary.dead_letters,
        "total_s": summary.total_s,
        "startup_s": startup_s,
        "shutdown_s": shutdown_s,
        "stages": {
            s.stage: {
                "replicas": s.replicas,
                "busy_s": s.busy_s,
                "cpu_s": s.cpu_s,
                "span_s": s.span_s,
                "blocked_s": s.blocked_s,
                "rows_in": s.rows_in,
                "rows_out": s.rows_out,
                "metrics": s.extra,
            }
            for s in summary.stages
        },
    }


def _gateway_client(args: argparse.Namespace) -> Client:
    """A client of the gateway the command names (``--endpoint`` or ``--topology``), with
    the CURVE keys it needs (``access.client_keys``)."""
    topology = spec.load(args.topology) if args.topology else None
    bound_at = topology.query.endpoint if topology is not None else None
    endpoint = args.endpoint or bound_at
    if not endpoint:
        raise SpecError("give --endpoint or --topology")
    keys = access.client_keys(args, endpoint, topology, bound_at)
    return Client(endpoint, timeout_s=args.timeout, curve=keys)


def _ingest(args: argparse.Namespace) -> int:
    from .ingest.inputs import LocalReject, read_documents

    endpoint = args.endpoint
    # The topology's own request bound when it is known (the client's default otherwise).
    bound: dict[str, int] = {}
    topology = spec.load(args.topology) if args.topology else None
    bound_at = None
    if topology is not None:
        ingest = topology.ingest
        if ingest is None:
            raise SpecError(f"{args.topology}: no ingest endpoint (add ingest: {{}})")
        bound_at = ingest.endpoint
        endpoint = endpoint or bound_at
        bound["max_request_bytes"] = int(ingest.max_request_mb * 2**20)
    if not endpoint:
        raise SpecError("give --endpoint or --topology")
    keys = access.client_keys(args, endpoint, topology, bound_at)
    try:
        items = list(read_documents(args.files))
    except OSError as exc:
        raise SpecError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    docs = [d for d in items if not isinstance(d, LocalReject)]
    local = [d for d in items if isinstance(d, LocalReject)]
    with Client(None, ingest_endpoint=endpoint, curve=keys, **bound) as client:
        result = client.ingest(docs, timeout_s=args.timeout)
    for reject in local:
        print(f"rejected {reject.where}: {reject.reason}")
    for rejected in result.rejected:
        print(f"rejected {rejected.doc_id or f'document {rejected.index}'}: {rejected.reason}")
    print(f"accepted {result.accepted}, rejected {len(local) + len(result.rejected)} (durable)")
    return EXIT_REJECTED if local or result.rejected else EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    with _gateway_client(args) as client:
        removed = client.delete(args.doc_ids)
    print(f"removed {removed} chunks of {len(args.doc_ids)} document(s)")
    return EXIT_OK


def _query(args: argparse.Namespace) -> int:
    where = None
    if args.source or args.from_ms is not None or args.to_ms is not None:
        where = QueryFilter(sources=args.source, ts_from_ms=args.from_ms, ts_to_ms=args.to_ms)
    with _gateway_client(args) as client:
        reply = client.query_reply(
            args.text, k=args.k, where=where, mode=args.mode, session=args.session
        )
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_OK
    for rank, hit in enumerate(reply.hits, start=1):
        snippet = " ".join(hit.text.split())[:100]
        where_from = f"{hit.doc_id}#{hit.seq}" if hit.path == "knowledge" else f"memory {hit.kind}"
        print(f"{rank:>3}. {hit.score:8.4f}  {where_from} (shard {hit.shard})  {snippet}")
    t = reply.timings
    print(f"embed {t.embed_ms:.2f} ms, retrieve {t.retrieve_ms:.2f} ms, total {t.total_ms:.2f} ms")
    return EXIT_OK


def _remember(args: argparse.Namespace) -> int:
    with _gateway_client(args) as client:
        reply = client.remember(args.session, args.texts, kind=args.kind)
    print(
        f"session {args.session}: {reply.added} added, {reply.merged} merged into "
        f"near-duplicates, {reply.evicted} evicted by the session's bound"
    )
    return EXIT_OK


def _answer(args: argparse.Namespace) -> int:
    with _gateway_client(args) as client:
        reply = client.answer(
            args.texts, session=args.session, mode=args.mode, k=args.k, budget=args.budget
        )
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_OK
    for answer in reply.answers:
        cached = " (cached)" if answer.cached else ""
        print(f"Q: {answer.question}{cached}\nA: {answer.text}")
        for n, c in enumerate(answer.citations, start=1):
            where_from = f"{c.doc_id} chunk {c.chunk_id}" if c.path == "knowledge" else "memory"
            print(f"   [{n}] {where_from} ({c.source})")
    t = reply.timings
    steps = ("embed", "cache", "retrieve", "reason", "generate", "memory", "total")
    print(", ".join(f"{step} {getattr(t, step + '_ms'):.2f} ms" for step in steps))
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    with _gateway_client(args) as client:
        removed = client.forget(args.sessions)
    print(f"removed {removed} memory entries of {len(args.sessions)} session(s)")
    return EXIT_OK


def _soak(args: argparse.Namespace) -> int:
    from .soak import driver

    return driver.main(args)


def _run_graph(args: argparse.Namespace) -> int:
    graph = load_graph(args.file)
    order = [s.name for s in graph.stages]
    progress = _Progress(order, enabled=False)
    run_dir = args.run_dir.resolve()
    import uvloop

    with Ownership.acquire([(run_dir, "run directory")]) as owner:
        _, stats, _ = uvloop.run(
            _run(graph, run_dir, args.log_level, progress, inherit_fds=owner.fds)
        )
    print("finished")
    for name, s in sorted(stats.items()):
        print(
            f"  {name:<16} busy {s.busy_s:8.3f}s  rows in {s.input.rows:>10}  "
            f"rows out {s.rows_out:>10}  blocked {s.blocked_s:7.3f}s  "
            f"rejected {s.input.rejected}"
        )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aaflow-stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="ingest a topology's sources into its shards")
    up.add_argument("topology", type=Path)
    up.add_argument("--run-dir", type=Path, help="logs and sockets (default runs/<name>)")
    up.add_argument("--quiet", action="store_true", help="no progress lines")
    up.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    up.add_argument("--serve", action="store_true", help="answer queries until stopped")
    up.add_argument("--detach", action="store_true", help="serve in the background")
    up.add_argument(
        "--trace", type=Path, metavar="FILE", help="write the stage timing trace (Parquet)"
    )
    up.add_argument(  # also accepted after the subcommand; reaches every actor
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    up.add_argument(  # internal: the directory locks `up --detach` hands to its child
        "--held-lock", type=int, action="append", default=[], help=argparse.SUPPRESS
    )
    status = commands.add_parser("status", help="live figures of a running topology")
    status.add_argument("--topology", type=Path, help="the topology's run directory")
    status.add_argument("--run-dir", type=Path)
    status.add_argument("--json", action="store_true", help="one JSON object per refresh")
    status.add_argument("--watch", action="store_true", help="refresh every second")
    down = commands.add_parser("down", help="stop a detached topology")
    down.add_argument("topology", type=Path)
    down.add_argument("--run-dir", type=Path)
    query = commands.add_parser("query", help="query a serving topology")
    query.add_argument("text")
    query.add_argument("--k", type=int, default=5)
    query.add_argument("--topology", type=Path, help="take the endpoint from this topology")
    query.add_argument("--endpoint", help="the gateway endpoint, e.g. tcp://127.0.0.1:7070")
    query.add_argument("--timeout", type=float, default=10.0)
    query.add_argument("--source", action="append", help="only chunks of this source")
    query.add_argument("--from-ms", type=int, help="only chunks with ts >= this (unix ms)")
    query.add_argument("--to-ms", type=int, help="only chunks with ts <= this (unix ms)")
    query.add_argument("--json", action="store_true")
    query.add_argument("--mode", choices=["knowledge", "memory", "both"], default="knowledge")
    query.add_argument("--session", help="whose memory a memory or both query sees")
    remember = commands.add_parser(
        "remember", help="write memory entries into a session (returns once durable)"
    )
    remember.add_argument("session")
    remember.add_argument("texts", nargs="+")
    remember.add_argument("--kind", choices=["summary", "intermediate", "state"], default="summary")
    forget = commands.add_parser("forget", help="remove sessions' memory from every rank")
    forget.add_argument("sessions", nargs="+")
    answer = commands.add_parser("answer", help="retrieve, reason and generate an answer")
    answer.add_argument("texts", nargs="+", help="the question (several: sub-questions)")
    answer.add_argument("--session", help="whose memory it reads and learns into")
    answer.add_argument("--mode", choices=["knowledge", "memory", "both"], default="knowledge")
    answer.add_argument("--k", type=int, help="candidates per question (topology: answer.k)")
    answer.add_argument("--budget", type=int, help="context characters per question")
    answer.add_argument("--json", action="store_true")
    for memory_command in (remember, forget, answer):
        memory_command.add_argument("--topology", type=Path, help="take the endpoint from it")
        memory_command.add_argument("--endpoint", help="the gateway endpoint")
        memory_command.add_argument("--timeout", type=float, default=30.0)
    delete = commands.add_parser(
        "delete", help="remove documents from a serving topology (returns once durable)"
    )
    delete.add_argument("doc_ids", nargs="+")
    delete.add_argument("--topology", type=Path, help="take the endpoint from this topology")
    delete.add_argument("--endpoint", help="the gateway endpoint, e.g. tcp://127.0.0.1:7070")
    delete.add_argument("--timeout", type=float, default=30.0)
    ingest = commands.add_parser(
        "ingest", help="send documents to a running topology (returns once durable)"
    )
    ingest.add_argument("files", nargs="+", help="JSONL or text files; - reads JSONL on stdin")
    ingest.add_argument("--topology", type=Path, help="take the endpoint from this topology")
    ingest.add_argument("--endpoint", help="the ingest endpoint, e.g. tcp://127.0.0.1:7071")
    ingest.add_argument("--timeout", type=float, default=60.0)
    for client_command in (query, remember, forget, answer, delete, ingest):
        access.add_key_options(client_command)
    access.add_keys_command(commands)
    validate = commands.add_parser("validate", help="check a topology; start nothing")
    validate.add_argument("topology", type=Path)
    commands.add_parser("schema", help="print the topology JSON Schema")
    graph = commands.add_parser("run-graph", help="run a raw actor graph file")
    graph.add_argument("file", type=Path)
    graph.add_argument("--run-dir", type=Path, default=Path("runs/graph"))
    soak = commands.add_parser(
        "soak", help="drive a topology with feeds, queries and faults; audit it (exit 4: fail)"
    )
    soak_options.add_arguments(soak)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    try:
        if args.command == "schema":
            print(json.dumps(spec.json_schema(), indent=2))
            return EXIT_OK
        if args.command == "validate":
            topology = spec.load(args.topology)
            pipeline.preflight(topology)
            print(
                f"{args.topology}: ok ({len(topology.stages)} stages, "
                f"{topology.shards.count} shards)"
            )
            return EXIT_OK
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            topology = spec.load(args.topology)
            run_dir = args.run_dir.resolve() if args.run_dir else pipeline.run_dir(topology)
            print(daemon.down(run_dir, timeout_s=topology.timeouts.drain_s + 30))
            return EXIT_OK
        if args.command == "query":
            return _query(args)
        if args.command == "delete":
            return _delete(args)
        if args.command == "remember":
            return _remember(args)
        if args.command == "forget":
            return _forget(args)
        if args.command == "answer":
            return _answer(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "status":
            return _status(args)
        if args.command == "keys":
            access.keys_command(args)
            return EXIT_OK
        if args.command == "soak":
            return _soak(args)
        return _run_graph(args)
    except (SpecError, DirectoryBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BadOperator as exc:
        print(f"error: {exc} (not restarted: it would fail the same way)", file=sys.stderr)
        return EXIT_USAGE
    except daemon.DaemonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.exit_code == EXIT_USAGE else EXIT_FAILED
    except (GatewayUnavailable, RequestError, StatusUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ActorFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
