"""End-to-end delivery: what sources have emitted, what shards acknowledged, and checkpoints."""
