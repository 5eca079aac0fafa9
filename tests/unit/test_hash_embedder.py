"""The W1 hash embedder against a plain per-token reference."""

from __future__ import annotations

import hashlib
import math
import random
import re

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.embedders.hash_embedder import HashEmbedder


def reference_embed(text: str, dim: int = 384) -> list[float]:
    """W1's rule (docs/benchmarks.md), written as plainly as possible."""
    vec = [0.0] * dim
    for token in re.findall(r"[a-z0-9]+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if h >> 63 == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcxyz019 ABCXYZ.,;-_\n\t\u00e9\u00df\u0130\u212a\u4e2d\U0001f600"
    words = ["the", "a", "rag", "x9", "Kelvin", "STRASSE", "\u00e9t\u00e9", "42", ""]
    texts = []
    for _ in range(n):
        if rng.random() < 0.5:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))))
        else:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))))
    return texts


@pytest.mark.parametrize("seed", range(5))
def test_embeddings_match_the_reference_on_random_texts(seed: int) -> None:
    texts = _random_texts(60, seed)
    got = HashEmbedder().embed(texts)
    want = np.array([reference_embed(t) for t in texts], dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_texts_without_tokens_embed_to_zero_vectors() -> None:
    got = HashEmbedder().embed(["", "   ", "...!?", "\u00e9\u4e2d\U0001f600", "_-_"])
    assert not got.any()


def test_non_ascii_lowercasing_matches_str_lower() -> None:
    # KELVIN SIGN lower-cases to ASCII "k"; the regex on the lowered text sees it as a token.
    texts = ["\u212aelvin", "\u0130stanbul", "na\u00efve caf\u00e9", "\ud800lone surrogate"]
    got = HashEmbedder().embed(texts)
    want = np.array([reference_embed(t) for t in texts])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_texts_holding_the_block_separator_byte_still_match_the_reference() -> None:
    # A block's texts are joined around "\x01"; a text holding that byte takes the
    # text-by-text path, where \x01 separates tokens like any other punctuation.
    texts = ["ab\x01cd", "\x01", "plain text", "", "x \x01 y \x01"]
    e = HashEmbedder()
    want = np.array([reference_embed(t) for t in texts])
    np.testing.assert_allclose(e.embed(texts), want, rtol=0, atol=1e-6)
    clean = ["plain text", "", "alpha beta beta"]  # and the joined path after it agrees
    np.testing.assert_allclose(e.embed(clean), [reference_embed(t) for t in clean], atol=1e-6)


def test_the_cache_never_holds_more_than_its_size() -> None:
    e = HashEmbedder(cache_size=10)
    e.embed([" ".join(f"w{i}" for i in range(25)), "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"])
    assert len(e._codes) <= 10 + 1  # the separator entry rides along


def test_a_batch_with_a_single_token_matches_the_reference() -> None:
    got = HashEmbedder().embed(["", "solo!", "  "])
    np.testing.assert_allclose(got[1], reference_embed("solo"), rtol=0, atol=1e-6)
    assert not got[0].any() and not got[2].any()


def test_case_and_punctuation_do_not_change_the_vector() -> None:
    e = HashEmbedder()
    a, b = e.embed(["Hello, World! 42", "hello world 42"])
    np.testing.assert_array_equal(a, b)


def test_embeddings_are_unit_norm_float32_c_contiguous() -> None:
    texts = [*_random_texts(50, 7), "alpha beta"]
    got = HashEmbedder(dim=64).embed(texts)
    assert got.dtype == np.float32
    assert got.shape == (len(texts), 64)
    assert got.flags["C_CONTIGUOUS"]
    norms = np.linalg.norm(got, axis=1)
    has_tokens = np.array([bool(re.search("[a-z0-9]", t.lower())) for t in texts])
    np.testing.assert_allclose(norms[has_tokens], 1.0, atol=1e-6)


def test_an_empty_batch_gives_an_empty_matrix() -> None:
    got = HashEmbedder().embed([])
    assert got.shape == (0, 384)
    assert got.dtype == np.float32


def test_results_do_not_depend_on_batching_or_cache_state() -> None:
    texts = _random_texts(40, 3)
    whole = HashEmbedder().embed(texts)
    tiny_cache = HashEmbedder(cache_size=5)  # forces the cache to be cleared repeatedly
    parts = np.concatenate([tiny_cache.embed(texts[i : i + 7]) for i in range(0, 40, 7)])
    np.testing.assert_array_equal(whole, parts)


def test_batches_larger_than_one_block_match_small_batches() -> None:
    texts = _random_texts(2_100, 11)
    e = HashEmbedder(dim=16)
    np.testing.assert_array_equal(e.embed(texts), np.concatenate([e.embed([t]) for t in texts]))


def test_embed_to_arrow_builds_a_fixed_size_float32_list_column() -> None:
    texts = ["one two", "", "three"]
    e = HashEmbedder(dim=8)
    col = e.embed_to_arrow(texts)
    assert col.type == pa.list_(pa.float32(), 8)
    assert len(col) == 3
    assert col.null_count == 0
    np.testing.assert_array_equal(col.values.to_numpy().reshape(3, 8), e.embed(texts))


@pytest.mark.parametrize(
    ("kwargs", "bad"), [({"dim": 0}, "dim=0"), ({"cache_size": 0}, "cache_size=0")]
)
def test_bad_embedder_arguments_raise_a_value_error(kwargs: dict[str, int], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        HashEmbedder(**kwargs)
