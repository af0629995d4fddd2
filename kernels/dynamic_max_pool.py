"""Dynamic max pooling for XML-CNN: bias + ReLU + chunked max (+ arg-max) in one Triton kernel.

Reference: xmtc.ops_reference.dynamic_max_pool_reference, i.e.
F.adaptive_max_pool1d(F.relu(x + bias[None, :, None]), p): chunk i covers
[floor(i*T/p), ceil((i+1)*T/p)). The forward reads x once and writes values plus an int32
arg-max (-1 where ReLU clipped the max, so no gradient flows); the backward gathers, for each
time step, the gradient of the chunks whose arg-max it is: no atomics, deterministic.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _round_to(v, dtype: tl.constexpr):
    """fp32 v rounded to `dtype` to nearest-even (torch's rounding), returned as fp32.

    bf16 on the bits: "rtne" is already the default of `.to(tl.bfloat16)`, which the interpreter
    implements by truncation whatever the rounding mode asked (triton 3.9)."""
    if dtype == tl.float32:
        return v
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # half way: to the even bf16
        return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))  # NaN stays NaN
    return v.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _dynamic_max_pool_fwd_kernel(
    x_ptr, bias_ptr, out_ptr, arg_ptr,
    C, T, P, max_window,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0)  # one (batch, channel) row
    chunk = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    chunk_ok = chunk < P
    wide = chunk.to(tl.int64)  # chunk * T passes 2^31 once P * T does
    start = ((wide * T) // P).to(tl.int32)
    stop = (((wide + 1) * T + P - 1) // P).to(tl.int32)
    x_row = x_ptr + row.to(tl.int64) * T
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + row % C).to(tl.float32)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_at = start
    for w0 in range(0, max_window, BLOCK_W):
        pos = start[:, None] + w0 + tl.arange(0, BLOCK_W)[None, :]
        ok = chunk_ok[:, None] & (pos < stop[:, None])
        v = tl.load(x_row + pos, mask=ok, other=0.0).to(tl.float32) + bias
        # Round x + bias to the output dtype as torch does, so ties (hence arg-max) match it.
        v = _round_to(v, out_ptr.dtype.element_ty)
        v = tl.where(ok, v, float("-inf"))
        m, at = tl.max(v, axis=1, return_indices=True, return_indices_tie_break_left=True)
        # A NaN is the max and stays it, the window's last NaN its arg-max (torch: `val > max || isnan(val)`).
        nan_at = tl.max(tl.where(v != v, tl.arange(0, BLOCK_W)[None, :], -1), axis=1)
        m = tl.where(nan_at >= 0, float("nan"), m)
        at = tl.where(nan_at >= 0, nan_at, at)
        better = (m > best) | (nan_at >= 0)  # strict: earlier blocks win ties, as torch's first arg-max
        best_at = tl.where(better, start + w0 + at, best_at)
        best = tl.where(better, m, best)
    if RELU:
        is_nan = best != best  # relu(NaN) is NaN, and its gradient passes (torch's threshold_backward)
        best_at = tl.where((best > 0) | is_nan, best_at, -1)
        best = tl.where(is_nan, best, tl.maximum(best, 0.0))
    out_off = row.to(tl.int64) * P + chunk
    tl.store(out_ptr + out_off, best.to(out_ptr.dtype.element_ty), mask=chunk_ok)
    tl.store(arg_ptr + out_off, best_at.to(tl.int32), mask=chunk_ok)


@triton.jit
def _dynamic_max_pool_bwd_kernel(
    grad_out_ptr, arg_ptr, grad_x_ptr,
    T, P, max_cover,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    # Chunks containing t: i in [floor(t*P/T), ceil((t+1)*P/T) - 1] (in int64: t * P passes 2^31 once P * T does).
    wide = t.to(tl.int64)
    first = ((wide * P) // T).to(tl.int32)
    last = (((wide + 1) * P + T - 1) // T - 1).to(tl.int32)
    acc = tl.zeros([BLOCK_T], tl.float32)
    row_off = row.to(tl.int64) * P
    for k in range(0, max_cover):
        i = first + k
        ok = t_ok & (i <= last)
        at = tl.load(arg_ptr + row_off + i, mask=ok, other=-1)
        g = tl.load(grad_out_ptr + row_off + i, mask=ok, other=0.0).to(tl.float32)
        acc += tl.where(at == t, g, 0.0)
    tl.store(grad_x_ptr + row.to(tl.int64) * T + t, acc.to(grad_x_ptr.dtype.element_ty), mask=t_ok)


def _max_window(T, P):
    """Longest chunk: at most ceil(T/P) + 1 steps, never more than T."""
    return min(T, (T + P - 1) // P + 1)


def dynamic_max_pool_forward(x, bias, num_chunks, relu):
    """Launch the forward: returns (pooled [B, C, p], int32 arg-max [B, C, p], -1 = no grad)."""
    x = x.contiguous()
    B, C, T = x.shape
    out_dtype = x.dtype if bias is None else torch.promote_types(x.dtype, bias.dtype)
    out = torch.empty(B, C, num_chunks, device=x.device, dtype=out_dtype)
    arg = torch.empty(B, C, num_chunks, device=x.device, dtype=torch.int32)
    if out.numel() == 0:
        return out, arg
    max_window = _max_window(T, num_chunks)
    BLOCK_P = min(triton.next_power_of_2(num_chunks), 32)
    BLOCK_W = min(triton.next_power_of_2(max_window), 64)
    grid = (B * C, triton.cdiv(num_chunks, BLOCK_P))
    _dynamic_max_pool_fwd_kernel[grid](
        x, x if bias is None else bias.contiguous(), out, arg,
        C, T, num_chunks, max_window,
        HAS_BIAS=bias is not None, RELU=relu, BLOCK_P=BLOCK_P, BLOCK_W=BLOCK_W,
    )
    return out, arg


def dynamic_max_pool_backward(grad_out, arg, T, x_dtype):
    """Launch the backward: grad_x [B, C, T] from grad_out and the saved arg-max."""
    grad_out = grad_out.contiguous()
    B, C, P = grad_out.shape
    grad_x = torch.empty(B, C, T, device=grad_out.device, dtype=x_dtype)
    if grad_x.numel() == 0:
        return grad_x
    BLOCK_T = min(triton.next_power_of_2(T), 1024)
    max_cover = (P + T - 1) // T + 1
    grid = (B * C, triton.cdiv(T, BLOCK_T))
    _dynamic_max_pool_bwd_kernel[grid](grad_out, arg, grad_x, T, P, max_cover, BLOCK_T=BLOCK_T)
    return grad_x


class DynamicMaxPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, num_chunks, relu):
        out, arg = dynamic_max_pool_forward(x, bias, num_chunks, relu)
        ctx.save_for_backward(arg)
        ctx.T, ctx.x_dtype = x.shape[2], x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (arg,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = dynamic_max_pool_backward(grad_out, arg, ctx.T, ctx.x_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            # d bias = sum of grad_x over (B, T) = sum of the chunk gradients that passed ReLU.
            flowing = grad_out.float() * (arg >= 0)
            grad_bias = flowing.sum(dim=(0, 2)).to(ctx.bias_dtype)
        return grad_x, grad_bias, None, None


def dynamic_max_pool_triton(x, bias, num_chunks, relu=True):
    return DynamicMaxPoolFunction.apply(x, bias, num_chunks, relu)
