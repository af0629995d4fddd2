"""Plain torch references for the fused ops in `xmtc.ops`.

Each function here is the definition of its op: written for clarity, with autograd doing the
backward. The Triton kernels (kernels/) and the chunked torch paths (xmtc/ops.py) are tested
against these. Byte counts are for the forward pass with B rows, L labels, e bytes per element.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "dynamic_max_pool_reference",
    "emitted_mask",
    "masked_softmax_reference",
    "masked_softmax_stats_reference",
    "masked_softmax_weighted_sum_reference",
    "dense_targets",
    "CRITERIA",
    "linear_bce_reference",
    "multilabel_loss_reference",
    "linear_topk_reference",
]


def dynamic_max_pool_reference(x, bias, num_chunks, relu=True):
    """adaptive_max_pool1d(relu(x + bias)): chunk i covers [floor(i*T/p), ceil((i+1)*T/p)).

    Moves ~4 x B*C*T*e bytes (add writes, relu reads+writes, pool reads) and autograd keeps the
    relu output (B*C*T*e) alive until backward.
    """
    if bias is not None:
        x = x + bias[None, :, None]
    if relu:
        x = F.relu(x)
    return F.adaptive_max_pool1d(x, num_chunks)


def emitted_mask(emitted, num_labels, label_offset=0):
    """Bool [B, L] with True at the local columns of `emitted` (global ids; -1 and ids outside
    [label_offset, label_offset + num_labels) are ignored)."""
    local = emitted - label_offset
    inside = (local >= 0) & (local < num_labels)
    # Out-of-shard ids land in a spare column that is dropped afterwards.
    cols = torch.where(inside, local, torch.full_like(local, num_labels))
    mask = torch.zeros(emitted.shape[0], num_labels + 1, dtype=torch.bool, device=emitted.device)
    mask.scatter_(1, cols, True)
    return mask[:, :num_labels]


def _masked_fp32_logits(logits, emitted, label_offset):
    mask = emitted_mask(emitted, logits.shape[1], label_offset)
    return logits.float().masked_fill(mask, float("-inf")), mask


def _finite_or_zero(row_max):
    # A row with no finite unmasked logit has max -inf; shifting by 0 keeps exp() NaN-free.
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def masked_softmax_reference(logits, emitted, log=False):
    """softmax (or log_softmax) over labels with emitted labels at probability 0 (log-prob -inf).

    A row with no finite unmasked logit gets probabilities 0 (log-probs -inf) and zero gradient
    at masked columns, where torch's softmax would give NaN. Gradients otherwise equal those of
    F.softmax / F.log_softmax applied to logits.masked_fill(mask, -inf).
    """
    z, _ = _masked_fp32_logits(logits, emitted, 0)
    # The shift cancels mathematically, so it carries no gradient.
    shift = _finite_or_zero(z.amax(dim=1, keepdim=True)).detach()
    shifted = z - shift
    sumexp = shifted.exp().sum(dim=1, keepdim=True)
    # Only an empty sum is replaced: a NaN logit's NaN sum must reach the output, as in F.softmax.
    safe_sumexp = torch.where(sumexp != 0, sumexp, torch.ones_like(sumexp))
    if log:
        out = shifted - safe_sumexp.log()
    else:
        out = shifted.exp() / safe_sumexp
    return out.to(logits.dtype)


def masked_softmax_stats_reference(logits, emitted, label_offset=0):
    """(row_max [B], row_sumexp [B]) over this shard's unmasked labels, both fp32.

    row_max carries no gradient (the softmax is invariant to it); row_sumexp is differentiable.
    A row with no unmasked finite logit in the shard gives (-inf, 0).
    """
    z, _ = _masked_fp32_logits(logits, emitted, label_offset)
    row_max = z.amax(dim=1).detach()
    row_sumexp = (z - _finite_or_zero(row_max)[:, None]).exp().sum(dim=1)
    return row_max, row_sumexp


def masked_softmax_weighted_sum_reference(
    logits, emitted, table, log=False, row_max=None, row_sumexp=None, label_offset=0
):
    """(probs or log-probs [B, L], e_bar = probs @ table [B, D]).

    With row_max/row_sumexp (global stats of a label-sharded softmax) the shard's probabilities
    are exp(z - row_max) / row_sumexp, e_bar is this shard's partial sum, and the gradient
    reaches the other shards through row_sumexp.
    """
    z, _ = _masked_fp32_logits(logits, emitted, label_offset)
    if (row_max is None) != (row_sumexp is None):
        raise ValueError("masked_softmax_weighted_sum: pass both row_max and row_sumexp, or neither.")
    if row_max is None:
        row_max = z.amax(dim=1)
        shift = _finite_or_zero(row_max).detach()[:, None]
        sumexp = (z - shift).exp().sum(dim=1, keepdim=True)
    else:
        shift = _finite_or_zero(row_max.float()).detach()[:, None]
        sumexp = row_sumexp.float()[:, None]
    shifted = z - shift
    safe_sumexp = torch.where(sumexp != 0, sumexp, torch.ones_like(sumexp))
    probs = shifted.exp() / safe_sumexp
    e_bar = (probs @ table.float()).to(table.dtype)
    out = shifted - safe_sumexp.log() if log else probs
    return out.to(logits.dtype), e_bar


def dense_targets(target_idx, target_offsets, num_labels, label_offset=0, dtype=torch.float32):
    """Dense 0/1 [B, L] from CSR targets (global label ids; ids outside the shard ignored)."""
    batch = target_offsets.numel() - 1
    counts = target_offsets[1:] - target_offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(batch, device=target_idx.device), counts)
    local = target_idx[: rows.numel()] - label_offset
    keep = (local >= 0) & (local < num_labels)
    y = torch.zeros(batch, num_labels, dtype=dtype, device=target_idx.device)
    y[rows[keep], local[keep]] = 1
    return y


CRITERIA = ("bce", "squared_hinge")
"""Per-label losses of the output layer: binary cross-entropy with logits, or the squared hinge
max(0, 1 - s z)^2 with s = +1 at positives and -1 elsewhere (an L2-SVM per label, LinearSVC's loss)."""


def multilabel_loss_reference(logits, y, criterion="bce"):
    """Sum over all entries of `criterion`(logits, y), y in {0, 1}."""
    if criterion == "bce":
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    if criterion == "squared_hinge":
        return F.relu(1.0 - (2.0 * y - 1.0) * logits).pow(2).sum()
    raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}.")


def linear_bce_reference(features, weight, bias, target_idx, target_offsets, label_offset=0, criterion="bce"):
    """Sum over all B x L entries of BCE-with-logits (or `criterion`) of features @ weight.T + bias and y.

    Materializes the B x L logits, targets and (under autograd) the gradient of the logits:
    ~4 x B*L*4 bytes live at once, 670K labels x 64 rows = ~690 MB.
    """
    logits = F.linear(features, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    y = dense_targets(target_idx, target_offsets, weight.shape[0], label_offset, dtype=logits.dtype)
    return multilabel_loss_reference(logits, y, criterion)


def linear_topk_reference(features, weight, bias, k, label_offset=0):
    """Top-k labels by score over the full logits; ties go to the lower label index."""
    logits = F.linear(features, weight, bias)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    return logits.gather(1, order), order + label_offset
