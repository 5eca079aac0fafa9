"""Continuous feeds: the ingest endpoint's wire protocol and server, the watched files' state."""
