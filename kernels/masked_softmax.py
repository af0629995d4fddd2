"""Masked softmax over a large label space for SGM, optionally fused with `probs @ table`.

Reference: xmtc.ops_reference.masked_softmax{,_stats,_weighted_sum}_reference.

Every kernel walks [BLOCK_B rows x BLOCK_L labels] tiles of one label segment; a grid of
(row blocks, segments) keeps all SMs busy even for 64 rows x 670K labels. The emitted labels
arrive as an index list [B, T] (T <= ~32) and are turned into a tile mask in registers: a tile
first checks whether any of its rows' emitted ids fall inside it (BLOCK_B*T compares) and only
then compares ids against columns, so the mask costs nothing in HBM traffic.

Pipeline: stats (row max, sum of exp per segment, combined on the host, or given by the caller
for a label-sharded softmax) -> forward (probabilities and/or e_bar partials per segment) ->
backward: a per-row coefficient c, then dlogits = direct + c * p and dtable = p^T @ grad_e_bar.
"""

import torch
import triton
import triton.language as tl

from kernels import dot_precision, interpreting, num_sms


@triton.jit
def _masked_logits_tile(
    logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, col_stop,
    BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, SKIP_CLEAN: tl.constexpr = True,
):
    """fp32 logits tile with emitted and out-of-range entries at -inf, and the emitted mask.

    SKIP_CLEAN: skip the comparisons for a tile that holds no emitted label. False where the tile feeds an fp32
    `tl.dot` (the forward with a table): there Triton (3.6 and 3.9, sm_90) moves the mask made under that
    data-dependent branch into the dot-operand layout and fails to lower it; bf16's cast stops it."""
    row_ok = rows < B
    ok = row_ok[:, None] & (cols < col_stop)[None, :]
    rows64 = rows.to(tl.int64)
    z = tl.load(logits_ptr + rows64[:, None] * stride_z + cols[None, :], mask=ok, other=float("-inf"))
    z = z.to(tl.float32)
    ts = tl.arange(0, BLOCK_T)
    em = tl.load(
        emitted_ptr + rows64[:, None] * stride_e + ts[None, :],
        mask=row_ok[:, None] & (ts < T)[None, :], other=-1,
    ) - label_offset
    col0 = tl.min(cols, axis=0)
    hit = cols[None, :] < 0  # all False, [1, BLOCK_L]; broadcast below
    hit = hit & row_ok[:, None]
    if SKIP_CLEAN:
        # Most tiles hold no emitted label: skip the BLOCK_B x BLOCK_L x T comparisons for them.
        if tl.sum(((em >= col0) & (em < col0 + BLOCK_L)).to(tl.int32)) > 0:
            for t in range(0, T):
                e = tl.load(emitted_ptr + rows64 * stride_e + t, mask=row_ok, other=-1) - label_offset
                hit = hit | (cols[None, :] == e[:, None])
    else:
        for t in range(0, T):
            e = tl.load(emitted_ptr + rows64 * stride_e + t, mask=row_ok, other=-1) - label_offset
            hit = hit | (cols[None, :] == e[:, None])
    z = tl.where(hit, float("-inf"), z)
    return z, hit, ok


