"""Fused linear + binary cross-entropy for the 670K-label output layer (Triton).

Reference: xmtc.ops_reference.linear_bce_reference (materialized logits); the CPU path is
xmtc.ops.LinearBCEChunkedFunction. The labels are walked in chunks; per chunk one kernel
computes z = features @ W_chunk^T + b in [BLOCK_B x BLOCK_L] tiles (fp32 accumulation),
builds y from the sparse positives in registers, and writes the loss partials and
dz = sigmoid(z) - y (squared hinge: -2 s max(0, 1 - s z), s = 2y - 1) for the chunk only. From dz: grad_weight[chunk] = dz^T @ features (cuBLAS),
grad_bias[chunk] = sum_b dz, and grad_features += dz @ W_chunk (split-K Triton GEMM with fp32
partials, so the sum over all chunks stays in fp32). Nothing of size B x L ever exists; the
backward only scales the saved gradients by grad_output.
"""

import torch
import triton
import triton.language as tl

from kernels import GradientsInForward, dot_precision, interpreting, num_sms


def _bce_configs():
    if interpreting():  # the interpreter cannot benchmark, and tl.dot needs dims >= 16
        return [triton.Config({"BLOCK_B": 16, "BLOCK_L": 16, "BLOCK_H": 16}, num_warps=4)]
    return [
        triton.Config({"BLOCK_B": bb, "BLOCK_L": bl, "BLOCK_H": bh}, num_warps=w, num_stages=s)
        for bb, bl, bh, w, s in [
            (16, 128, 64, 4, 3), (32, 128, 64, 4, 3), (64, 64, 64, 4, 3),
            (64, 128, 64, 8, 3), (64, 128, 32, 4, 4), (128, 64, 64, 8, 3),
        ]
    ]


def _prune_for_batch(configs, named_args, **kwargs):
    """Drop configs whose row tile is much taller than the batch (pure wasted MMA work)."""
    cap = max(16, triton.next_power_of_2(named_args["B"]))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= cap]
    return kept or configs[:1]


