"""``aaflow-stream soak``: start (or attach to) a topology, drive it, fault it, stop it, audit
it, report, and exit 0 (pass) or 4 (fail).

Order: ``up --detach`` of the working copy; the workload, the faults, the process sampler and
the per-interval report run for ``--minutes``; then faults stop (the last one recovers), the
feeds stop and every operation in flight is settled; a last sample; ``down``; the audit of
the stored state (or, attached, through the query API); the summary, the ledger and the chart
in the report directory; the verdict line.

``--audit REPORT_DIR`` does the audit and verdict again from what a finished soak left
(``summary.json``, ``ledger.json``, ``samples.jsonl`` and its data directory), starting nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..ownership import Ownership
from . import audit, lifecycle, probe, report
from .faults import RECOVERY_TIMEOUT_S, RESTART_TIMEOUT_S, Faults
from .ledger import Ledger
from .lifecycle import Target
from .options import SoakOptions, from_args
from .record import ErrorEvent, Recorder
from .workload import Workload

log = logging.getLogger(__name__)

EXIT_PASS, EXIT_FAIL = 0, 4
SETTLE_S = 90.0  # after the run: operations in flight and files written get this long
SAMPLE_EVERY_S = 5.0
UP_TIMEOUT_S = 180.0
DOWN_TIMEOUT_S = 120.0


def _say(text: str) -> None:
    print(text, flush=True)


class Soak:
    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.report_dir = options.report
        self.recorder = Recorder(grace_s=options.ingest_timeout_s + 5)
        tag = time.strftime("%H%M%S")
        self.ledger = Ledger(options.seed, f"soak{options.seed}-{tag}")
        self._rows_printed = 0

    async def run(self) -> int:
        options = self.options
        self.report_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("minutes.jsonl", "samples.jsonl", "summary.json", "chart.png"):
            (self.report_dir / stale).unlink(missing_ok=True)
        if options.attach:
            target = lifecycle.target(options.topology)
        else:
            target = lifecycle.target(lifecycle.working_copy(options.topology, self.report_dir))
        model = audit.ChunkModel(target.spec)
        _say(
            f"soak: {options.topology} for {options.minutes:g} min, {options.rate_docs:g} docs/s, "
            f"{options.query_clients} query clients, update {options.update_ratio:g}, delete "
            f"{options.delete_ratio:g}, faults "
            + (
                f"every {options.faults.every_s:g}s ({', '.join(options.faults.kinds)})"
                if options.faults
                else "none"
            )
            + f", seed {options.seed}; report {self.report_dir}"
            + ("" if options.attach else f"; working copy {target.topology}")
        )
        up_s: float | None = None
        running = False
        try:
            if not options.attach:
                up_s = await lifecycle.up(target, UP_TIMEOUT_S)
                running = True
                _say(f"up --detach in {up_s:.1f}s (data {target.data_dir})")
            stored, stopped_at = await self._drive(target, model)
            if running:
                code, out = await lifecycle.down(target, DOWN_TIMEOUT_S)
                running = False
                if code != 0:
                    self.recorder.error("down", "down_failed", time.time(), out[-300:])
                stored = await asyncio.to_thread(_read_locked, target, self.ledger.prefix)
        finally:
            if running:
                await lifecycle.down(target, DOWN_TIMEOUT_S)
        return self._conclude(target, model, stored, up_s, stopped_at)

    async def _drive(self, target: Target, model: audit.ChunkModel) -> tuple[audit.Stored, float]:
        options = self.options
        recorder = self.recorder
        recorder.started = time.time()
        workload = Workload(options, target, self.ledger, recorder, model)
        restart = lambda: lifecycle.up(target, UP_TIMEOUT_S)  # noqa: E731
        faults = Faults(options.faults, options.seed, target.run_dir, recorder, workload, restart)
        workload.start()
        _say(report.HEADER)
        background = [
            asyncio.create_task(self._sample(target)),
            asyncio.create_task(self._report()),
            asyncio.create_task(faults.watch_supervisor()),
        ]
        injecting = asyncio.create_task(faults.run(recorder.started, options.duration_s))
        await asyncio.sleep(options.duration_s)
        faults.stop()
        try:
            await asyncio.wait_for(injecting, RESTART_TIMEOUT_S + RECOVERY_TIMEOUT_S + 30)
        except TimeoutError:
            recorder.error("fault", "no_recovery", time.time(), "the last fault never ended")
        await workload.stop(SETTLE_S)
        stopped_at = time.time()
        await self._take_sample(target)  # the end values the RSS bound is judged on
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._print_rows(final=True)
        stored = audit.Stored([])
        if options.attach:
            stored = await audit.read_via_queries(
                target.query_endpoint,
                options.seed,
                self.ledger.prefix,
                self.ledger.entries(),
                self.ledger.pending(),
                model,
            )
        return stored, stopped_at

    # --- background ---------------------------------------------------------------------------

    async def _take_sample(self, target: Target) -> None:
        sample = await asyncio.to_thread(probe.sample, target.run_dir, target.data_dir)
        self.recorder.sample(sample)
        report.append_jsonl(self.report_dir / "samples.jsonl", sample.as_json())

    async def _sample(self, target: Target) -> None:
        every = min(SAMPLE_EVERY_S, self.options.interval_s / 4)
        while True:
            try:
                await self._take_sample(target)
            except Exception:  # a look that failed is a gap in the chart, not the soak's end
                log.exception("sampling the processes failed")
            await asyncio.sleep(every)

    async def _report(self) -> None:
        interval = self.options.interval_s
        while True:
            due = self.recorder.started + (self._rows_printed + 1) * interval
            await asyncio.sleep(max(0.0, due - time.time()) + 0.5)
            self._print_rows(final=False)

    def _print_rows(self, final: bool) -> None:
        interval = self.options.interval_s
        elapsed = time.time() - self.recorder.started
        complete = int(elapsed // interval)
        last = complete + (1 if final and elapsed > complete * interval + 1 else 0)
        while self._rows_printed < last:
            self._rows_printed += 1
            r = report.row(self.recorder, self._rows_printed, interval)
            _say(report.line(r))
            _say(report.rss_line(r))
            report.append_jsonl(self.report_dir / "minutes.jsonl", dataclasses.asdict(r))

    # --- the end ------------------------------------------------------------------------------

    def _conclude(
        self,
        target: Target,
        model: audit.ChunkModel,
        stored: audit.Stored,
        up_s: float | None,
        stopped_at: float,
    ) -> int:
        entries, pending = self.ledger.entries(), self.ledger.pending()
        expected = audit.expected_chunks(self.options.seed, entries, model)
        result = audit.compare(entries, pending, stored, expected)
        for doc_id, op in pending.items():
            self.recorder.error("settle", "unresolved", op.sent_at, f"{doc_id} never acknowledged")
        unexpected = self.recorder.unexpected_errors(stopped_at)
        growth = report.rss_growth(self.recorder.samples, self.options.warmup_s)
        verdict = report.verdict(result, unexpected, growth)
        self.ledger.save(self.report_dir / "ledger.json")
        rows = [
            report.row(self.recorder, i, self.options.interval_s, stopped_at)
            for i in range(1, self._rows_printed + 1)
        ]
        chart = report.chart(
            rows,
            self.recorder.samples,
            self.recorder.faults,
            self.recorder.started,
            self.report_dir / "chart.png",
        )
        summary = {
            "options": {k: str(v) for k, v in dataclasses.asdict(self.options).items()},
            "topology": str(target.topology.resolve()),
            "data_dir": str(target.data_dir),
            "run_dir": str(target.run_dir),
            "attach": self.options.attach,
            "prefix": self.ledger.prefix,
            "started": self.recorder.started,
            "stopped": stopped_at,
            "up_s": up_s,
            "warmup_s": self.options.warmup_s,
            "rows": [dataclasses.asdict(r) for r in rows],
            "faults": [f.as_json() for f in self.recorder.faults],
            "errors": _errors_json(self.recorder.errors, unexpected),
            "checks": {
                "total": len(self.recorder.checks),
                "failed": sum(not ok for _, ok in self.recorder.checks),
            },
            "audit": result.as_json(),
            "rss": [{**dataclasses.asdict(g), "ok": g.ok} for g in growth],
            "verdict": {"passed": verdict.passed, "reasons": verdict.reasons},
            "chart": str(chart) if chart else None,
        }
        (self.report_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        _say(_closing(self.recorder, result, growth, verdict, chart))
        return verdict.exit_code


def _errors_json(errors: list[ErrorEvent], unexpected: list[ErrorEvent]) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for e in errors:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
    return {
        "total": len(errors),
        "by_kind": by_kind,
        "unexpected": [dataclasses.asdict(e) for e in unexpected],
    }


def _closing(
    recorder: Recorder,
    result: audit.AuditResult,
    growth: list[report.Growth],
    verdict: report.Verdict,
    chart: Path | None,
) -> str:
    faults = recorder.faults
    recoveries = [f.recovery_s for f in faults if f.recovery_s is not None]
    lines = [
        "",
        f"faults: {len(faults)} injected, {len(recoveries)} recovered"
        + (
            f" (recovery s: min {min(recoveries):.1f}, max {max(recoveries):.1f}, "
            f"mean {sum(recoveries) / len(recoveries):.1f})"
            if recoveries
            else ""
        ),
    ]
    lines += [
        f"  #{f.number} {f.kind:<10} {f.victim:<12} pid {f.pid:<8} "
        + (f"recovered in {f.recovery_s:.1f}s" if f.recovery_s is not None else "NOT recovered")
        + (f" ({f.error})" if f.error else "")
        for f in faults
    ]
    kinds: dict[str, int] = {}
    for e in recorder.errors:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    lines.append(
        "errors by kind: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")
    )
    lines.append(f"audit: {result.line()}")
    lines += [f"  {x}" for x in result.examples]
    if growth:
        lines += ["RSS after warm-up:", report.growth_table(growth)]
    if chart:
        lines.append(f"chart: {chart}")
    lines.append(verdict.line())
    return "\n".join(lines)


def _read_locked(target: Target, prefix: str) -> audit.Stored:
    """The stored state, read while holding the data directory's lock: no ``up`` runs."""
    with Ownership.acquire([(target.data_dir, "data directory")]):
        return audit.read_data_dir(target.data_dir, prefix)


