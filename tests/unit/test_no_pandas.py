"""No actor or shard rank imports pandas: pyarrow imports it lazily for some calls (for one,
``Schema.empty_table``) when it is installed, at ~0.3 s of CPU a process. Checked whether or
not pandas is installed: the attempt is what counts."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from aaflow_stream.schemas import empty_table

# Records any attempt to import pandas, then imports what the actors and ranks import.
PROBE = """
import sys

class Watch:
    tried = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            Watch.tried.append(name)
        return None

sys.meta_path.insert(0, Watch())
import aaflow_stream.runtime.actor
import aaflow_stream.operators.feed, aaflow_stream.operators.load
import aaflow_stream.operators.transform, aaflow_stream.operators.embed
import aaflow_stream.operators.upsert, aaflow_stream.operators.shard
import aaflow_stream.query.gateway, aaflow_stream.shard.hybrid, aaflow_stream.shard.rows
print(sorted(set(Watch.tried)))
"""


def test_actors_and_ranks_import_no_pandas() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_an_empty_table_has_the_schema_and_no_rows() -> None:
    schema = pa.schema([("chunk_id", pa.int64()), ("text", pa.string())])
    table = empty_table(schema)
    assert table.schema == schema and table.num_rows == 0
