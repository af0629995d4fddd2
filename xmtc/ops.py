"""Fused ops for XML-CNN and SGM: one public function per op.

Each op runs its Triton kernel (kernels/<op>.py) on CUDA and plain torch elsewhere; the plain
references live in `xmtc.ops_reference` and the tests hold every path to them.

Backend: the env var XMTC_KERNELS=auto|triton|torch sets the default, `set_kernel_backend(name)`
(config `model.kernels`) overrides it for the process. `auto` uses Triton when the tensor is a
float32/bfloat16 CUDA tensor and triton imports; `triton` forces it (CPU tensors only under
TRITON_INTERPRET=1).
Nothing here imports triton or queries a device at import time.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from kernels import GradientsInForward, interpreting
from xmtc.ops_reference import (
    CRITERIA,
    dynamic_max_pool_reference,
    masked_softmax_reference,
    masked_softmax_stats_reference,
    masked_softmax_weighted_sum_reference,
)

__all__ = [
    "BACKENDS",
    "set_kernel_backend",
    "set_kernel_backend_from_config",
    "kernel_backend",
    "dynamic_max_pool",
    "masked_softmax",
    "masked_softmax_stats",
    "masked_softmax_weighted_sum",
    "fused_linear_bce",
    "linear_topk",
    "sparse_positives",
]

BACKENDS = ("auto", "triton", "torch")
_backend_override: str | None = None


def set_kernel_backend(name: str | None) -> str | None:
    """Choose the backend for every op ('auto', 'triton', 'torch'; None = back to XMTC_KERNELS).

    Returns the previous override so callers (tests) can restore it.
    """
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"model.kernels must be one of {', '.join(BACKENDS)}; got {name!r}.")
    previous, _backend_override = _backend_override, name
    return previous


def set_kernel_backend_from_config(model_kernels: str) -> None:
    """Config `model.kernels`: "triton" or "torch" force that backend; "auto" (the default) leaves the
    choice to XMTC_KERNELS, so `XMTC_KERNELS=torch` rules the kernels out of a run without editing it."""
    set_kernel_backend(None if model_kernels == "auto" else model_kernels)


def kernel_backend() -> str:
    """The backend in force: the set_kernel_backend override, else XMTC_KERNELS, else 'auto'."""
    if _backend_override is not None:
        return _backend_override
    name = os.environ.get("XMTC_KERNELS", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"XMTC_KERNELS must be one of {', '.join(BACKENDS)}; got {name!r}.")
    return name


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# The kernels compute in fp32 and are tested for these inputs; anything else stays on torch.
_TRITON_DTYPES = (torch.float32, torch.bfloat16)


def _use_triton(tensor: torch.Tensor) -> bool:
    name = kernel_backend()
    if name == "torch":
        return False
    if name == "auto":
        return tensor.is_cuda and tensor.dtype in _TRITON_DTYPES and _triton_importable()
    if tensor.dtype not in _TRITON_DTYPES:
        raise ValueError(
            f"model.kernels is 'triton' but the kernels take float32 or bfloat16, not {tensor.dtype}; use 'auto'."
        )
    if not _triton_importable():
        raise RuntimeError("XMTC_KERNELS/model.kernels is 'triton' but triton does not import.")
    if not tensor.is_cuda and not interpreting():
        raise RuntimeError(
            "model.kernels is 'triton' but the tensor is on the CPU; use 'auto' or set TRITON_INTERPRET=1."
        )
    return True


# ---------------------------------------------------------------------------- dynamic max pool


def dynamic_max_pool(x, bias, num_chunks, relu=True):
    """relu(x + bias) max-pooled to `num_chunks` chunks per channel: [B, C, T] -> [B, C, p].

    Chunk i covers [floor(i*T/p), ceil((i+1)*T/p)) exactly as F.adaptive_max_pool1d, so any T
    and p work (T < p repeats positions). Gradient goes to the first arg-max of each chunk.
    """
    if x.dim() != 3:
        raise ValueError(f"dynamic_max_pool: x must be [batch, channels, time]; got shape {tuple(x.shape)}.")
    if num_chunks < 1:
        raise ValueError(f"dynamic_max_pool: num_chunks must be >= 1; got {num_chunks}.")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"dynamic_max_pool: bias must be [{x.shape[1]}]; got {tuple(bias.shape)}.")
    if bias is not None and bias.dtype != x.dtype:
        raise ValueError(f"dynamic_max_pool: x is {x.dtype} but bias is {bias.dtype}.")
    if x.shape[2] == 0:
        raise ValueError("dynamic_max_pool: x has no time steps to pool.")
    if _use_triton(x):
        from kernels.dynamic_max_pool import dynamic_max_pool_triton

        return dynamic_max_pool_triton(x, bias, num_chunks, relu)
    return dynamic_max_pool_reference(x, bias, num_chunks, relu)


# ------------------------------------------------------------------------------ masked softmax


def _check_emitted(logits, emitted, name):
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be [batch, labels]; got shape {tuple(logits.shape)}.")
    if emitted.dim() != 2 or emitted.shape[0] != logits.shape[0] or emitted.dtype != torch.long:
        raise ValueError(
            f"{name}: emitted must be a LongTensor [{logits.shape[0]}, T] of label ids padded with -1; "
            f"got {emitted.dtype} {tuple(emitted.shape)}."
        )


def masked_softmax(logits, emitted, log=False):
    """Softmax (log_softmax if `log`) over labels, emitted labels at probability 0 / log-prob -inf.

    logits [B, L] fp32 or bf16; emitted LongTensor [B, T] of label ids, padded with -1 (ids
    outside [0, L) are ignored). A row with no finite unmasked logit gives all zeros (log: -inf).
    Returns [B, L] in logits.dtype, computed in fp32.
    """
    _check_emitted(logits, emitted, "masked_softmax")
    if _use_triton(logits):
        from kernels.masked_softmax import masked_softmax_triton

        return masked_softmax_triton(logits, emitted, log)
    return masked_softmax_reference(logits, emitted, log)


def masked_softmax_stats(logits, emitted, label_offset=0):
    """(row_max [B], row_sumexp [B]) fp32 over this shard's unmasked labels.

    The shard holds labels [label_offset, label_offset + L_local); emitted holds global ids.
    Combine across shards: M = all_reduce_max(row_max), S = all_reduce_sum(row_sumexp *
    exp(row_max - M)) (rows with row_max = -inf contribute 0). row_max has no gradient;
    row_sumexp is differentiable w.r.t. logits.
    """
    _check_emitted(logits, emitted, "masked_softmax_stats")
    if _use_triton(logits):
        from kernels.masked_softmax import masked_softmax_stats_triton

        return masked_softmax_stats_triton(logits, emitted, label_offset)
    return masked_softmax_stats_reference(logits, emitted, label_offset)


def masked_softmax_weighted_sum(
    logits,
    emitted,
    table,
    log=False,
    row_max=None,
    row_sumexp=None,
    label_offset=0,
    return_probs=True,
):
    """(probs or None, e_bar [B, D]) with e_bar = masked_softmax(logits) @ table (SGM's global embedding).

    table [L_local, D]: row l is the embedding of label label_offset + l. Given row_max and
    row_sumexp (global stats, see masked_softmax_stats) the probabilities are exp(z - row_max) /
    row_sumexp and e_bar is this shard's partial sum; gradients flow to logits, table and
    row_sumexp. With return_probs=False the Triton path never writes the [B, L] probabilities.
    """
    _check_emitted(logits, emitted, "masked_softmax_weighted_sum")
    if table.dim() != 2 or table.shape[0] != logits.shape[1]:
        raise ValueError(
            f"masked_softmax_weighted_sum: table must be [{logits.shape[1]}, D] (one row per label "
            f"column of logits); got {tuple(table.shape)}."
        )
    if table.dtype != logits.dtype:
        raise ValueError(f"masked_softmax_weighted_sum: logits are {logits.dtype} but table is {table.dtype}.")
    if (row_max is None) != (row_sumexp is None):
        raise ValueError("masked_softmax_weighted_sum: pass both row_max and row_sumexp, or neither.")
    if _use_triton(logits):
        from kernels.masked_softmax import masked_softmax_weighted_sum_triton

        return masked_softmax_weighted_sum_triton(
            logits, emitted, table, log, row_max, row_sumexp, label_offset, return_probs
        )
    probs, e_bar = masked_softmax_weighted_sum_reference(
        logits, emitted, table, log, row_max, row_sumexp, label_offset
    )
    return (probs if return_probs else None), e_bar


# ------------------------------------------------------------------- fused linear + BCE, top-k


def sparse_positives(target_idx, target_offsets, num_labels, label_offset=0):
    """CSR targets -> this shard's positive (label, row) pairs, deduplicated, sorted by label.

    Returns (pos_label, pos_row), both int64 and local to the shard.
    """
    batch = target_offsets.numel() - 1
    counts = target_offsets[1:] - target_offsets[:-1]
    rows = torch.repeat_interleave(
        torch.arange(batch, device=target_idx.device), counts, output_size=target_idx.numel()
    )
    local = target_idx - label_offset
    keep = (local >= 0) & (local < num_labels)
    # label-major keys: unique() sorts them, which both dedups and orders pairs by label.
    keys = torch.unique(local[keep] * batch + rows[keep])
    return keys // batch, keys % batch


class LinearBCEChunkedFunction(GradientsInForward):
    """Sum of BCE-with-logits (or the squared hinge) over features @ weight.T + bias, walked in label chunks (torch).

    The forward computes the gradients chunk by chunk (the logits of one chunk are the only
    [B, *] temporary) and the backward only scales them by grad_output.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, pos_label, pos_row, chunk_size, criterion="bce"):
        batch, num_labels = features.shape[0], weight.shape[0]
        acc = torch.promote_types(features.dtype, torch.float32)
        needs_grad = ctx.needs_input_grad[:3]
        feats = features.to(acc)
        grad_features = torch.zeros_like(feats) if needs_grad[0] else None
        grad_weight = torch.empty_like(weight) if needs_grad[1] else None
        grad_bias = torch.empty_like(bias) if bias is not None and needs_grad[2] else None
        loss = torch.zeros((), dtype=acc, device=features.device)
        starts = list(range(0, num_labels, chunk_size))
        bounds = torch.searchsorted(pos_label, torch.tensor(starts + [num_labels], device=pos_label.device))
        bounds = bounds.tolist()
        minus_one = torch.tensor(-1.0, dtype=acc, device=features.device)
        for i, start in enumerate(starts):
            stop = min(start + chunk_size, num_labels)
            w = weight[start:stop].to(acc)
            if bias is None:
                z = feats @ w.t()
            else:
                z = torch.addmm(bias[start:stop].to(acc), feats, w.t())
            rows = pos_row[bounds[i] : bounds[i + 1]]
            cols = pos_label[bounds[i] : bounds[i + 1]] - start
            if criterion == "bce":
                # BCE(z, y) = softplus(z) - y*z, and y is 1 exactly at the (deduplicated) positives.
                loss += F.softplus(z).sum() - z[rows, cols].sum()
                if not any(needs_grad):
                    continue
                dz = z.sigmoid_()
                dz.index_put_((rows, cols), minus_one, accumulate=True)
            else:
                # Squared hinge: negatives cost max(0, 1 + z)^2, positives max(0, 1 - z)^2; dz = -2 s max(0, 1 - s z).
                pos_margin = (1.0 - z[rows, cols]).clamp_min_(0.0)
                margin = z.add_(1.0).clamp_min_(0.0)  # in place: the chunk's logits are not needed again
                flat = margin.view(-1)
                loss += torch.dot(flat, flat) - margin[rows, cols].square().sum() + pos_margin.square().sum()
                if not any(needs_grad):
                    continue
                dz = margin.mul_(2.0)
                dz.index_put_((rows, cols), -2.0 * pos_margin)
            if grad_features is not None:
                grad_features.addmm_(dz, w)
            if grad_weight is not None and grad_weight.dtype == acc:
                torch.mm(dz.t(), feats, out=grad_weight[start:stop])  # no temporary
            elif grad_weight is not None:
                grad_weight[start:stop] = dz.t() @ feats
            if grad_bias is not None:
                grad_bias[start:stop] = dz.sum(0)
        GradientsInForward.keep(ctx, features, grad_features, grad_weight, grad_bias)
        return loss