def reaudit(report_dir: Path) -> int:
    """The audit and verdict of a finished soak again, from its report directory."""
    try:
        summary = json.loads((report_dir / "summary.json").read_text())
        ledger = Ledger.load(report_dir / "ledger.json")
    except (OSError, ValueError, KeyError) as exc:
        raise SpecError(f"{report_dir}: not a finished soak's report ({exc})") from exc
    if summary.get("attach"):
        raise SpecError(f"{report_dir}: an attached soak left no data directory of its own")
    target = lifecycle.target(Path(summary["topology"]))
    model = audit.ChunkModel(target.spec)
    stored = _read_locked(target, ledger.prefix)
    entries, pending = ledger.entries(), ledger.pending()
    result = audit.compare(
        entries, pending, stored, audit.expected_chunks(ledger.seed, entries, model)
    )
    unexpected = [ErrorEvent(**e) for e in summary["errors"]["unexpected"]]
    samples = report.read_samples(report_dir / "samples.jsonl")
    growth = report.rss_growth(samples, float(summary["warmup_s"]))
    verdict = report.verdict(result, unexpected, growth)
    _say(f"audit: {result.line()}")
    for example in result.examples:
        _say(f"  {example}")
    if growth:
        _say(report.growth_table(growth))
    _say(verdict.line())
    return verdict.exit_code


def main(args: argparse.Namespace) -> int:
    """The ``soak`` subcommand (``cli.py`` delegates here)."""
    if args.audit is not None:
        return reaudit(args.audit)
    options = from_args(args, time.strftime("%Y%m%d-%H%M%S"))
    try:
        return asyncio.run(Soak(options).run())
    except KeyboardInterrupt:
        print("soak interrupted", file=sys.stderr)
        return EXIT_FAIL
