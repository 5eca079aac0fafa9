"""The Prometheus endpoint: the supervisor's latest ``RunStatus`` as metrics.

Served with the official client library (``prometheus_client``) on a thread of the supervisor,
from a registry of its own (no process-global state). A custom collector turns the latest
snapshot into metric families at scrape time, so a scrape and ``aaflow-stream status`` show the
same figures and the supervisor's loop does no extra work per scrape.

Topology: ``metrics: {port: 9464, host: 127.0.0.1}``; no ``metrics`` section: no endpoint;
``port: 0``: a free port chosen by the system, written to ``status.json`` (``metrics_url``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import SpecError
from .status import RunStatus

log = logging.getLogger(__name__)

_STAGE = ["stage", "replica", "actor"]
_SHARD = ["shard"]
_Family = CounterMetricFamily | GaugeMetricFamily


def _families(status: RunStatus) -> Iterator[Metric]:
    def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(f"aaflow_{name}", doc, labels=labels)

    def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"aaflow_{name}", doc, labels=labels)

    run = [
        (counter("documents", "Documents read by the sources"), status.documents),
        (counter("chunks", "Chunks produced by the transform stage"), status.chunks),
        (counter("vectors", "Chunk vectors applied by the shards"), status.vectors),
        (counter("dead_letters", "Documents sent to a dead-letter file"), status.dead_letters),
        (counter("restarts", "Graph restarts after a crash"), status.restarts),
    ]
    for total, value in run:
        total.add_metric([], value)
        yield total

    per_stage: list[tuple[_Family, Callable[..., float]]] = [
        (counter("stage_rows_in", "Rows into the stage", _STAGE), lambda s: s.rows_in),
        (counter("stage_rows_out", "Rows out of the stage", _STAGE), lambda s: s.rows_out),
        (gauge("stage_rows_per_second", "Rows out per second", _STAGE), lambda s: s.rows_out_per_s),
        (counter("stage_busy_seconds", "Time inside the operator", _STAGE), lambda s: s.busy_s),
        (
            counter("stage_backpressured_seconds", "Time waiting for credit", _STAGE),
            lambda s: s.backpressured_s,
        ),
        (gauge("stage_busy_ratio", "Share of time busy", _STAGE), lambda s: s.busy_pct / 100),
        (
            gauge("stage_backpressured_ratio", "Share of time blocked", _STAGE),
            lambda s: s.backpressured_pct / 100,
        ),
        (
            gauge("stage_in_flight_batches", "Batches sent, not credited", _STAGE),
            lambda s: s.in_flight,
        ),
        (gauge("stage_credits", "Credits held on outgoing links", _STAGE), lambda s: s.credits),
        (
            counter("stage_rejected", "Malformed input messages dropped", _STAGE),
            lambda s: s.rejected,
        ),
    ]
    for family, value_of in per_stage:
        for s in status.stages:
            family.add_metric([s.stage, str(s.replica), s.actor], value_of(s))
        yield family

    per_shard: list[tuple[_Family, Callable[..., float]]] = [
        (gauge("shard_vectors", "Vectors in the shard", _SHARD), lambda s: s.vectors),
        (gauge("shard_bytes", "Index and metadata bytes in memory", _SHARD), lambda s: s.bytes),
        (
            gauge("shard_wal_bytes", "Log bytes since the last snapshot", _SHARD),
            lambda s: s.wal_bytes,
        ),
        (counter("shard_upserted", "Chunk rows applied", _SHARD), lambda s: s.upserted),
        (gauge("shard_lsn", "Last log sequence number applied", _SHARD), lambda s: s.lsn),
        (
            gauge("shard_durable_lsn", "Last log sequence number synced", _SHARD),
            lambda s: s.durable_lsn,
        ),
        (
            gauge("shard_memory_entries", "Memory entries the rank owns", _SHARD),
            lambda s: s.memory_entries,
        ),
        (
            counter("shard_memory_exchanges", "Memory exchanges the rank took part in", _SHARD),
            lambda s: s.memory_exchanges,
        ),
        (
            counter("shard_memory_compactions", "Memory entries merged on write", _SHARD),
            lambda s: s.memory_compactions,
        ),
        (
            counter("shard_memory_evictions", "Memory entries evicted by a bound", _SHARD),
            lambda s: s.memory_evictions,
        ),
    ]
    for family, value_of in per_shard:
        for shard in status.shards:
            family.add_metric([str(shard.shard)], value_of(shard))
        yield family

    if status.query is not None:
        q = status.query
        queries = counter("queries", "Queries answered by the gateway")
        queries.add_metric([], q.queries)
        rate = gauge("queries_per_second", "Queries answered per second")
        rate.add_metric([], q.queries_per_s)
        latency = gauge("query_latency_seconds", "Gateway query latency", ["quantile"])
        latency.add_metric(["0.5"], q.p50_ms / 1000)
        latency.add_metric(["0.99"], q.p99_ms / 1000)
        yield from (queries, rate, latency)


class _StatusCollector(Collector):
    def __init__(self, latest: Callable[[], RunStatus | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        status = self._latest()  # one immutable snapshot per scrape
        if status is not None:
            yield from _families(status)


class MetricsServer:
    """The HTTP endpoint; ``close`` is idempotent."""

    def __init__(self, latest: Callable[[], RunStatus | None], host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StatusCollector(latest))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:  # a busy port or a host that is not ours: nothing starts
            raise SpecError(f"$.metrics: cannot serve on {host}:{port}: {exc.strerror}") from exc
        self.host = host
        self.port = int(self._server.server_port)
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)
