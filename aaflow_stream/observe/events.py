"""Structured event lines: ``event=NAME key=value ...``, one per notable event, greppable.

Events (actor name and replica on every actor event):

``actor_start``   the supervisor started the actor's process (``pid`` of the launch)
``actor_ready``   the actor reported Ready (``pid`` of the actor itself)
``actor_stop``    the actor exited cleanly (``code=0``)
``actor_crash``   the actor exited with a non-zero code (``code``, ``reason``)
``actor_kill``    the supervisor SIGKILLed an actor that did not stop in time
``graph_restart`` the supervisor restarts the graph (``attempt``, ``backoff_s``, ``reason``)
``actor_restart`` the actor was started again by a graph restart (``attempt``)
``dead_letter``   a source dead-lettered a document (``source``, ``doc_id``, ``reason``); the
                  supervisor also logs the count as it grows (``count``, ``total``)
``slow_consumer`` a sender waited on credit longer than ``SLOW_CONSUMER_S`` (``waited_s``)

Values with spaces, quotes or ``=`` are JSON-quoted so that a line splits unambiguously.
"""

from __future__ import annotations

import json
import logging
from typing import Final

# A send that waited this long for credit is reported as a slow consumer.
SLOW_CONSUMER_S: Final = 1.0

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/+@,")


def _value(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def format_event(name: str, **fields: object) -> str:
    return " ".join([f"event={name}", *(f"{k}={_value(v)}" for k, v in fields.items())])


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log one event line at ``level`` (formatted only when that level is enabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_event(name, **fields))


def parse_event(line: str) -> dict[str, str]:
    """The fields of the event in a log line (empty when it carries none); for tests and tools."""
    start = line.find("event=")
    if start < 0:
        return {}
    fields: dict[str, str] = {}
    rest = line[start:]
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            decoder = json.JSONDecoder()
            value, end = decoder.raw_decode(rest)
            fields[key.strip()] = str(value)
            rest = rest[end:].lstrip()
        else:
            value, _, rest = rest.partition(" ")
            fields[key.strip()] = value
    return fields
