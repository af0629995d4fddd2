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


def test_psndcg_by_hand():
    m = run([1.0, 2.0, 3.0, 4.0, 5.0])
    # k=1: doc0 gains 3 (label 2) over IDCG 1, best 3; doc1 misses, best 4.
    assert m["PSnDCG@1"] == pytest.approx(3 / 7)
    # k=3: doc0 PSDCG = 3 + 1/log2(4) = 3.5 over IDCG = 1 + 1/log2(3), best 3 + 1/log2(3) over the same IDCG;
    # doc1 PSDCG = 4/log2(3) over IDCG 1, best 4.
    idcg0 = 1 + 1 / math.log2(3)
    expected = (3.5 / idcg0 + 4 / math.log2(3)) / ((3 + 1 / math.log2(3)) / idcg0 + 4)
    assert m["PSnDCG@3"] == pytest.approx(expected) and m["PSnDCG@3"] == pytest.approx(0.750002, abs=1e-6)
    # Uniform propensities: PSnDCG is nDCG's sum over the best possible (the ideal, 1 per labeled document).
    flat = run(np.ones(5))
    assert flat["PSnDCG@3"] == pytest.approx(flat["nDCG@3"])


def _dense_metrics(scores, truth, inv_p, predicted, k):
    """PSnDCG@k and macro F1 written the other way round: dense document x label matrices, as pyxclib's
    `psndcg` and scikit-learn's `f1_score(average="macro", labels=<labels in the truth or the predictions>)`
    compute them."""
    n, L = truth.shape
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ideal = np.argsort(-(truth * inv_p), axis=1, kind="stable")[:, :k]
    disc = 1 / np.log2(np.arange(k) + 2)
    flags = np.take_along_axis(truth * inv_p, order, 1)
    best = np.take_along_axis(truth * inv_p, ideal, 1)
    idcg = np.array([disc[: min(k, c)].sum() if c else 1.0 for c in truth.sum(1).astype(int)])
    psndcg = ((flags * disc).sum(1) / idcg).sum() / ((best * disc).sum(1) / idcg).sum()
    tp, fp, fn = (truth * predicted).sum(0), ((1 - truth) * predicted).sum(0), (truth * (1 - predicted)).sum(0)
    seen = tp + fp + fn > 0
    return psndcg, np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen]))


def test_psndcg_and_macro_f1_match_a_dense_computation():
    rng = np.random.default_rng(5)
    n, L, k = 60, 40, 5
    truth = (rng.random((n, L)) < 0.08).astype(float)
    truth[0] = 0  # a document without labels
    scores = rng.random((n, L))
    inv_p = 1 + 4 * rng.random(L)
    predicted = (scores > 0.8).astype(float)
    predicted[:, 39] = 0
    truth[:, 39] = 0  # a label nobody has or predicts: not in the macro average
    ranked = np.argsort(-scores, axis=1, kind="stable")
    idx = np.concatenate([np.flatnonzero(row) for row in truth])
    offsets = np.concatenate([[0], np.cumsum(truth.sum(1))]).astype(int)
    sums = MetricSums((1, k), L)
    sums.add(ranked, np.take_along_axis(predicted, ranked, 1).astype(bool), idx, offsets, inv_p)
    m = sums.result()
    psndcg, macro = _dense_metrics(scores, truth, inv_p, predicted, k)
    assert m["PSnDCG@5"] == pytest.approx(psndcg, rel=1e-12)
    assert m["macro_f1"] == pytest.approx(macro, rel=1e-12) and 0.0 < macro < 1.0


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
    # Per label: 0 FN, 1 FP twice, 2 TP, 3 TP, 4 FP: F1 0, 0, 1, 1, 0.
    assert m["macro_f1"] == pytest.approx(2 / 5)


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
    assert m["macro_f1"] == 1.0  # label 1, the only one that occurs; labels 0, 2, 3 occur nowhere


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


