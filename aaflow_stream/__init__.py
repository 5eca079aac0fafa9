"""aaflow-stream."""
