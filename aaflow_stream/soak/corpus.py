"""Documents and queries generated deterministically from the seed.

A document is named by its number; its text is a function of (seed, number, version) only, so
the audit can regenerate every acknowledged version without the driver having kept any text.
Lengths vary widely (one to about ten chunks of the default 512 characters) so that updates
both grow and shrink documents: a shorter new version must lose its old tail on every shard.
"""

from __future__ import annotations

import random
from typing import Final

# A fixed vocabulary, the same for every seed: queries then share words with documents.
_VOCABULARY_SEED: Final = "aaflow-soak-vocabulary"
_SYLLABLES: Final = (
    "ka", "lo", "mi", "ra", "te", "zu", "no", "vi", "se", "da", "po", "qu", "fe", "ri", "ta",
    "mo", "ne", "lu", "xi", "bo", "ga", "he", "ju", "wy",
)  # fmt: skip
VOCABULARY_SIZE: Final = 3000
MIN_WORDS, MAX_WORDS = 10, 700


def _vocabulary() -> list[str]:
    rng = random.Random(_VOCABULARY_SEED)
    words: dict[str, None] = {}
    while len(words) < VOCABULARY_SIZE:
        words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


WORDS: Final = _vocabulary()


def doc_id(prefix: str, number: int) -> str:
    return f"{prefix}-{number:07d}"


def source_of(prefix: str, number: int) -> str:
    """A source name of its own per document: a query filtered on it sees only that document's
    chunks, so a read-your-writes check is exact whatever the embedder ranks first."""
    return f"{prefix}/{number}"


def text(seed: int, number: int, version: int) -> str:
    """The text of ``version`` (1, 2, ...) of document ``number``."""
    # A string seed is hashed with SHA-512 by ``random``: stable across runs and platforms.
    rng = random.Random(f"{seed}:{number}:{version}")
    count = rng.randint(MIN_WORDS, MAX_WORDS)
    return " ".join(rng.choices(WORDS, k=count))


def query(rng: random.Random) -> str:
    """A free-text query of a few vocabulary words."""
    return " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
