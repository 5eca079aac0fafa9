"""The benchmarks (docs/benchmarks.md). Run each from the repository root as a module,
``python -m bench.<name> [--quick] [--json]``; what they share is in ``bench.kit``.

Nothing here is imported by the package or the tests. What the benchmarks share with the tests
(hostile-message generators, the kill -9 trial, the shard snapshot reader) lives in
``tests/support/`` and is imported from there.
"""
