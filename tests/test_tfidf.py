"""XML-CNN's TF-IDF channel (`xml_cnn.tfidf`): frequencies and idf by hand, the sparse batch weights
against a dense TF-IDF matrix, the channel's output and gradient against a dense matmul, and the model
and config around it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xmtc.config import ConfigError, load_config
from xmtc.models import build_model
from xmtc.models.tfidf import TfidfChannel, document_frequencies, smoothed_idf, tfidf_rows


def dense_tfidf(input_ids: torch.Tensor, idf: torch.Tensor, sublinear: bool) -> torch.Tensor:
    """[B, V] TF-IDF (raw or sublinear tf), rows L2-normalised, written entry by entry."""
    out = torch.zeros(input_ids.shape[0], idf.numel(), dtype=torch.float64)
    for b, row in enumerate(input_ids.tolist()):
        counts: dict[int, int] = {}
        for t in row:
            if t >= 2:
                counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            out[b, t] = ((1 + math.log(c)) if sublinear else c) * float(idf[t])
        norm = out[b].norm()
        if norm > 0:
            out[b] /= norm
    return out


def test_document_frequencies_and_idf_by_hand():
    df, n = document_frequencies([[2, 3, 3, 0], [3, 4], [5, 1, 1]], vocab_size=6)
    assert n == 3 and df.tolist() == [1, 1, 1, 2, 1, 1]  # a token counts once per document
    idf = smoothed_idf(df, n)
    assert idf[3] == pytest.approx(math.log(4 / 3) + 1) and idf[2] == pytest.approx(math.log(4 / 2) + 1)
    assert idf.dtype == np.float32


@pytest.mark.parametrize("sublinear", [False, True])
def test_tfidf_rows_by_hand(sublinear):
    idf = torch.tensor([9.0, 9.0, 1.0, 2.0, 1.0])
    ids = torch.tensor([[2, 2, 3, 1, 0], [4, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    doc, token, weight = tfidf_rows(ids, idf, sublinear)
    # Document 0: token 2 twice (tf 2, or 1 + log 2) with idf 1, token 3 once with idf 2; unknown (1)
    # and padding (0) carry none.
    a, b = (1 + math.log(2)) if sublinear else 2.0, 2.0
    assert doc.tolist() == [0, 0, 1] and token.tolist() == [2, 3, 4]  # document 2 has no weighted token
    torch.testing.assert_close(weight, torch.tensor([a / math.hypot(a, b), b / math.hypot(a, b), 1.0]))


@pytest.mark.parametrize("sublinear", [False, True])
def test_channel_matches_a_dense_tfidf_matmul_forward_and_backward(sublinear):
    torch.manual_seed(0)
    V, H = 40, 6
    channel = TfidfChannel(V, H, sublinear).double()
    df = np.random.default_rng(0).integers(0, 20, size=V)
    channel.set_idf(df, 20)
    ids = torch.randint(0, V, (5, 30))
    ids[3] = 0  # an empty document
    ids[4, :25] = 7  # a repeated token
    got = channel(ids)
    want = dense_tfidf(ids, channel.idf, sublinear) @ channel.weight
    torch.testing.assert_close(got, want)
    assert not got[3].any()
    grad_out = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, channel.weight, grad_out)
    (g_want,) = torch.autograd.grad(want, channel.weight, grad_out)
    torch.testing.assert_close(g_got, g_want)
    assert g_got[0].abs().sum() == 0 and g_got[1].abs().sum() == 0  # padding and unknown get no gradient


def test_set_idf_checks_the_vocabulary():
    with pytest.raises(ValueError, match="for a vocabulary of 10"):
        TfidfChannel(10, 4).set_idf(np.zeros(9, dtype=np.int64), 3)


def test_xml_cnn_with_tfidf_adds_one_table_and_keeps_the_other_layers_initialisation():
    def model(*overrides):
        cfg = load_config("debug_xml_cnn", list(overrides))
        torch.manual_seed(0)
        return cfg, build_model(cfg, 20, 300)

    cfg, plain = model()
    _, with_tfidf = model("--xml_cnn.tfidf", "true")
    extra = sum(p.numel() for p in with_tfidf.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 300 * cfg.xml_cnn.bottleneck
    for (name, a), (_, b) in zip(plain.state_dict().items(), with_tfidf.state_dict().items()):
        assert torch.equal(a, b), name
    assert "tfidf.idf" in with_tfidf.state_dict()  # checkpoints carry the training statistics
    ids = torch.randint(2, 300, (3, cfg.data.max_len))
    loss = with_tfidf(ids, torch.tensor([0, 4, 19]), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert with_tfidf.tfidf.weight.grad.abs().sum() > 0


def test_tfidf_without_a_bottleneck_is_a_config_error():
    with pytest.raises(ConfigError, match="'xml_cnn.tfidf' is true but 'xml_cnn.bottleneck' is 0"):
        load_config("kim_cnn_reuters", ["--xml_cnn.tfidf", "true"])
