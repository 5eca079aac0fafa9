"""A custom transform operator: mask e-mail addresses in chunk text before it is embedded.

Use it as a custom stage between ``transform`` and ``embed`` (see topology/redact.yaml):

    - {operator: custom, name: redact, ref: "operators.redact:RedactEmails",
       params: {mask: "[email]"}}

The contract (``aaflow_stream.operators.base``): the factory is called once per actor with the
operator context and the stage's params; ``process`` gets each arriving batch and returns the
batches to send on; ``flush`` runs once at end of stream. This operator keeps no state, so
``flush`` has nothing to return. It preserves the schema and only rewrites the ``text`` column.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from aaflow_stream.operators.base import OperatorContext

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"


class RedactEmails:
    def __init__(self, context: OperatorContext, *, mask: str = "[email]") -> None:
        self._mask = mask
        self.redacted = 0

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        index = batch.schema.get_field_index("text")
        text = batch.column(index)
        self.redacted += int(pc.sum(pc.count_substring_regex(text, EMAIL)).as_py() or 0)
        masked = pc.replace_substring_regex(text, EMAIL, self._mask)
        return (batch.set_column(index, batch.schema.field(index), masked),)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()

    def metrics(self) -> dict[str, float]:
        return {"redacted": self.redacted}