@triton.jit
def _stats_kernel(
    logits_ptr, emitted_ptr, max_ptr, sum_ptr,
    B, L, T, stride_z, stride_e, label_offset, seg_len, num_segs,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    seg = tl.program_id(1)
    seg_start = seg * seg_len
    seg_stop = tl.minimum(seg_start + seg_len, L)
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_B], tl.float32)
    for l0 in range(seg_start, seg_stop, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        z, hit, ok = _masked_logits_tile(
            logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, seg_stop,
            BLOCK_L, BLOCK_T,
        )
        new_m = tl.maximum(m, tl.max(z, axis=1))
        shift = tl.where(new_m == float("-inf"), 0.0, new_m)  # -inf - -inf would be NaN
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        m = new_m
    out = rows.to(tl.int64) * num_segs + seg
    tl.store(max_ptr + out, m, mask=rows < B)
    tl.store(sum_ptr + out, s, mask=rows < B)


@triton.jit
def _forward_kernel(
    logits_ptr, emitted_ptr, shift_ptr, sum_ptr, probs_ptr, table_ptr, ebar_ptr,
    B, L, T, D, stride_z, stride_e, stride_t, label_offset, seg_len,
    LOG: tl.constexpr, WRITE_P: tl.constexpr, HAS_TABLE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    seg = tl.program_id(1)
    pid_d = tl.program_id(2)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    seg_start = seg * seg_len
    seg_stop = tl.minimum(seg_start + seg_len, L)
    shift = tl.load(shift_ptr + rows, mask=rows < B, other=0.0)
    total = tl.load(sum_ptr + rows, mask=rows < B, other=1.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for l0 in range(seg_start, seg_stop, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        z, hit, ok = _masked_logits_tile(
            logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, seg_stop,
            BLOCK_L, BLOCK_T, not HAS_TABLE,
        )
        p = tl.exp(z - shift[:, None]) / total[:, None]
        if WRITE_P:
            if pid_d == 0:  # every D block computes p; the first writes it
                if LOG:
                    out = z - shift[:, None] - tl.log(total)[:, None]
                else:
                    out = p
                dst = probs_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :]
                tl.store(dst, out.to(probs_ptr.dtype.element_ty), mask=ok)
        if HAS_TABLE:
            tab = tl.load(
                table_ptr + cols.to(tl.int64)[:, None] * stride_t + ds[None, :],
                mask=(cols < seg_stop)[:, None] & (ds < D)[None, :], other=0.0,
            )
            acc = tl.dot(p.to(tab.dtype), tab, acc, input_precision=PRECISION)
    if HAS_TABLE:
        dst = ebar_ptr + (seg * B + rows).to(tl.int64)[:, None] * D + ds[None, :]
        tl.store(dst, acc, mask=(rows < B)[:, None] & (ds < D)[None, :])


@triton.jit
def _grad_row_sum_kernel(
    logits_ptr, emitted_ptr, shift_ptr, sum_ptr, grad_ptr, out_ptr,
    B, L, T, stride_z, stride_e, label_offset, seg_len, num_segs,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Per-segment sum over labels of grad_probs * probs (the softmax backward's row term)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    seg = tl.program_id(1)
    seg_start = seg * seg_len
    seg_stop = tl.minimum(seg_start + seg_len, L)
    shift = tl.load(shift_ptr + rows, mask=rows < B, other=0.0)
    total = tl.load(sum_ptr + rows, mask=rows < B, other=1.0)
    acc = tl.zeros([BLOCK_B], tl.float32)
    for l0 in range(seg_start, seg_stop, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        z, hit, ok = _masked_logits_tile(
            logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, seg_stop,
            BLOCK_L, BLOCK_T,
        )
        p = tl.exp(z - shift[:, None]) / total[:, None]
        g = tl.load(grad_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :], mask=ok, other=0.0)
        acc += tl.sum(tl.where(ok & ~hit, g.to(tl.float32) * p, 0.0), axis=1)
    tl.store(out_ptr + rows.to(tl.int64) * num_segs + seg, acc, mask=rows < B)


@triton.jit
def _dlogits_kernel(
    logits_ptr, emitted_ptr, shift_ptr, sum_ptr, c_ptr, grad_p_ptr, grad_e_ptr, table_ptr, dz_ptr,
    B, L, T, D, stride_z, stride_e, stride_t, label_offset, seg_len,
    LOG: tl.constexpr, HAS_GP: tl.constexpr, HAS_TABLE: tl.constexpr, ADD_C: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dz = direct + c * p, zero at emitted labels; direct = p * (u [+ gp]) or gp + p * u (log)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rows64 = rows.to(tl.int64)
    seg = tl.program_id(1)
    seg_start = seg * seg_len
    seg_stop = tl.minimum(seg_start + seg_len, L)
    shift = tl.load(shift_ptr + rows, mask=rows < B, other=0.0)
    total = tl.load(sum_ptr + rows, mask=rows < B, other=1.0)
    c = tl.load(c_ptr + rows, mask=rows < B, other=0.0)
    for l0 in range(seg_start, seg_stop, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        z, hit, ok = _masked_logits_tile(
            logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, seg_stop,
            BLOCK_L, BLOCK_T,
        )
        p = tl.exp(z - shift[:, None]) / total[:, None]
        direct = tl.zeros([BLOCK_B, BLOCK_L], tl.float32)
        if HAS_TABLE:
            # u[b, l] = grad_e_bar[b] . table[l]
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                ge = tl.load(grad_e_ptr + rows64[:, None] * D + ds[None, :],
                             mask=(rows < B)[:, None] & (ds < D)[None, :], other=0.0)
                tab = tl.load(table_ptr + cols.to(tl.int64)[:, None] * stride_t + ds[None, :],
                              mask=(cols < seg_stop)[:, None] & (ds < D)[None, :], other=0.0)
                direct = tl.dot(ge.to(tab.dtype), tl.trans(tab), direct, input_precision=PRECISION)
            direct = p * direct
        if HAS_GP:
            gp = tl.load(grad_p_ptr + rows64[:, None] * stride_z + cols[None, :], mask=ok, other=0.0)
            if LOG:
                direct += gp.to(tl.float32)
            else:
                direct += p * gp.to(tl.float32)
        if ADD_C:
            direct += c[:, None] * p
        dz = tl.where(hit, 0.0, direct)
        tl.store(dz_ptr + rows64[:, None] * stride_z + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dtable_kernel(
    logits_ptr, emitted_ptr, shift_ptr, sum_ptr, grad_e_ptr, dtable_ptr,
    B, L, T, D, stride_z, stride_e, stride_t, label_offset,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dtable[l, d] = sum_b p[b, l] * grad_e_bar[b, d], one [BLOCK_L, BLOCK_D] tile per program."""
    cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        z, hit, ok = _masked_logits_tile(
            logits_ptr, emitted_ptr, rows, cols, B, L, T, stride_z, stride_e, label_offset, L,
            BLOCK_L, BLOCK_T,
        )
        shift = tl.load(shift_ptr + rows, mask=rows < B, other=0.0)
        total = tl.load(sum_ptr + rows, mask=rows < B, other=1.0)
        p = tl.exp(z - shift[:, None]) / total[:, None]
        ge = tl.load(grad_e_ptr + rows.to(tl.int64)[:, None] * D + ds[None, :],
                     mask=(rows < B)[:, None] & (ds < D)[None, :], other=0.0)
        acc = tl.dot(tl.trans(p).to(ge.dtype), ge, acc, input_precision=PRECISION)
    dst = dtable_ptr + cols.to(tl.int64)[:, None] * stride_t + ds[None, :]
    tl.store(dst, acc.to(dtable_ptr.dtype.element_ty), mask=(cols < L)[:, None] & (ds < D)[None, :])


# ------------------------------------------------------------------------------------ launchers


class _Plan:
    """Tile sizes and label segments for one call (the interpreter gets small tiles)."""

    def __init__(self, logits, emitted, table):
        B, L = logits.shape
        self.T = emitted.shape[1]
        self.BLOCK_T = max(triton.next_power_of_2(max(self.T, 1)), 2)
        small = interpreting()
        self.BLOCK_D = 16
        if table is None:  # bandwidth-bound: long rows of labels, few rows per tile
            self.BLOCK_B = 2 if small else 4
            self.BLOCK_L = 32 if small else 1024
        else:  # tl.dot needs every tile dim >= 16
            self.BLOCK_B = 16 if small else min(64, max(16, triton.next_power_of_2(B)))
            self.BLOCK_L = 16 if small else 64
            if not small:
                self.BLOCK_D = min(128, max(16, triton.next_power_of_2(table.shape[1])))
        self.row_blocks = triton.cdiv(B, self.BLOCK_B)
        # Enough segments for ~4 programs per SM, each a whole number of label tiles.
        want = max(1, (4 * num_sms(logits.device)) // max(1, self.row_blocks))
        tiles = max(1, triton.cdiv(L, self.BLOCK_L))
        self.seg_len = triton.cdiv(tiles, min(want, tiles)) * self.BLOCK_L
        self.num_segs = triton.cdiv(L, self.seg_len)
        self.precision = dot_precision((table if table is not None else logits).dtype)


def _finite_or_zero(row_max):
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def _local_stats(logits, emitted, label_offset, plan):
    """(row_max, row_sumexp) fp32 over this tensor's labels: per-segment partials, then combined."""
    B, L = logits.shape
    part_max = torch.empty(B, plan.num_segs, device=logits.device, dtype=torch.float32)
    part_sum = torch.empty_like(part_max)
    _stats_kernel[(plan.row_blocks, plan.num_segs)](
        logits, emitted, part_max, part_sum,
        B, L, plan.T, logits.stride(0), emitted.stride(0), label_offset, plan.seg_len, plan.num_segs,
        BLOCK_B=plan.BLOCK_B, BLOCK_L=plan.BLOCK_L, BLOCK_T=plan.BLOCK_T,
    )
    row_max = part_max.amax(dim=1)
    shift = _finite_or_zero(row_max)
    return row_max, (part_sum * torch.exp(part_max - shift[:, None])).sum(dim=1)


def _launch_dlogits(ctx_tensors, c, grad_p, grad_e, table, log, add_c, plan, label_offset, out_dtype):
    logits, emitted, shift, total = ctx_tensors
    B, L = logits.shape
    dz = torch.empty(B, L, device=logits.device, dtype=out_dtype)
    D = 0 if table is None else table.shape[1]
    _dlogits_kernel[(plan.row_blocks, plan.num_segs)](
        logits, emitted, shift, total, c,
        logits if grad_p is None else grad_p, logits if grad_e is None else grad_e,
        logits if table is None else table, dz,
        B, L, plan.T, D, logits.stride(0), emitted.stride(0), 0 if table is None else table.stride(0),
        label_offset, plan.seg_len,
        LOG=log, HAS_GP=grad_p is not None, HAS_TABLE=grad_e is not None, ADD_C=add_c,
        PRECISION=plan.precision,
        BLOCK_B=plan.BLOCK_B, BLOCK_L=plan.BLOCK_L, BLOCK_T=plan.BLOCK_T, BLOCK_D=plan.BLOCK_D,
    )
    return dz


class MaskedSoftmaxFunction(torch.autograd.Function):
    """(probs or log-probs, e_bar = probs @ table); the table, the stats and the probs are optional."""

    @staticmethod
    def forward(ctx, logits, emitted, table, row_max, row_sumexp, label_offset, log, return_probs):
        logits, emitted = logits.contiguous(), emitted.contiguous()
        table = None if table is None else table.contiguous()
        B, L = logits.shape
        plan = _Plan(logits, emitted, table)
        sharded = row_sumexp is not None
        if sharded:
            shift, total = _finite_or_zero(row_max.float()), row_sumexp.float()
        else:
            row_max, total = _local_stats(logits, emitted, label_offset, plan)
            shift = _finite_or_zero(row_max)
        # Where the given row_sumexp has a gradient; an empty sum is replaced by 1, a NaN one kept (NaN out).
        positive = total != 0
        total = torch.where(positive, total, torch.ones_like(total)).contiguous()
        shift = shift.contiguous()
        probs = torch.empty_like(logits) if return_probs else None
        D = 0 if table is None else table.shape[1]
        d_blocks = 1 if table is None else triton.cdiv(D, plan.BLOCK_D)
        parts = None
        if table is not None:
            parts = torch.empty(plan.num_segs, B, D, device=logits.device, dtype=torch.float32)
        _forward_kernel[(plan.row_blocks, plan.num_segs, d_blocks)](
            logits, emitted, shift, total,
            logits if probs is None else probs, logits if table is None else table,
            logits if parts is None else parts,
            B, L, plan.T, D, logits.stride(0), emitted.stride(0), 0 if table is None else table.stride(0),
            label_offset, plan.seg_len,
            LOG=log, WRITE_P=return_probs, HAS_TABLE=table is not None, PRECISION=plan.precision,
            BLOCK_B=plan.BLOCK_B, BLOCK_L=plan.BLOCK_L, BLOCK_T=plan.BLOCK_T, BLOCK_D=plan.BLOCK_D,
        )
        e_bar32 = None if parts is None else parts.sum(dim=0)
        ctx.save_for_backward(logits, emitted, table, shift, total, e_bar32, positive)
        ctx.plan, ctx.label_offset, ctx.log, ctx.sharded = plan, label_offset, log, sharded
        ctx.sumexp_dtype = None if row_sumexp is None else row_sumexp.dtype
        return probs, None if e_bar32 is None else e_bar32.to(table.dtype)

    @staticmethod
    def backward(ctx, grad_p, grad_e):
        logits, emitted, table, shift, total, e_bar32, positive = ctx.saved_tensors
        plan, offset = ctx.plan, ctx.label_offset
        B, L = logits.shape
        grad_p = None if grad_p is None else grad_p.contiguous()
        grad_e = None if grad_e is None or table is None else grad_e.contiguous()
        # c = -(sum_l gp_l * p_l  or  sum_l gp_l  for log) - grad_e_bar . e_bar: the softmax row term.
        c = torch.zeros(B, device=logits.device, dtype=torch.float32)
        if grad_p is not None and ctx.log:
            c -= grad_p.float().sum(dim=1)
        elif grad_p is not None:
            parts = torch.empty(B, plan.num_segs, device=logits.device, dtype=torch.float32)
            _grad_row_sum_kernel[(plan.row_blocks, plan.num_segs)](
                logits, emitted, shift, total, grad_p, parts,
                B, L, plan.T, logits.stride(0), emitted.stride(0), offset, plan.seg_len, plan.num_segs,
                BLOCK_B=plan.BLOCK_B, BLOCK_L=plan.BLOCK_L, BLOCK_T=plan.BLOCK_T,
            )
            c -= parts.sum(dim=1)
        if grad_e is not None:
            c -= (grad_e.float() * e_bar32).sum(dim=1)
        grad_logits = grad_table = grad_sumexp = None
        if ctx.needs_input_grad[0]:
            grad_logits = _launch_dlogits(
                (logits, emitted, shift, total), c, grad_p, grad_e, table, ctx.log,
                not ctx.sharded, plan, offset, logits.dtype,
            )
        if table is not None and grad_e is not None and ctx.needs_input_grad[2]:
            D = table.shape[1]
            grad_table = torch.empty_like(table)
            grid = (triton.cdiv(L, plan.BLOCK_L), triton.cdiv(D, plan.BLOCK_D))
            _dtable_kernel[grid](
                logits, emitted, shift, total, grad_e, grad_table,
                B, L, plan.T, D, logits.stride(0), emitted.stride(0), table.stride(0), offset,
                PRECISION=plan.precision,
                BLOCK_B=plan.BLOCK_B, BLOCK_L=plan.BLOCK_L, BLOCK_T=plan.BLOCK_T, BLOCK_D=plan.BLOCK_D,
            )
        if ctx.sharded and ctx.needs_input_grad[4]:
            # total = row_sumexp where it is != 0 (else 1, constant): dL/dS = c / S there, 0 elsewhere.
            grad_sumexp = torch.where(positive, c / total, torch.zeros_like(c)).to(ctx.sumexp_dtype)
        return grad_logits, None, grad_table, None, grad_sumexp, None, None, None


class MaskedSoftmaxStatsFunction(torch.autograd.Function):
    """(row_max, row_sumexp) of one label shard; row_sumexp's gradient is g * exp(z - row_max)."""

    @staticmethod
    def forward(ctx, logits, emitted, label_offset):
        logits, emitted = logits.contiguous(), emitted.contiguous()
        plan = _Plan(logits, emitted, None)
        row_max, row_sumexp = _local_stats(logits, emitted, label_offset, plan)
        ctx.save_for_backward(logits, emitted, _finite_or_zero(row_max))
        ctx.plan, ctx.label_offset = plan, label_offset
        ctx.mark_non_differentiable(row_max)
        return row_max, row_sumexp

    @staticmethod
    def backward(ctx, grad_max, grad_sumexp):
        logits, emitted, shift = ctx.saved_tensors
        if grad_sumexp is None or not ctx.needs_input_grad[0]:
            return None, None, None
        ones = torch.ones_like(shift)
        grad_logits = _launch_dlogits(
            (logits, emitted, shift, ones), grad_sumexp.float().contiguous(), None, None, None, False,
            True, ctx.plan, ctx.label_offset, logits.dtype,
        )
        return grad_logits, None, None


def masked_softmax_triton(logits, emitted, log=False):
    return MaskedSoftmaxFunction.apply(logits, emitted, None, None, None, 0, log, True)[0]


def masked_softmax_stats_triton(logits, emitted, label_offset=0):
    return MaskedSoftmaxStatsFunction.apply(logits, emitted, label_offset)


def masked_softmax_weighted_sum_triton(
    logits, emitted, table, log=False, row_max=None, row_sumexp=None, label_offset=0, return_probs=True
):
    return MaskedSoftmaxFunction.apply(
        logits, emitted, table, row_max, row_sumexp, label_offset, log, return_probs
    )
