"""Metrics against values worked out by hand (see the comments)."""

import math

import numpy as np
import pytest

from xmtc.metrics import MetricSums, propensity

# Two documents over 5 labels. Doc 0: true {0, 2}, ranked [2, 1, 0]; doc 1: true {3}, ranked [1, 3, 4].
RANKED = np.array([[2, 1, 0], [1, 3, 4]])
TRUE_IDX = np.array([0, 2, 3])
TRUE_OFF = np.array([0, 2, 3])


def run(inv_p, predicted=None, ks=(1, 3)):
    s = MetricSums(ks, 5)
    predicted = np.ones_like(RANKED, dtype=bool) if predicted is None else predicted
    s.add(RANKED, predicted, TRUE_IDX, TRUE_OFF, np.asarray(inv_p, dtype=float))
    return s.result()


def test_precision_and_ndcg():
    m = run(np.ones(5))
    assert m["P@1"] == pytest.approx(0.5)  # doc0 hit, doc1 miss
    assert m["P@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # doc0: DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3); doc1: DCG = 1/log2(3), IDCG = 1
    ndcg0 = 1.5 / (1 + 1 / math.log2(3))
    ndcg1 = 1 / math.log2(3)
    assert m["nDCG@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["nDCG@3"] == pytest.approx(0.775326, abs=1e-6)
    assert m["nDCG@1"] == pytest.approx(0.5)


def test_psp_uses_inverse_propensity_and_best_ranking():
    m = run([1.0, 2.0, 3.0, 4.0, 5.0])
    # top-1: doc0 label 2 is a hit (1/p = 3), doc1 label 1 misses; best top-1: doc0 3, doc1 4.
    assert m["PSP@1"] == pytest.approx(3 / 7)
    # top-3: doc0 hits 2 and 0 (3 + 1), doc1 hits 3 (4); best is all true labels: same sums.
    assert m["PSP@3"] == pytest.approx(1.0)


def test_repeated_labels_count_once():
    # SGM without its mask can emit a label again. Doc: true {3, 1}, ranked [3, 3, 1, 3]:
    # the repeats are misses, so P@4 = 2/4, DCG = 1 + 1/log2(4) against IDCG = 1 + 1/log2(3).
    s = MetricSums((2, 4), 5)
    ranked = np.array([[3, 3, 1, 3]])
    s.add(ranked, np.ones_like(ranked, dtype=bool), np.array([3, 1]), np.array([0, 2]), np.array([1.0, 2.0, 1.0, 4.0, 1.0]))
    m = s.result()
    assert m["P@2"] == pytest.approx(1 / 2)
    assert m["P@4"] == pytest.approx(2 / 4)
    assert m["nDCG@4"] == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert m["PSP@4"] == pytest.approx((4 + 2) / (4 + 2))  # gains 4 (label 3) + 2 (label 1), best the same
    assert m["PSP@2"] == pytest.approx(4 / (4 + 2))
    assert (m["micro_precision"], m["micro_recall"]) == (1.0, 1.0)  # the predicted set is {1, 3}


def test_set_metrics():
    predicted = np.array([[True, True, False], [True, True, True]])
    m = run(np.ones(5), predicted)
    # doc0 predicts {2,1}: TP 1, FP 1, FN 1 (label 0); doc1 predicts {1,3,4}: TP 1, FP 2, FN 0.
    assert m["micro_precision"] == pytest.approx(2 / 5)
    assert m["micro_recall"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx((3 + 1) / (2 * 5))


def test_padding_and_empty_documents():
    s = MetricSums((1, 3), 4)
    ranked = np.array([[1, -1, -1], [0, 2, 3]])
    predicted = np.array([[True, True, True], [False, False, False]])
    s.add(ranked, predicted, np.array([1]), np.array([0, 1, 1]), np.ones(4))
    m = s.result()
    assert m["P@1"] == pytest.approx(0.5)  # the unlabeled doc counts in the denominator
    assert m["P@3"] == pytest.approx(1 / 6)
    assert m["micro_f1"] == pytest.approx(1.0)  # -1 padding is never a prediction
    assert m["hamming_loss"] == 0.0


def test_sums_merge_like_one_pass():
    a, b, both = MetricSums((1, 3), 5), MetricSums((1, 3), 5), MetricSums((1, 3), 5)
    p = np.ones_like(RANKED, dtype=bool)
    inv = np.arange(1, 6, dtype=float)
    a.add(RANKED[:1], p[:1], TRUE_IDX[:2], TRUE_OFF[:2], inv)
    b.add(RANKED[1:], p[1:], TRUE_IDX[2:], TRUE_OFF[1:] - 2, inv)
    both.add(RANKED, p, TRUE_IDX, TRUE_OFF, inv)
    a.merge(b)
    assert a.result() == pytest.approx(both.result())
    restored = MetricSums.from_vector((1, 3), 5, both.vector())
    assert restored.result() == pytest.approx(both.result())


def test_propensity_by_hand():
    # N = 100, A = 0.55, B = 1.5: C = (ln 100 - 1) * 2.5^0.55 = 5.96764; N_l = 10: 1 / (1 + C * 11.5^-0.55)
    p = propensity(np.array([10, 0, 1000]), 100)
    assert p[0] == pytest.approx(0.39103, abs=1e-4)
    assert p[1] < p[0] < p[2] < 1.0
