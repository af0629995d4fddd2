"""Synthetic XMTC corpora whose text depends on their labels, so a model can learn them.

Labels have power-law (Zipf) frequencies. Each label owns `words_per_label` words drawn from a
signal pool of pseudo-words; with more labels than the pool can give distinct words (Amazon-670K:
670,091 labels x 6 words against a 20K pool) a label is identified by its combination of words.
A document of about `doc_len` words mixes its labels' words (`signal_fraction` of it) with
background words shared by all labels, in random order. The corpus is a pure function of the
`synthetic` config section and is generated with vectorized numpy (670K labels x 20K docs: seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmtc.config import ConfigError, SyntheticConfig
from xmtc.config_checks import check_synthetic_settings
from xmtc.data.readers import RawSplit

SIGNAL_POOL_MAX = 20_000
"""Most pseudo-words labels draw their words from; with 5,000 background words this fits a 30K vocabulary."""
CONSONANTS = "bcdfghjklmnprstvz"
VOWELS = "aeiou"


@dataclass
class SyntheticData:
    splits: dict[str, RawSplit]
    label_names: list[str]
    """Every label of the label space, including those no document happens to carry."""
    label_words: np.ndarray
    """[num_labels, words_per_label] word ids each label owns (a generator secret, for tests)."""
    words: list[str]
    """Word id -> pseudo-word."""


def check_synthetic(cfg: SyntheticConfig) -> None:
    """The rules of xmtc.config_checks, which applies them when the config is read too."""
    check_synthetic_settings(cfg)


def pseudo_words(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct lower-case pseudo-words of two or more consonant-vowel syllables, in random order."""
    syllables = np.array([c + v for c in CONSONANTS for v in VOWELS])
    base = len(syllables)
    codes = rng.permutation(count) + base  # + base: every word has at least two syllables
    parts = []
    while codes.any():
        parts.append(np.where(codes > 0, syllables[codes % base], ""))
        codes = codes // base
    out = parts[0].astype(object)
    for p in parts[1:]:
        out = p.astype(object) + out
    return out.tolist()


def zipf_cdf(num_labels: int, exponent: float) -> np.ndarray:
    p = np.arange(1, num_labels + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


def draw_label_sets(rng: np.random.Generator, cdf: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document `sizes[d]` distinct labels drawn from `cdf` -> (offsets [n+1], label ids), doc-major."""
    n, num_labels = len(sizes), len(cdf)
    drawable = int(np.count_nonzero(np.diff(cdf, prepend=0.0) > 0))
    if len(sizes) and sizes.max() > drawable:
        raise ConfigError(
            f"the synthetic label frequencies leave only {drawable} label(s) a probability above 0 in floating point, "
            f"fewer than a document's {sizes.max()} labels; lower config key 'synthetic.zipf_exponent' or 'synthetic.labels_per_doc'"
        )
    doc = np.repeat(np.arange(n, dtype=np.int64), sizes)
    keys = np.unique(doc * num_labels + np.searchsorted(cdf, rng.random(len(doc)), side="right"))
    # Repeated draws of a document's frequent labels collapse; redraw until every document is full.
    while True:
        deficit = sizes - np.bincount(keys // num_labels, minlength=n)
        if not deficit.any():
            break
        doc = np.repeat(np.arange(n, dtype=np.int64), deficit)
        # Only `deficit` new draws per document, so no document can overshoot its size.
        keys = np.unique(np.concatenate([keys, doc * num_labels + np.searchsorted(cdf, rng.random(len(doc)), side="right")]))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return offsets, keys % num_labels


def _shuffle_keys(rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
    """Sort keys that keep sorted groups in order and shuffle within each: group in the high bits, noise below."""
    return (group.astype(np.int64) << 32) | rng.integers(0, 1 << 32, size=len(group), dtype=np.int64)


def generate_synthetic(cfg: SyntheticConfig) -> SyntheticData:
    check_synthetic(cfg)
    rng = np.random.default_rng(cfg.seed)
    num_labels, n = cfg.num_labels, cfg.num_train + cfg.num_test
    pool = min(num_labels * cfg.words_per_label, SIGNAL_POOL_MAX)
    words = pseudo_words(pool + cfg.noise_words, rng)
    if num_labels * cfg.words_per_label <= pool:
        label_words = rng.permutation(pool).reshape(num_labels, cfg.words_per_label)  # every label its own words
    else:
        label_words = rng.integers(0, pool, size=(num_labels, cfg.words_per_label))

    sizes = np.minimum(1 + rng.poisson(cfg.labels_per_doc - 1.0, size=n), num_labels)
    offsets, labels = draw_label_sets(rng, zipf_cdf(num_labels, cfg.zipf_exponent), sizes)
    # Shuffle each document's labels so that file order is not frequency order (SGM sorts them itself).
    label_doc = np.repeat(np.arange(n), sizes)
    labels = labels[np.argsort(_shuffle_keys(rng, label_doc))]

    lengths = rng.integers(max(1, cfg.doc_len // 2), cfg.doc_len + cfg.doc_len // 2 + 1, size=n)
    n_signal = np.rint(lengths * cfg.signal_fraction).astype(np.int64)
    sig_doc = np.repeat(np.arange(n), n_signal)
    owner = labels[offsets[sig_doc] + (rng.random(len(sig_doc)) * sizes[sig_doc]).astype(np.int64)]
    signal = label_words[owner, rng.integers(0, cfg.words_per_label, size=len(sig_doc))]
    noise_doc = np.repeat(np.arange(n), lengths - n_signal)
    noise = pool + rng.integers(0, max(cfg.noise_words, 1), size=len(noise_doc))
    doc = np.concatenate([sig_doc, noise_doc])
    token = np.concatenate([signal, noise])[np.argsort(_shuffle_keys(rng, doc))]

    # One join for the whole corpus: a space between words, a newline after each document's last word.
    seps = np.full(len(token), " ", dtype=object)
    seps[np.cumsum(lengths) - 1] = "\n"
    interleaved = np.empty(2 * len(token), dtype=object)
    interleaved[0::2] = np.asarray(words, dtype=object)[token]
    interleaved[1::2] = seps
    texts = "".join(interleaved.tolist()).split("\n")[:n]

    width = len(str(num_labels - 1))
    names = [f"L{i:0{width}d}" for i in range(num_labels)]
    flat_names = np.asarray(names, dtype=object)[labels].tolist()
    doc_labels = [flat_names[offsets[d] : offsets[d + 1]] for d in range(n)]
    splits = {}
    for split, lo, hi in (("train", 0, cfg.num_train), ("test", cfg.num_train, n)):
        raw = RawSplit(split, lambda i, split=split: f"synthetic {split} document {i + 1}")
        raw.texts, raw.labels, raw.rows = texts[lo:hi], doc_labels[lo:hi], list(range(hi - lo))
        splits[split] = raw
    return SyntheticData(splits, names, label_words, words)
