"""Synthetic corpora: Amazon-670K statistics, determinism, and text that a simple model can learn from."""

from __future__ import annotations

import numpy as np
import pytest

import xmtc.data.synthetic as synthetic
from xmtc.config import ConfigError, SyntheticConfig
from xmtc.data import generate_synthetic, load_corpus

AMAZON_670K = dict(num_labels=670_091, labels_per_doc=5.45)


def test_pure_function_of_the_section():
    cfg = SyntheticConfig(num_labels=100, num_train=50, num_test=10, doc_len=30)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert a.splits["train"].texts == b.splits["train"].texts and a.splits["test"].labels == b.splits["test"].labels
    other = generate_synthetic(SyntheticConfig(num_labels=100, num_train=50, num_test=10, doc_len=30, seed=1))
    assert other.splits["train"].texts != a.splits["train"].texts


def test_amazon_670k_statistics():
    data = generate_synthetic(SyntheticConfig(**AMAZON_670K, num_train=5000, num_test=100, doc_len=40))
    train = data.splits["train"]
    assert len(data.label_names) == 670_091 and len(train.texts) == 5000 and len(data.splits["test"].texts) == 100
    sizes = np.array([len(labels) for labels in train.labels])
    assert abs(sizes.mean() - 5.45) < 0.15 and sizes.min() >= 1  # standard error of the mean is ~0.03
    assert all(len(set(labels)) == len(labels) for labels in train.labels)
    lengths = np.array([len(t.split()) for t in train.texts])
    assert abs(lengths.mean() - 40) < 1 and lengths.min() >= 20 and lengths.max() <= 60
    # Power-law head: log(count) against log(rank) over ranks 2..50 has slope ~ -zipf_exponent (-1).
    index = {name: i for i, name in enumerate(data.label_names)}
    counts = np.bincount([index[n] for labels in train.labels for n in labels], minlength=len(index))
    ranks = np.arange(2, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[ranks - 1]), 1)[0]
    assert -1.15 < slope < -0.85
    assert counts[0] > 1200  # the top label is in ~30% of documents (1/H(670091) = 7% of draws, x 5.45)
    # More labels than pool words: labels are told apart by their combinations of words.
    assert data.label_words.max() < synthetic.SIGNAL_POOL_MAX
    # Distinct hashes of the sorted word sets bound the distinct combinations from below.
    hashes = (np.sort(data.label_words, axis=1).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ** np.arange(1, 7, dtype=np.uint64)).sum(1)
    assert len(np.unique(hashes)) > 0.999 * 670_091


def test_corpus_keeps_the_whole_label_space(make_cfg):
    corpus = load_corpus(make_cfg(), SyntheticConfig(num_labels=20_000, num_train=300, num_test=30, doc_len=10))
    assert corpus.num_labels == 20_000 and len(corpus.label_counts) == 20_000
    assert corpus.stats["test_unseen_labels_dropped"] == 0  # every synthetic label belongs to the label space
    counts = corpus.label_counts
    assert np.all(np.diff(counts) <= 0) and counts[0] > 60 and counts[-1] == 0
    tail = corpus.label_names[int(np.count_nonzero(counts)):]
    assert tail == sorted(tail) and tail[-1] == "L19999"  # zero-count labels in name order
    assert corpus.vocab_size <= 30_000 and corpus.stats["train_unk_tokens"] == 0


def bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    doc = np.repeat(np.arange(len(texts)), [len(t.split()) for t in texts])
    word = np.array([vocab[w] for t in texts for w in t.split()])
    return np.bincount(doc * len(vocab) + word, minlength=len(texts) * len(vocab)).reshape(len(texts), len(vocab)).astype(float)


def precision_at(scores: np.ndarray, names: list[str], truth: list[list[str]], k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([sum(names[j] in set(t) for j in row) / k for row, t in zip(top, truth)]))


def centroid_scores(data, shuffle_train_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A tf-idf centroid per label from training documents; score = test document . centroid."""
    train, test = data.splits["train"], data.splits["test"]
    vocab = {w: i for i, w in enumerate(data.words)}
    index = {n: i for i, n in enumerate(data.label_names)}
    x_train, x_test = bag_of_words(train.texts, vocab), bag_of_words(test.texts, vocab)
    labels = train.labels
    if shuffle_train_labels:  # the control: text no longer matches labels
        labels = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    y = np.zeros((len(labels), len(index)))
    for i, names in enumerate(labels):
        y[i, [index[n] for n in names]] = 1
    idf = np.log(len(x_train) / (1 + (x_train > 0).sum(0)))
    centroids = y.T @ (x_train * idf)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    return (x_test * idf) @ centroids.T, y.sum(0)


def test_text_is_learnable_from_word_combinations(monkeypatch):
    # 300 labels x 6 words drawn from a 600-word pool: words are shared, as in the 670K configuration.
    monkeypatch.setattr(synthetic, "SIGNAL_POOL_MAX", 600)
    data = generate_synthetic(SyntheticConfig(num_labels=300, num_train=3000, num_test=300, noise_words=2000, doc_len=100))
    assert data.label_words.max() < 600
    truth = data.splits["test"].labels
    scores, train_counts = centroid_scores(data)
    most_frequent = np.broadcast_to(train_counts, scores.shape)
    p1, p5 = precision_at(scores, data.label_names, truth, 1), precision_at(scores, data.label_names, truth, 5)
    base1, base5 = precision_at(most_frequent, data.label_names, truth, 1), precision_at(most_frequent, data.label_names, truth, 5)
    assert p1 > 0.9 and p1 > base1 + 0.25  # measured: 0.99 against 0.63
    assert p5 > 0.65 and p5 > 2 * base5  # measured: 0.77 against 0.34
    control, _ = centroid_scores(data, shuffle_train_labels=True)
    assert precision_at(control, data.label_names, truth, 1) < base1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("labels_per_doc", 0.5, "config key 'synthetic.labels_per_doc' is 0.5; it must be between 1 and num_labels"),
        ("signal_fraction", 1.5, "config key 'synthetic.signal_fraction' is 1.5; it must be in [0, 1]"),
        ("num_test", 0, "config key 'synthetic.num_test' is 0; it must be at least 1"),
    ],
)
def test_bad_synthetic_settings(field, value, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        generate_synthetic(SyntheticConfig(**{field: value}))


def test_labels_too_rare_to_draw_stop_instead_of_hanging():
    # zipf 60 over 3 labels: labels 2 and 3 get probability 2^-60 and 3^-60, which round to 0 in the cdf;
    # documents of 3 distinct labels could never be filled.
    cfg = SyntheticConfig(num_labels=3, num_train=10, num_test=2, labels_per_doc=3.0, zipf_exponent=60.0, doc_len=5, noise_words=5)
    with pytest.raises(ConfigError, match="leave only 1 label.* fewer than a document's 3 labels"):
        generate_synthetic(cfg)
    generate_synthetic(SyntheticConfig(num_labels=3, num_train=10, num_test=2, labels_per_doc=3.0, zipf_exponent=2.0, doc_len=5, noise_words=5))
