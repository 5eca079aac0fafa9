"""Observability: run status snapshots, the Prometheus endpoint, stage timing traces, events."""