def fused_linear_bce(features, weight, bias, target_idx, target_offsets, label_offset=0, chunk_size=8192, criterion="bce"):
    """SUM over B x L_local of BCE-with-logits(features @ weight.T + bias, y), never holding B x L.

    features [B, H], weight [L_local, H], bias [L_local] or None. Targets are CSR: row b's global
    label ids are target_idx[target_offsets[b]:target_offsets[b+1]] (target_offsets [B+1], from
    0 to target_idx.numel()); only ids in [label_offset, label_offset + L_local) count here.
    Gradients are computed during the forward, `chunk_size` labels at a time. `criterion`
    "squared_hinge" sums max(0, 1 - s z)^2 instead (s = +1 at positives, -1 elsewhere).
    """
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_bce: features [B, H] and weight [L, H] must share H; got "
            f"{tuple(features.shape)} and {tuple(weight.shape)}."
        )
    if features.dtype != weight.dtype:
        raise ValueError(f"fused_linear_bce: features are {features.dtype} but weight is {weight.dtype}.")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"fused_linear_bce: bias must be [{weight.shape[0]}]; got {tuple(bias.shape)}.")
    if bias is not None and bias.dtype != weight.dtype:
        raise ValueError(f"fused_linear_bce: weight is {weight.dtype} but bias is {bias.dtype}.")
    if target_offsets.dim() != 1 or target_offsets.numel() != features.shape[0] + 1:
        raise ValueError(
            f"fused_linear_bce: target_offsets must be [B+1] = [{features.shape[0] + 1}]; "
            f"got {tuple(target_offsets.shape)}."
        )
    if chunk_size < 1:
        raise ValueError(f"fused_linear_bce: chunk_size must be >= 1; got {chunk_size}.")
    if criterion not in CRITERIA:
        raise ValueError(f"fused_linear_bce: criterion must be one of {CRITERIA}; got {criterion!r}.")
    pos_label, pos_row = sparse_positives(target_idx, target_offsets, weight.shape[0], label_offset)
    if not torch.is_grad_enabled():  # the loss alone: no [L, H] weight gradient computed and thrown away
        features, weight, bias = features.detach(), weight.detach(), None if bias is None else bias.detach()
    if _use_triton(features):
        from kernels.fused_linear_bce import LinearBCETritonFunction

        return LinearBCETritonFunction.apply(features, weight, bias, pos_label, pos_row, chunk_size, criterion)
    return LinearBCEChunkedFunction.apply(features, weight, bias, pos_label, pos_row, chunk_size, criterion)


