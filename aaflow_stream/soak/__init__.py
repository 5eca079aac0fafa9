"""``aaflow-stream soak``: drive a running topology for minutes and prove that nothing was lost.

One module per job:

- ``options``: the command line (rates, ratios, the fault plan) as one frozen value;
- ``corpus``: documents and queries generated deterministically from the seed;
- ``ledger``: what the engine acknowledged (document -> version, or deleted);
- ``audit``: the stored state (read after ``down``, or through the query API) against the
  ledger: lost, duplicated, stale, resurrected chunks;
- ``workload``: the feeds (ingest endpoint, watched directory) and the query clients;
- ``faults``: ``kill -9`` of an actor, a shard rank or the supervisor, and the recovery;
- ``lifecycle``: the topology's working copy, ``up --detach`` and ``down``;
- ``probe``: every process's RSS and open descriptors, the data directory's size;
- ``record``: what happened, timed (sent, acknowledged, query latencies, errors);
- ``report``: the per-minute table, JSON lines, the chart and the verdict;
- ``driver``: all of it in order, and the exit code (0 pass, 4 fail).

``docs/soak.md`` describes what is checked and how.
"""
