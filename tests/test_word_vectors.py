"""PPMI-SVD word vectors (`model.embed_init = "ppmi_svd"`): counts, PPMI, SVD, scaling, caching, loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xmtc.config import config_from_dict
from xmtc.models import build_model
from xmtc.models.common import load_word_vectors, word_embedding
from xmtc.models.word_vectors import cached_ppmi_svd_vectors, cooccurrence, ppmi_svd_vectors, scaled


def dense_counts(docs, vocab, window):
    c = np.zeros((vocab, vocab))
    for doc in docs:
        for i, a in enumerate(doc):
            for j in range(i + 1, min(len(doc), i + window + 1)):
                b = doc[j]
                if a >= 2 and b >= 2:
                    c[a, b] += 1
                    c[b, a] += 1
    return c


def dense_ppmi(c, power=0.75):
    total = c.sum()
    word = c.sum(1)
    context = c.sum(0) ** power
    context = context / context.sum()
    out = np.zeros_like(c)
    for i, j in zip(*np.nonzero(c)):
        out[i, j] = max(0.0, math.log(c[i, j] / total) - math.log(word[i] / total) - math.log(context[j]))
    return out


def test_cooccurrence_counts_pairs_within_the_window_and_skips_reserved_ids():
    docs = [[2, 3, 4, 2], [5, 1, 3, 0, 0], [4]]
    rows, cols, counts = cooccurrence(docs, vocab_size=6, window=2)
    got = np.zeros((6, 6))
    got[rows, cols] = counts
    expected = dense_counts(docs, 6, 2)
    np.testing.assert_array_equal(got, expected)
    # By hand: doc 1 gives (2,3) (3,4) (4,2) at distance 1 and (2,4) (3,2) at distance 2.
    assert got[2, 3] == 2 and got[2, 4] == 2 and got[3, 4] == 1 and got[2, 2] == 0
    assert got[5, 3] == 1 and got[:2].sum() == 0 and got[:, :2].sum() == 0  # unknown (1) and padding (0) are no context


def test_vectors_factor_the_ppmi_matrix():
    rng = np.random.default_rng(0)
    vocab = 12
    docs = [rng.integers(2, vocab, size=rng.integers(3, 15)).tolist() for _ in range(60)]
    target = dense_ppmi(dense_counts(docs, vocab, 3))
    # Against a dense SVD of a PPMI matrix computed entry by entry: column d of the vectors is
    # u_d * sqrt(s_d), so its squared norm is s_d and the columns span the top-d left singular space.
    dim = 6
    vectors = ppmi_svd_vectors(docs, vocab, dim, window=3)
    u, s, _ = np.linalg.svd(target)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=0) ** 2, s[:dim], rtol=1e-3)
    proj_ours = np.linalg.qr(vectors)[0]
    proj_ref = u[:, :dim]
    np.testing.assert_allclose(proj_ours @ proj_ours.T, proj_ref @ proj_ref.T, atol=1e-3)
    assert not vectors[:2].any()


def test_vectors_are_deterministic_and_leave_the_global_generator_alone():
    docs = [[2, 3, 4, 5, 6, 2, 3], [4, 5, 6, 7, 2]] * 5
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = ppmi_svd_vectors(docs, 8, 3, window=2)
    after = torch.rand(3)
    b = ppmi_svd_vectors(docs, 8, 3, window=2)
    torch.testing.assert_close(before, after)  # the model's later initialisation draws are unchanged
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 3) and a.dtype == np.float32


def test_words_in_the_same_contexts_get_the_same_vector():
    # 3 and 4 always stand between the same neighbours; 7 never.
    docs = [[2, 3, 5], [2, 4, 5], [6, 3, 2], [6, 4, 2], [7, 6, 6, 5]] * 4
    v = ppmi_svd_vectors(docs, 8, 4, window=1)
    np.testing.assert_allclose(v[3], v[4], atol=1e-5)
    assert np.abs(v[3] - v[7]).max() > 1e-2


def test_scaled_sets_the_spread_of_seen_words():
    v = np.zeros((5, 4), dtype=np.float32)
    v[2:] = np.random.default_rng(1).normal(0, 3.0, (3, 4))
    out = scaled(v, 0.05)
    assert out[2:].std() == pytest.approx(0.05, rel=1e-5) and not out[:2].any()


def test_cached_vectors_are_built_once(tmp_path, monkeypatch):
    from xmtc.data import load_corpus
    import xmtc.models.word_vectors as wv

    cfg = config_from_dict({"data": {"format": "synthetic", "cache_dir": str(tmp_path), "vocab_size": 300, "max_len": 30},
                            "synthetic": {"num_labels": 20, "num_train": 80, "num_test": 10, "doc_len": 30, "noise_words": 200}})
    corpus = load_corpus(cfg.data, cfg.synthetic)
    first = cached_ppmi_svd_vectors(corpus, 8, tmp_path)
    monkeypatch.setattr(wv, "ppmi_svd_vectors", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    again = cached_ppmi_svd_vectors(corpus, 8, tmp_path)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (corpus.vocab_size, 8) and np.abs(first[2:]).sum() > 0


@pytest.mark.parametrize("name", ["xml_cnn", "sgm"])
def test_load_word_vectors_fills_the_word_embedding(name):
    cfg = config_from_dict({"model": {"name": name, "embed_dim": 8}, "sgm": {"hidden_size": 8, "label_embed_dim": 8},
                            "xml_cnn": {"num_filters": 4, "pooling_chunks": 2, "bottleneck": 8}, "data": {"max_len": 20}})
    model = build_model(cfg, num_labels=6, vocab_size=30)
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    load_word_vectors(model, vectors)
    weight = word_embedding(model, 30).weight
    torch.testing.assert_close(weight[1:], torch.from_numpy(vectors[1:]))
    assert not weight[0].any()  # padding
    with pytest.raises(ValueError, match="expected one word embedding of 31 rows"):
        load_word_vectors(model, np.zeros((31, 8), dtype=np.float32))


def test_config_rejects_unknown_initialisation():
    from xmtc.config import ConfigError

    with pytest.raises(ConfigError, match="config key 'model.embed_init' is \"glove\"; allowed: \"normal\", \"ppmi_svd\""):
        config_from_dict({"model": {"embed_init": "glove"}})


def test_whole_texts_give_the_untruncated_training_documents_and_their_own_vectors(tmp_path):
    from xmtc.data import load_corpus, whole_train_token_ids
    from xmtc.data.loader import validation_indices
    from xmtc.data.readers import read_xmtc_text

    words = [f"w{i}" for i in range(12)]
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 25))) for _ in range(40)]
    for split, n in (("train", 30), ("test", 10)):
        (tmp_path / f"{split}_texts.txt").write_text("\n".join(texts[:n] if split == "train" else texts[30:]) + "\n")
        (tmp_path / f"{split}_labels.txt").write_text("\n".join("a b" if i % 2 else "a" for i in range(n)) + "\n")
    cfg = config_from_dict({"data": {"format": "xmtc_text", "path": str(tmp_path), "cache_dir": str(tmp_path / "cache"),
                                     "max_len": 6, "min_count": 1, "valid_fraction": 0.2},
                            "xml_cnn": {"filter_widths": [1, 2]}})
    corpus = load_corpus(cfg.data, cfg.synthetic)
    whole = list(whole_train_token_ids(corpus, cfg.data, cfg.synthetic))
    raw = read_xmtc_text(str(tmp_path), "error")["train"].texts
    kept, _ = validation_indices(30, 0.2, cfg.data.valid_seed)
    assert len(whole) == len(corpus.train) == 24
    assert whole == [corpus.tokenizer.encode(raw[i]) for i in kept]
    assert [w[:6] for w in whole] == corpus.train["input_ids"]  # the cache holds their first max_len tokens
    assert max(map(len, whole)) > 6
    truncated = cached_ppmi_svd_vectors(corpus, 4, tmp_path / "cache")
    full = cached_ppmi_svd_vectors(corpus, 4, tmp_path / "cache", whole_docs=lambda: whole_train_token_ids(corpus, cfg.data, cfg.synthetic))
    np.testing.assert_array_equal(full, ppmi_svd_vectors(whole, corpus.vocab_size, 4))
    assert np.abs(full - truncated).max() > 1e-3  # two cache entries, not one


def test_config_rejects_unknown_texts_for_the_vectors():
    from xmtc.config import ConfigError

    with pytest.raises(ConfigError, match="config key 'model.embed_init_texts' is \"all\"; allowed: \"whole\", \"truncated\""):
        config_from_dict({"model": {"embed_init_texts": "all"}})