def test_the_linear_baselines_score_dense_decisions_like_their_direct_formulas():
    # scripts/linear_baselines.py scores scikit-learn's decision values through MetricSums; on random dense
    # decisions its P@1, micro-F1 and hamming loss must be the direct formulas' (every positive counted).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("linear_baselines", Path(__file__).resolve().parents[1] / "scripts" / "linear_baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(11)
    y_test = (rng.random((50, 12)) < 0.2).astype(int)
    y_train = (rng.random((80, 12)) < 0.2).astype(int)
    scores = rng.normal(size=(50, 12)) + 0.3  # some rows have more than 5 positive decisions
    assert (scores > 0).sum(1).max() > 5
    m = module.score(scores, y_test, y_train)
    predicted = scores > 0
    tp = (predicted & (y_test == 1)).sum()
    assert m["P@1"] == pytest.approx(y_test[np.arange(50), scores.argmax(1)].mean())
    assert m["micro_f1"] == pytest.approx(2 * tp / (predicted.sum() + y_test.sum()))
    assert m["hamming_loss"] == pytest.approx((predicted != (y_test == 1)).mean())
    assert m["num_docs"] == 50
    tp, fp, fn = (predicted & (y_test == 1)).sum(0), (predicted & (y_test == 0)).sum(0), (~predicted & (y_test == 1)).sum(0)
    seen = tp + fp + fn > 0
    assert m["macro_f1"] == pytest.approx(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])))
    assert module.score(scores[:0], y_test[:0], y_train)["num_docs"] == 0  # an empty test split


def test_ranking_and_set_metrics_match_their_direct_formulas_on_random_data():
    # P@k over k even for documents with fewer than k labels (and k > L), nDCG@k over the ideal DCG of min(k, |y|)
    # labels, PSP@k over the best achievable, propensities of Jain et al. (2016) written out, hamming loss over all L.
    rng = np.random.default_rng(3)
    n, L, N, a, b = 120, 30, 500, 0.55, 1.5
    truth = rng.random((n, L)) < 0.07
    truth[:4] = False
    scores = rng.random((n, L))
    counts = rng.integers(0, 60, L)
    c = (math.log(N) - 1) * (b + 1) ** a
    p = 1 / (1 + c * np.exp(-a * np.log(counts + b)))
    assert propensity(counts, N, a, b) == pytest.approx(p, rel=1e-12)
    ks = (1, 3, 5, 40)
    ranked = np.argsort(-scores, axis=1, kind="stable")  # all L labels: P@40 still divides by 40
    predicted = np.take_along_axis(scores, ranked, 1) > 0.7
    sums = MetricSums(ks, L)
    sums.add(ranked, predicted, np.concatenate([np.flatnonzero(r) for r in truth]),
             np.concatenate([[0], np.cumsum(truth.sum(1))]).astype(int), 1 / p)
    m = sums.result()
    for k in ks:
        top = ranked[:, :k]
        hits = np.take_along_axis(truth, top, 1)
        disc = 1 / np.log2(np.arange(2, top.shape[1] + 2))
        idcg = np.array([(1 / np.log2(np.arange(2, min(k, int(size)) + 2))).sum() for size in truth.sum(1)])
        best = np.array([np.sort(1 / p[row])[::-1][:k].sum() for row in truth])
        assert m[f"P@{k}"] == pytest.approx((hits.sum(1) / k).mean(), rel=1e-12)
        assert m[f"nDCG@{k}"] == pytest.approx(np.where(idcg > 0, (hits * disc).sum(1) / np.maximum(idcg, 1e-300), 0).mean(), rel=1e-12)
        assert m[f"PSP@{k}"] == pytest.approx((hits / p[top]).sum() / best.sum(), rel=1e-12)
    dense = np.zeros_like(truth)
    np.put_along_axis(dense, ranked, predicted, 1)
    assert m["hamming_loss"] == pytest.approx((dense != truth).mean(), rel=1e-12)
    assert m["micro_f1"] == pytest.approx(2 * (dense & truth).sum() / (dense.sum() + truth.sum()), rel=1e-12)
