"""The ``aaflow-stream`` command.

Exit codes:
  0  the run finished (or was interrupted and drained) cleanly
  1  an actor failed; the supervisor stopped the rest
  2  the command line or the graph file is invalid; nothing was started
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import msgspec

from .errors import ActorFailed, SpecError
from .plan import GraphSpec, validate_graph

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def load_graph(path: Path) -> GraphSpec:
    """Decode a graph file strictly; the error names the field path and what was expected."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        graph = msgspec.yaml.decode(raw, type=GraphSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    problems = validate_graph(graph)
    if problems:
        raise SpecError(f"{path}:\n  " + "\n  ".join(problems))
    return graph


async def _up(graph: GraphSpec, run_dir: Path, log_level: str) -> int:
    from .runtime.supervisor import Supervisor

    supervisor = Supervisor(graph, run_dir, log_level=log_level)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    try:
        async with supervisor:
            print(
                f"started {len(supervisor.actors)} actors in {supervisor.startup_s:.2f}s; "
                f"run directory {run_dir}"
            )
            report = await supervisor.wait()
    except ActorFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"finished in {report.run_s:.2f}s")
    for name, stats in sorted(report.stats.items()):
        print(
            f"  {name:<16} busy {stats.busy_s:8.3f}s  rows in {stats.input.rows:>10}  "
            f"rows out {stats.rows_out:>10}  blocked {stats.blocked_s:7.3f}s  "
            f"rejected {stats.input.rejected}"
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aaflow-stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run a dataflow graph until its sources end")
    up.add_argument("file", type=Path)
    up.add_argument("--run-dir", type=Path, default=Path("runs/latest"))
    validate = commands.add_parser("validate", help="check a graph file; start nothing")
    validate.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        graph = load_graph(args.file)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "validate":
        print(f"{args.file}: ok ({len(graph.stages)} stages)")
        return EXIT_OK
    import uvloop

    return uvloop.run(_up(graph, args.run_dir, args.log_level))


if __name__ == "__main__":
    sys.exit(main())
