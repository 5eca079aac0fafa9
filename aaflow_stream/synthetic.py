"""W1 corpus: deterministic synthetic JSONL documents, as docs/benchmarks.md defines it.

Words are drawn Zipf(s=1.1) by rank over a 50,000-word vocabulary of lowercase words
(length 2-12) generated from the seed; documents are 1,500-2,500 characters. Each file
has its own generator seeded from (seed, file index), so a smaller preset's files are
the first files of a larger one and any file can be regenerated alone.

    python -m aaflow_stream.synthetic --preset small --out /tmp/w1-small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .text.chunking import chunk_id, chunk_windows

PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (4, 16),
    "small": (64, 64),
    "large": (256, 64),
    "xlarge": (1024, 64),
}
VOCAB_SIZE = 50_000
ZIPF_S = 1.1
WORD_LEN = (2, 12)
DOC_LEN = (1_500, 2_500)
CHUNK_SIZE = 512
CHUNK_OVERLAP = 64
TS_BASE = 1_700_000_000
MANIFEST = "manifest.json"
# Bump when the output for a given (preset, seed) changes, so stale corpora are rebuilt.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class CorpusInfo:
    """What `generate` wrote: counts and where."""

    out_dir: str
    preset: str
    seed: int
    files: int
    docs: int
    chunks: int
    bytes: int
    version: int = GENERATOR_VERSION


def file_name(file_idx: int) -> str:
    return f"file-{file_idx:04d}.jsonl"


def doc_id(file_idx: int, doc_idx: int) -> str:
    return f"f{file_idx:04d}-d{doc_idx:04d}"


def make_vocabulary(seed: int) -> list[str]:
    """50,000 distinct lowercase words of length 2-12, in rank order."""
    rng = np.random.default_rng([seed, 0x70CAB])
    words: dict[str, None] = {}  # insertion-ordered set: keeps the rank order deterministic
    while len(words) < VOCAB_SIZE:
        n = VOCAB_SIZE - len(words) + 1_000
        lengths = rng.integers(WORD_LEN[0], WORD_LEN[1] + 1, size=n)
        letters = rng.integers(ord("a"), ord("z") + 1, size=(n, WORD_LEN[1]), dtype=np.uint8)
        for row, length in zip(letters, lengths.tolist(), strict=True):
            words.setdefault(row[:length].tobytes().decode("ascii"))
            if len(words) == VOCAB_SIZE:
                break
    return list(words)


def zipf_cdf(n: int = VOCAB_SIZE, s: float = ZIPF_S) -> npt.NDArray[np.float64]:
    """CDF of Zipf(s) truncated to ranks 1..n, for inverse-transform sampling."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf: npt.NDArray[np.float64] = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def _file_docs(
    file_idx: int,
    n_docs: int,
    seed: int,
    vocab: list[str],
    cdf: npt.NDArray[np.float64],
    word_cost: npt.NDArray[np.int64],
) -> list[str]:
    rng = np.random.default_rng([seed, file_idx])
    targets = rng.integers(DOC_LEN[0], DOC_LEN[1] + 1, size=n_docs).tolist()
    # One word stream per file; each doc takes words until it reaches its target length.
    refill = sum(targets) // 4 + 1_024  # ~2x the words a file needs: usually one draw
    ranks = np.empty(0, dtype=np.int64)
    ends = np.empty(0, dtype=np.int64)
    pos = 0
    texts: list[str] = []
    for target in targets:
        base = int(ends[pos - 1]) if pos else 0
        while not len(ends) or ends[-1] <= base + target:
            more = np.searchsorted(cdf, rng.random(refill), side="right")
            more = np.minimum(more, len(vocab) - 1)
            ranks = np.concatenate([ranks, more])
            ends = np.cumsum(word_cost[ranks])
        # +1: word_cost counts a space after the last word, which the join does not add.
        stop = int(np.searchsorted(ends, base + target + 1, side="left")) + 1
        text = " ".join(map(vocab.__getitem__, ranks[pos:stop].tolist()))
        texts.append(text[:target])  # exactly `target` chars: the doc length is uniform
        pos = stop
    return texts


def _chunk_count(length: int) -> int:
    if length <= CHUNK_SIZE:
        return 1 if length else 0
    step = CHUNK_SIZE - CHUNK_OVERLAP
    return -(-(length - CHUNK_SIZE) // step) + 1


def generate(out_dir: Path, preset: str, seed: int = 0, *, reuse: bool = True) -> CorpusInfo:
    """Write the preset's JSONL files into `out_dir` and return what was written.

    With `reuse`, a directory whose manifest already records the same preset, seed and
    generator version is left as it is.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if reuse and manifest.exists():
        info = CorpusInfo(**json.loads(manifest.read_text()))
        if (info.preset, info.seed, info.version) == (preset, seed, GENERATOR_VERSION):
            return info
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("file-*.jsonl"):
        stale.unlink()
    n_files, n_docs = PRESETS[preset]
    vocab = make_vocabulary(seed)
    cdf = zipf_cdf(len(vocab))
    word_cost = np.fromiter((len(w) + 1 for w in vocab), dtype=np.int64, count=len(vocab))
    chunks = 0
    written = 0
    for f in range(n_files):
        name = file_name(f)
        lines = []
        for d, text in enumerate(_file_docs(f, n_docs, seed, vocab, cdf, word_cost)):
            chunks += _chunk_count(len(text))
            record = {
                "doc_id": doc_id(f, d),
                "text": text,
                "source": name,
                "ts": TS_BASE + f * 3_600 + d,
            }
            lines.append(json.dumps(record))
        data = ("\n".join(lines) + "\n").encode()
        (out_dir / name).write_bytes(data)
        written += len(data)
    info = CorpusInfo(str(out_dir), preset, seed, n_files, n_files * n_docs, chunks, written)
    manifest.write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def corpus_files(out_dir: Path) -> list[Path]:
    """The corpus's JSONL files in file order."""
    return sorted(Path(out_dir).glob("file-*.jsonl"))


def expected_chunk_ids(out_dir: Path) -> set[int]:
    """Every chunk id the W1 transform must produce from the corpus in `out_dir`."""
    ids: set[int] = set()
    for path in corpus_files(out_dir):
        with path.open("rb") as fh:
            for line in fh:
                doc = json.loads(line)
                n = len(chunk_windows(doc["text"], CHUNK_SIZE, CHUNK_OVERLAP))
                ids.update(chunk_id(doc["doc_id"], i) for i in range(n))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    info = generate(args.out, args.preset, args.seed, reuse=not args.force)
    elapsed = time.perf_counter() - t0
    print(
        f"{info.preset}: {info.files} files, {info.docs} docs, {info.chunks} chunks, "
        f"{info.bytes / 1e6:.1f} MB in {info.out_dir} ({elapsed:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