def _topk_lowest_index(scores, k):
    """Exact top-k of each row, ordered by score then lower column: topk picks values, ties at
    the k-th value go to the lowest columns."""
    values = scores.topk(k, dim=1).values
    if torch.isnan(values[:, 0]).any():  # topk ranks NaN first
        raise FloatingPointError("linear_topk: the scores hold NaN; the model's weights or inputs are NaN (a diverged run?)")
    kth = values[:, -1:]
    take = scores > kth
    tied = scores == kth
    need = k - take.sum(dim=1, keepdim=True)
    take |= tied & (tied.cumsum(dim=1) <= need)
    cols = take.nonzero()[:, 1].view(scores.shape[0], k)  # row-major, so ascending per row
    picked = scores.gather(1, cols)
    order = picked.argsort(dim=1, descending=True, stable=True)
    return picked.gather(1, order), cols.gather(1, order)


@torch.no_grad()
def linear_topk(features, weight, bias, k, label_offset=0, chunk_size=8192):
    """(scores [B, k], global label ids [B, k]) of the top-k logits, chunk by chunk (no B x L).

    Sorted by descending score, ties toward the lower label index (torch.topk's answer whenever
    the values are distinct). Plain torch on every device: it is a sequence of GEMMs and top-ks.
    """
    num_labels = weight.shape[0]
    if not 1 <= k <= num_labels:
        raise ValueError(f"linear_topk: k must be in [1, {num_labels}]; got {k}.")
    best_scores = best_idx = None
    for start in range(0, num_labels, chunk_size):
        stop = min(start + chunk_size, num_labels)
        z = F.linear(features, weight[start:stop], None if bias is None else bias[start:stop])
        scores, cols = _topk_lowest_index(z, min(k, stop - start))
        cols = cols + start
        if best_scores is not None:
            # Earlier chunks hold lower labels, so a stable sort keeps them first among equals.
            scores = torch.cat([best_scores, scores], dim=1)
            cols = torch.cat([best_idx, cols], dim=1)
            order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
            scores, cols = scores.gather(1, order), cols.gather(1, order)
        best_scores, best_idx = scores, cols
    return best_scores, best_idx + label_offset
