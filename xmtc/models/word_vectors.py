"""Word vectors from the training corpus itself: a truncated SVD of its PPMI co-occurrence matrix.

Levy, Goldberg & Dagan (TACL 2015) show that SVD of the positive pointwise mutual information
matrix, with the context distribution smoothed to the power 0.75 and the singular values split
evenly between words and contexts (`U * sqrt(S)`), is competitive with word2vec. For a model that
starts from random vectors on a corpus of a few thousand documents (Reuters-21578: 7,723), these
vectors give the first layer which words behave alike before the labels say anything. Nothing is
downloaded: the vectors depend on the training token ids only, and are cached beside the corpus.

`model.embed_init = "ppmi_svd"` uses them (`xmtc.trainer`); `model.embed_init_std` sets their
standard deviation, as it does for random vectors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from xmtc.data.cache import COMPLETE_MARKER, build_once, cache_key

PAIR_CHUNK = 4_000_000
"""Co-occurrence pairs counted per np.unique call: bounds the temporary arrays."""
RESERVED = 2
"""Token ids below this (padding 0, unknown 1) neither have nor give context."""


def cooccurrence(docs: Iterable[Sequence[int]], vocab_size: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric counts of token pairs at distance 1..window within a document -> (rows, cols, counts)."""
    pending: list[np.ndarray] = []
    pending_n = 0
    totals_keys: list[np.ndarray] = []
    totals_counts: list[np.ndarray] = []

    def flush() -> None:
        nonlocal pending, pending_n
        if pending:
            k, c = np.unique(np.concatenate(pending), return_counts=True)
            totals_keys.append(k)
            totals_counts.append(c)
        pending, pending_n = [], 0

    for doc in docs:
        a = np.asarray(doc, dtype=np.int64)
        for d in range(1, min(window, len(a) - 1) + 1):
            left, right = a[:-d], a[d:]
            ok = (left >= RESERVED) & (right >= RESERVED)
            left, right = left[ok], right[ok]
            pending += [left * vocab_size + right, right * vocab_size + left]
            pending_n += 2 * left.size
        if pending_n >= PAIR_CHUNK:
            flush()
    flush()
    if not totals_keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    k, inverse = np.unique(np.concatenate(totals_keys), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(totals_counts)).astype(np.int64)
    return k // vocab_size, k % vocab_size, counts


def ppmi_svd_vectors(docs: Iterable[Sequence[int]], vocab_size: int, dim: int, window: int = 5,
                     context_power: float = 0.75, seed: int = 0) -> np.ndarray:
    """float32 [vocab_size, dim]: U_d * sqrt(S_d) of the PPMI matrix, rows of padding/unknown/unseen words 0.

    Columns are ordered by singular value; the SVD is randomized (`torch.svd_lowrank`) with a
    seeded generator, so the same corpus gives the same vectors in every process.
    """
    rows, cols, counts = cooccurrence(docs, vocab_size, window)
    out = np.zeros((vocab_size, dim), dtype=np.float32)
    if counts.size == 0:
        return out
    total = float(counts.sum())
    word = np.bincount(rows, weights=counts, minlength=vocab_size)
    context = np.bincount(cols, weights=counts, minlength=vocab_size) ** context_power
    context /= context.sum()
    pmi = np.log(counts / total) - np.log(word[rows] / total) - np.log(context[cols])
    keep = pmi > 0
    matrix = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows[keep], cols[keep]])), torch.from_numpy(pmi[keep]), (vocab_size, vocab_size), check_invariants=True
    ).coalesce()
    rank = min(dim, vocab_size - RESERVED)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(matrix, q=min(rank + 10, vocab_size), niter=4)
    finally:
        torch.random.set_rng_state(generator_state)
    out[:, :rank] = (u[:, :rank] * s[:rank].sqrt()).numpy()
    # Signs of singular vectors are arbitrary: fix each column's so its largest entry is positive.
    flip = np.sign(out[np.abs(out).argmax(0), np.arange(dim)])
    out *= np.where(flip == 0, 1.0, flip)[None, :].astype(np.float32)
    out[:RESERVED] = 0.0
    return out


def scaled(vectors: np.ndarray, std: float) -> np.ndarray:
    """`vectors` scaled so that the rows of seen words have standard deviation `std`."""
    seen = vectors[np.abs(vectors).sum(1) > 0]
    spread = float(seen.std()) if seen.size else 0.0
    return vectors * (std / spread) if spread > 0 else vectors


WINDOW = 5
"""Tokens on each side that count as context (Levy et al.'s and word2vec's usual 5)."""


def cached_ppmi_svd_vectors(corpus, dim: int, cache_dir: str | Path, window: int = WINDOW,
                            whole_docs: Callable[[], Iterable[Sequence[int]]] | None = None) -> np.ndarray:
    """`ppmi_svd_vectors` of `corpus.train`, built once per (corpus cache, training rows, texts, dim, window).

    `whole_docs` gives the training documents' untruncated token ids (`xmtc.data.whole_train_token_ids`);
    without it the vectors count the truncated documents the corpus keeps.
    """
    inputs = {"kind": "ppmi_svd", "corpus": str(Path(corpus.cache_path).name), "train_docs": len(corpus.train),
              "train_fingerprint": getattr(corpus.train, "_fingerprint", ""), "dim": dim, "window": window,
              "texts": "whole" if whole_docs is not None else "truncated"}

    def build(tmp: Path) -> None:
        docs = whole_docs() if whole_docs is not None else corpus.train["input_ids"]
        vectors = ppmi_svd_vectors(docs, corpus.vocab_size, dim, window)
        np.save(tmp / "vectors.npy", vectors)  # tmp becomes visible only by build_once's rename
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"shape": list(vectors.shape)}))

    path, _ = build_once(cache_dir, cache_key(inputs), inputs, build)
    return np.load(path / "vectors.npy")
