"""The output layer over L labels: a linear map scored with binary cross-entropy (or the squared hinge).

Its loss takes sparse targets (CSR label indices) and, by default, goes through the chunked fused
linear + BCE of `xmtc.ops`, so a batch x L logits tensor never exists. The label-sharded variant in
`xmtc.parallel.label_shards` has the same interface and replaces this module from outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xmtc import ops
from xmtc.ops_reference import multilabel_loss_reference


def dense_targets(label_idx: torch.Tensor, label_offsets: torch.Tensor, num_labels: int, label_offset: int = 0) -> torch.Tensor:
    """CSR label indices -> dense {0,1} [B, num_labels] for labels in [label_offset, label_offset + num_labels)."""
    batch = label_offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(batch, device=label_idx.device), label_offsets.diff())
    local = label_idx - label_offset
    keep = (local >= 0) & (local < num_labels)
    y = torch.zeros(batch, num_labels, device=label_idx.device)
    y[rows[keep], local[keep]] = 1.0
    return y


def check_label_ids(label_idx: torch.Tensor, num_labels: int) -> None:
    """A ValueError for a label id outside [0, num_labels): the loss would drop it without a word (each label
    shard counts only its own ids). One device sync, for a non-empty batch."""
    if label_idx.numel():
        low, high = torch.stack(torch.aminmax(label_idx)).tolist()
        if low < 0 or high >= num_labels:
            raise ValueError(f"label_idx holds label id {low if low < 0 else high}, outside this model's {num_labels} "
                             f"labels (ids 0..{num_labels - 1})")


class OutputLayer(nn.Module):
    """weight [L, H] and bias [L]; `loss` sums BCE (or `criterion`) over labels, `topk` ranks labels per document."""

    def __init__(self, in_features: int, num_labels: int, loss: str = "fused", chunk_size: int = 8192,
                 criterion: str = "bce"):
        super().__init__()
        self.in_features, self.num_labels = in_features, num_labels
        self.loss_mode, self.chunk_size, self.criterion = loss, chunk_size, criterion
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.bias = nn.Parameter(torch.empty(num_labels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)

    def loss(self, features: torch.Tensor, label_idx: torch.Tensor, label_offsets: torch.Tensor) -> torch.Tensor:
        """Sum over labels of BCE (or the squared hinge), averaged over the documents of this batch."""
        batch = features.shape[0]
        check_label_ids(label_idx, self.num_labels)
        if self.loss_mode == "materialized":
            y = dense_targets(label_idx, label_offsets, self.num_labels)
            total = multilabel_loss_reference(self.logits(features).float(), y, self.criterion)
        else:
            total = ops.fused_linear_bce(
                features, self.weight, self.bias, label_idx, label_offsets, chunk_size=self.chunk_size,
                criterion=self.criterion,
            )
        return total / batch

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid scores [B, k], label ids [B, k]), label by label chunk: no batch x L tensor.

        Under the squared hinge the sigmoid is only a monotone map of the margin (0.5 at z = 0, where
        an SVM's decision changes), not a calibrated probability.
        """
        k = min(k, self.num_labels)
        scores, idx = ops.linear_topk(features, self.weight, self.bias, k, chunk_size=self.chunk_size)
        return torch.sigmoid(scores.float()), idx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_labels={self.num_labels}, loss={self.loss_mode}, criterion={self.criterion}"