@triton.autotune(
    # The constexpr variants are different kernels (the loss-only forward of an evaluation writes no dz):
    # each is tuned on its own, so a run's tile choice does not depend on which variant ran first.
    configs=_bce_configs(), key=["B", "H", "HAS_BIAS", "WRITE_DZ", "SQUARED_HINGE", "PRECISION"], reset_to_zero=["loss_ptr"],
    prune_configs_by={"early_config_prune": _prune_for_batch},
)
@triton.jit
def _linear_bce_chunk_kernel(
    f_ptr, w_ptr, bias_ptr, label_start_ptr, pos_row_ptr, pos_label_ptr, dz_ptr, loss_ptr,
    B, H, chunk_start, chunk_stop, stride_f, stride_w, stride_dz,
    HAS_BIAS: tl.constexpr, WRITE_DZ: tl.constexpr, SQUARED_HINGE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    tile_start = chunk_start + pid_l * BLOCK_L
    cols = tile_start + tl.arange(0, BLOCK_L)
    row_ok = rows < B
    col_ok = cols < chunk_stop
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    z = tl.zeros([BLOCK_B, BLOCK_L], tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        f = tl.load(f_ptr + rows64[:, None] * stride_f + hs[None, :],
                    mask=row_ok[:, None] & (hs < H)[None, :], other=0.0)
        w = tl.load(w_ptr + cols64[:, None] * stride_w + hs[None, :],
                    mask=col_ok[:, None] & (hs < H)[None, :], other=0.0)
        z = tl.dot(f, tl.trans(w), z, input_precision=PRECISION)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    # Positives are sorted by label: this tile's are label_start[tile_start:tile_stop].
    first = tl.load(label_start_ptr + tile_start)
    last = tl.load(label_start_ptr + tl.minimum(tile_start + BLOCK_L, chunk_stop))
    y = tl.zeros([BLOCK_B, BLOCK_L], tl.float32)
    for k in range(first, last):
        r = tl.load(pos_row_ptr + k)
        c = tl.load(pos_label_ptr + k)
        y = tl.where((rows64[:, None] == r) & (cols64[None, :] == c), 1.0, y)
    ok = row_ok[:, None] & col_ok[None, :]
    if SQUARED_HINGE:  # max(0, 1 - s z)^2 with s = 2y - 1; dz = -2 s max(0, 1 - s z)
        sign = 2.0 * y - 1.0
        margin = tl.maximum(1.0 - sign * z, 0.0)
        loss = margin * margin
        grad = -2.0 * sign * margin
    else:  # BCE-with-logits, overflow-free: max(z, 0) - z*y + log(1 + exp(-|z|)); dz = sigmoid(z) - y
        loss = tl.maximum(z, 0.0) - z * y + tl.log(1.0 + tl.exp(-tl.abs(z)))
        grad = tl.sigmoid(z) - y
    slot = pid_b * tl.num_programs(0) + pid_l
    tl.store(loss_ptr + slot, tl.sum(tl.sum(tl.where(ok, loss, 0.0), axis=1), axis=0))
    if WRITE_DZ:
        dz = tl.where(ok, grad, 0.0)
        dst = dz_ptr + rows64[:, None] * stride_dz + (cols - chunk_start)[None, :]
        tl.store(dst, dz.to(dz_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_features_kernel(
    dz_ptr, w_ptr, out_ptr,
    B, H, n, chunk_start, stride_dz, stride_w, split_len,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[split] = dz[:, split] @ W[chunk_start + split]: one split-K slice, fp32."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    split = tl.program_id(2)
    k_start = split * split_len
    k_stop = tl.minimum(k_start + split_len, n)
    acc = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    for k0 in range(k_start, k_stop, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        dz = tl.load(dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + ks[None, :],
                     mask=(rows < B)[:, None] & (ks < k_stop)[None, :], other=0.0)
        w = tl.load(w_ptr + (chunk_start + ks).to(tl.int64)[:, None] * stride_w + hs[None, :],
                    mask=(ks < k_stop)[:, None] & (hs < H)[None, :], other=0.0)
        acc = tl.dot(dz, w, acc, input_precision=PRECISION)
    dst = out_ptr + (split * B + rows).to(tl.int64)[:, None] * H + hs[None, :]
    tl.store(dst, acc, mask=(rows < B)[:, None] & (hs < H)[None, :])


def _add_grad_features(grad_features, dz, weight, chunk_start, n, precision):
    """grad_features (fp32) += dz[:, :n] @ weight[chunk_start:chunk_start + n]."""
    B, H = grad_features.shape
    small = interpreting()
    BLOCK_B = 16 if small else min(64, max(16, triton.next_power_of_2(B)))
    BLOCK_H, BLOCK_K = (16, 16) if small else (64, 64)
    tiles = triton.cdiv(B, BLOCK_B) * triton.cdiv(H, BLOCK_H)
    # Split the chunk's labels so that ~2 programs per SM share the reduction.
    splits = max(1, min(triton.cdiv(n, BLOCK_K), (2 * num_sms(dz.device)) // max(1, tiles)))
    split_len = triton.cdiv(triton.cdiv(n, splits), BLOCK_K) * BLOCK_K
    splits = triton.cdiv(n, split_len)
    parts = torch.empty(splits, B, H, device=dz.device, dtype=torch.float32)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H), splits)
    _grad_features_kernel[grid](
        dz, weight, parts, B, H, n, chunk_start, dz.stride(0), weight.stride(0), split_len,
        PRECISION=precision, BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K, BLOCK_H=BLOCK_H,
    )
    grad_features += parts.sum(dim=0)


class LinearBCETritonFunction(GradientsInForward):
    """Sum of BCE-with-logits over B x L, gradients computed chunk by chunk in the forward.

    pos_label/pos_row: the shard's positive (label, row) pairs, local, deduplicated and sorted
    by label (xmtc.ops.sparse_positives).
    """

    @staticmethod
    def forward(ctx, features, weight, bias, pos_label, pos_row, chunk_size, criterion="bce"):
        features, weight = features.contiguous(), weight.contiguous()
        bias = None if bias is None else bias.contiguous()  # the kernel reads it with stride 1
        B, H = features.shape
        L = weight.shape[0]
        device = features.device
        needs = ctx.needs_input_grad[:3]
        with_bias = bias is not None
        grad_features = torch.zeros(B, H, device=device, dtype=torch.float32) if needs[0] else None
        grad_weight = torch.empty_like(weight) if needs[1] else None
        grad_bias = torch.empty_like(bias) if with_bias and needs[2] else None
        write_dz = any(needs)
        chunk = min(chunk_size, L)
        dz = torch.empty(B, chunk, device=device, dtype=weight.dtype) if write_dz else None
        label_start = torch.searchsorted(pos_label, torch.arange(L + 1, device=device))
        precision = dot_precision(weight.dtype)
        # One loss slot per program of the smallest tile; unused slots stay 0.
        loss_parts = torch.zeros(triton.cdiv(chunk, 16) * triton.cdiv(B, 16), device=device, dtype=torch.float32)
        loss = torch.zeros((), device=device, dtype=torch.float32)
        for start in range(0, L, chunk):
            stop = min(start + chunk, L)
            n = stop - start
            loss_parts.zero_()
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_L"]), triton.cdiv(B, meta["BLOCK_B"]))  # noqa: E731
            _linear_bce_chunk_kernel[grid](
                features, weight, bias if with_bias else weight, label_start, pos_row, pos_label,
                dz if write_dz else weight, loss_parts,
                B, H, start, stop, features.stride(0), weight.stride(0), chunk,
                HAS_BIAS=with_bias, WRITE_DZ=write_dz, SQUARED_HINGE=criterion == "squared_hinge", PRECISION=precision,
            )
            loss += loss_parts.sum()
            if not write_dz:
                continue
            dz_chunk = dz[:, :n]
            if grad_weight is not None:
                torch.mm(dz_chunk.t(), features, out=grad_weight[start:stop])
            if grad_bias is not None:
                grad_bias[start:stop] = dz_chunk.sum(dim=0, dtype=torch.float32)
            if grad_features is not None:
                _add_grad_features(grad_features, dz, weight, start, n, precision)
        GradientsInForward.keep(ctx, features, grad_features, grad_weight, grad_bias)
        return loss
