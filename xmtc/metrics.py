"""Evaluation metrics of extreme multi-label classification.

Ranking metrics (P@k, nDCG@k, PSP@k, PSnDCG@k) read each document's ranked predictions; set metrics
(hamming loss, micro precision/recall/F1, macro F1) read its predicted label set. Every metric is a ratio of sums
over documents, so ranks accumulate `MetricSums` over their own documents and one all-reduce of
the sums gives exactly the metrics of the whole test set, each document counted once.

Definitions (Jain et al., KDD 2016, as in the Extreme Classification Repository):
- P@k = mean over documents of |top-k ∩ y| / k.
- nDCG@k = mean over documents of DCG@k / IDCG@k, with DCG@k = sum_{i<=k} y_(i) / log2(i+1) and
  IDCG@k = sum_{i<=min(k,|y|)} 1/log2(i+1); a document with no labels scores 0.
- PSP@k = sum over documents of sum_{l in top-k ∩ y} 1/p_l / k, divided by the same sum for the
  best possible ranking (true labels ordered by 1/p_l); propensity p_l = 1 / (1 + C (N_l + B)^-A),
  C = (ln N - 1)(B + 1)^A, N training documents, N_l the training frequency of label l.
- PSnDCG@k = sum over documents of PSDCG@k / IDCG@k, PSDCG@k = sum_{i<=k} y_(i) / (p_(i) log2(i+1)), divided by
  the same sum for the best possible ranking (as in the repository's pyxclib `psndcg`).
- hamming loss = (FP + FN) / (documents x labels); micro P/R/F1 from TP, FP, FN summed over all.
- macro F1 = mean over labels of 2 TP_l / (2 TP_l + FP_l + FN_l), over the labels that occur in the test
  documents or in the predictions (for any other label F1 is 0/0; scikit-learn's `f1_score(average="macro")`
  over the same labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def propensity(label_counts: np.ndarray, num_train_docs: int, a: float = 0.55, b: float = 1.5) -> np.ndarray:
    """Propensity p_l of each label (Jain et al. 2016); rare labels get small p_l."""
    counts = np.asarray(label_counts, dtype=np.float64)
    c = (np.log(max(num_train_docs, 2)) - 1.0) * (b + 1.0) ** a
    return 1.0 / (1.0 + c * np.power(counts + b, -a))


@dataclass
class MetricSums:
    """Per-metric sums over documents; `vector()`/`from_vector` round-trip them through an all-reduce."""

    ks: tuple[int, ...]
    num_labels: int
    docs: float = 0.0
    precision: dict[int, float] = field(default_factory=dict)
    ndcg: dict[int, float] = field(default_factory=dict)
    psp: dict[int, float] = field(default_factory=dict)
    psp_best: dict[int, float] = field(default_factory=dict)
    psndcg: dict[int, float] = field(default_factory=dict)
    psndcg_best: dict[int, float] = field(default_factory=dict)
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    label_tp: np.ndarray = None
    """float64 [num_labels] per-label counts (macro F1); `label_fp`, `label_fn` likewise."""
    label_fp: np.ndarray = None
    label_fn: np.ndarray = None

    def __post_init__(self):
        for d in self._per_k():
            for k in self.ks:
                d.setdefault(k, 0.0)
        for name in ("label_tp", "label_fp", "label_fn"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_labels, dtype=np.float64))

    def _per_k(self) -> tuple[dict[int, float], ...]:
        return (self.precision, self.ndcg, self.psp, self.psp_best, self.psndcg, self.psndcg_best)

    def vector(self) -> np.ndarray:
        """Every sum as one float64 vector (4 + 6 len(ks) + 3 num_labels), for one all-reduce."""
        parts = [self.docs, self.tp, self.fp, self.fn]
        for d in self._per_k():
            parts += [d[k] for k in self.ks]
        return np.concatenate([np.asarray(parts, dtype=np.float64), self.label_tp, self.label_fp, self.label_fn])

    @classmethod
    def from_vector(cls, ks, num_labels, v: np.ndarray) -> "MetricSums":
        s = cls(tuple(ks), num_labels)
        s.docs, s.tp, s.fp, s.fn = (float(x) for x in v[:4])
        n = len(s.ks)
        for i, d in enumerate(s._per_k()):
            for j, k in enumerate(s.ks):
                d[k] = float(v[4 + i * n + j])
        start = 4 + len(s._per_k()) * n
        s.label_tp, s.label_fp, s.label_fn = (np.array(v[start + i * num_labels : start + (i + 1) * num_labels], dtype=np.float64)
                                              for i in range(3))
        return s

    def add(
        self,
        ranked: np.ndarray,
        predicted: np.ndarray,
        true_idx: np.ndarray,
        true_offsets: np.ndarray,
        inv_propensity: np.ndarray,
    ) -> None:
        """Add a batch.

        ranked: int [B, K] label ids, best first, -1 for "no prediction"; a repeated id counts at its first place only.
        predicted: bool [B, K], which ranked entries are in the predicted set (threshold / emitted).
        true_idx, true_offsets: CSR true labels.
        inv_propensity: float [L], 1 / p_l.
        """
        ranked = np.asarray(ranked)
        predicted = np.asarray(predicted, dtype=bool) & (ranked >= 0)
        batch = ranked.shape[0]
        max_k = max(self.ks)
        discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
        for b in range(batch):
            y = np.unique(true_idx[true_offsets[b] : true_offsets[b + 1]])
            row = np.full(max_k, -1, dtype=np.int64)
            row[: min(ranked.shape[1], max_k)] = ranked[b, :max_k]
            # A label ranked twice (SGM decoding without its mask repeats labels) counts once, where it came first.
            _, first = np.unique(row, return_index=True)
            repeat = np.ones(max_k, dtype=bool)
            repeat[first] = False
            row[repeat] = -1
            hits = (row >= 0) & np.isin(row, y)
            gains = np.where(hits, inv_propensity[np.where(row >= 0, row, 0)], 0.0)
            best = np.sort(inv_propensity[y])[::-1] if y.size else np.zeros(0)
            best_gains = np.zeros(max_k)
            best_gains[: min(max_k, best.size)] = best[:max_k]
            for k in self.ks:
                self.precision[k] += hits[:k].sum() / k
                if y.size:
                    idcg = discounts[: min(k, y.size)].sum()
                    self.ndcg[k] += (hits[:k] * discounts[:k]).sum() / idcg
                    self.psndcg[k] += (gains[:k] * discounts[:k]).sum() / idcg
                    self.psndcg_best[k] += (best_gains[:k] * discounts[:k]).sum() / idcg
                self.psp[k] += gains[:k].sum() / k
                self.psp_best[k] += best[:k].sum() / k
            pred_set = np.unique(ranked[b][predicted[b]])
            hit = np.isin(pred_set, y)
            tp = hit.sum()
            self.tp += tp
            self.fp += pred_set.size - tp
            self.fn += y.size - tp
            self.label_tp[pred_set[hit]] += 1
            self.label_fp[pred_set[~hit]] += 1
            self.label_fn[y[~np.isin(y, pred_set)]] += 1
        self.docs += batch

    def merge(self, other: "MetricSums") -> None:
        merged = MetricSums.from_vector(self.ks, self.num_labels, self.vector() + other.vector())
        self.__dict__.update(merged.__dict__)

    def result(self) -> dict[str, float]:
        n = max(self.docs, 1.0)
        out: dict[str, float] = {}
        for k in self.ks:
            out[f"P@{k}"] = self.precision[k] / n
        for k in self.ks:
            out[f"nDCG@{k}"] = self.ndcg[k] / n
        for k in self.ks:
            out[f"PSP@{k}"] = self.psp[k] / self.psp_best[k] if self.psp_best[k] > 0 else 0.0
        for k in self.ks:
            out[f"PSnDCG@{k}"] = self.psndcg[k] / self.psndcg_best[k] if self.psndcg_best[k] > 0 else 0.0
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        out["hamming_loss"] = (self.fp + self.fn) / (n * self.num_labels)
        out["micro_precision"] = precision
        out["micro_recall"] = recall
        out["micro_f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        seen = self.label_tp + self.label_fp + self.label_fn > 0
        out["macro_f1"] = float(np.mean(2 * self.label_tp[seen] / (2 * self.label_tp[seen] + self.label_fp[seen] + self.label_fn[seen]))) if seen.any() else 0.0
        out["num_docs"] = self.docs
        return out


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """A two-column text table of the metrics, in a fixed order."""
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    width = max(len(k) for k, _ in rows) if rows else 10
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  value")
    lines.append(f"{'-' * width}  ------")
    for k, v in rows:
        lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) and k != "num_docs" else f"{k:<{width}}  {v:g}")
    return "\n".join(lines)
