"""Worked examples of custom operators (``module:callable`` in a topology's custom stage)."""
