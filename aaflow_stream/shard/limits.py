"""What one collective round may carry: the shard job's bounds.

The query gateway admits requests within them (``query.protocol`` re-exports them under the
names a client sees, ``query.admission`` checks them), and a member checks them again on
every wake-up (``shard.wakeup``), so a bound is written here once.
"""

from __future__ import annotations

from typing import Final

MAX_K: Final = 1000  # hits per query
MAX_ROUND_QUERIES: Final = 4096  # queries one search round carries
MAX_DELETE_IDS: Final = 100_000  # doc ids one delete round removes
# A round's encoded parameters (a filter, a delete's doc ids) at most: the gateway's request
# limit, so whatever it admits fits one wake-up.
MAX_ROUND_BYTES: Final = 4 * 1024 * 1024
MAX_SESSION_CHARS: Final = 256  # a memory session's name
MAX_REMEMBER_ENTRIES: Final = 4096  # memory entries one exchange carries
MAX_FORGET_SESSIONS: Final = 1000  # sessions one forget round removes
