"""masked_softmax and friends: the reference pinned by hand and to torch's softmax, the Triton
kernels held to the reference, and a label-sharded softmax held to the unsharded one."""

import math

import pytest
import torch
import torch.nn.functional as F

from xmtc.ops import masked_softmax, masked_softmax_stats, masked_softmax_weighted_sum
from xmtc.ops_reference import (
    emitted_mask,
    masked_softmax_reference,
    masked_softmax_stats_reference,
    masked_softmax_weighted_sum_reference,
)

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
NEG_INF = float("-inf")


def _emitted(B, T, L, seed, device="cpu"):
    """Random emitted ids with -1 padding, a duplicate and an out-of-range id."""
    g = torch.Generator().manual_seed(seed)
    emitted = torch.randint(0, L, (B, T), generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    emitted[torch.arange(T)[None, :] >= lengths[:, None]] = -1
    if T >= 2:
        emitted[0, :2] = emitted[0, 0].clamp_min(0)  # duplicate
    if B >= 2:
        emitted[1, -1] = L + 3  # outside [0, L): ignored
    return emitted.to(device)


# --------------------------------------------------------------------------- reference semantics


def test_reference_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    emitted = torch.tensor([[3, -1], [1, 3], [0, 1]])
    probs = masked_softmax_reference(logits, emitted)
    z = [math.exp(1), math.exp(2), math.exp(3)]
    assert probs[0].tolist() == pytest.approx([z[0] / sum(z), z[1] / sum(z), z[2] / sum(z), 0.0])
    assert probs[1].tolist() == pytest.approx([1 / (1 + math.e), 0.0, math.e / (1 + math.e), 0.0])
    assert probs[2].tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5])
    log_probs = masked_softmax_reference(logits, emitted, log=True)
    assert log_probs[0, 3] == NEG_INF
    assert log_probs[1, 0].item() == pytest.approx(-math.log(1 + math.e))


def test_reference_edge_rows():
    logits = torch.tensor([[0.5, -2.0, 7.0], [1.0, 2.0, 3.0], [NEG_INF, NEG_INF, 2.0], [NEG_INF, NEG_INF, 0.0]])
    emitted = torch.tensor([[0, 2], [0, 1], [-1, -1], [2, -1]])
    probs = masked_softmax_reference(logits, emitted)
    log_probs = masked_softmax_reference(logits, emitted, log=True)
    assert probs[0].tolist() == [0.0, 1.0, 0.0]  # one label left: probability exactly 1
    assert probs[1].tolist() == [0.0, 0.0, 1.0]
    assert probs[2].tolist() == [0.0, 0.0, 1.0]  # -inf logits are legal while a finite one remains
    assert probs[3].tolist() == [0.0, 0.0, 0.0]  # nothing finite left: zeros, not NaN
    assert log_probs[3].tolist() == [NEG_INF] * 3
    assert not torch.isnan(log_probs).any()


@pytest.mark.parametrize("log", [False, True])
def test_reference_gradient_is_torch_softmax_on_masked_logits(log):
    torch.manual_seed(0)
    logits = torch.randn(4, 9, requires_grad=True)
    emitted = _emitted(4, 3, 9, seed=0)
    grad_out = torch.randn(4, 9)
    (got,) = torch.autograd.grad(masked_softmax_reference(logits, emitted, log), logits, grad_out)
    masked = logits.masked_fill(emitted_mask(emitted, 9), NEG_INF)
    want_out = F.log_softmax(masked, dim=1) if log else F.softmax(masked, dim=1)
    (want,) = torch.autograd.grad(want_out, logits, grad_out)
    torch.testing.assert_close(got, want)


def test_reference_stats_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    emitted = torch.tensor([[11, -1], [10, 11]])  # shard holds global labels 10..12
    row_max, row_sumexp = masked_softmax_stats_reference(logits, emitted, label_offset=10)
    assert row_max.tolist() == [2.0, 0.0]
    assert row_sumexp.tolist() == pytest.approx([math.exp(-1) + 1, 1.0])


# ------------------------------------------------------------------------ Triton vs reference


SHAPES = [(1, 1, 1), (3, 70, 4), (5, 130, 7), (2, 33, 1)]  # (B, L, T): L spans several segments


def _grads(outputs, inputs, grad_outputs):
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None]
    return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-2, 2e-2)])
def test_triton_masked_softmax_matches_reference(triton_backend, device, shape, log, dtype, atol, rtol):
    B, L, T = shape
    torch.manual_seed(L + T)
    logits = torch.randn(B, L, device=device).to(dtype).requires_grad_()
    emitted = _emitted(B, T, L, seed=L, device=device)
    out = masked_softmax(logits, emitted, log=log)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, logits, grad_out)
    want = masked_softmax_reference(logits, emitted, log=log)
    (want_grad,) = torch.autograd.grad(want, logits, grad_out)
    assert out.dtype == grad.dtype == dtype
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad, want_grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("log", [False, True])
def test_triton_masked_softmax_edge_rows(triton_backend, device, log):
    logits = torch.tensor(
        [[0.5, -2.0, 7.0, 1.0], [1.0, 2.0, 3.0, 4.0], [NEG_INF, NEG_INF, 2.0, NEG_INF], [NEG_INF, NEG_INF, 0.0, 1.0]],
        device=device, requires_grad=True,
    )
    emitted = torch.tensor([[0, 2, 3], [0, 1, 2], [-1, -1, -1], [2, 3, -1]], device=device)
    out = masked_softmax(logits, emitted, log=log)
    assert not torch.isnan(out).any()
    probs = out.exp() if log else out
    assert probs[:3, :].sum(dim=1).tolist() == [1.0, 1.0, 1.0]
    assert probs[3].tolist() == [0.0, 0.0, 0.0, 0.0]
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, logits, grad_out)
    (want,) = torch.autograd.grad(masked_softmax_reference(logits, emitted, log), logits, grad_out)
    assert not torch.isnan(grad).any()
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("log", [False, True])
def test_a_nan_logit_makes_its_row_nan(request, device, backend, log):
    # As F.softmax: a NaN logit (a diverged model) gives a NaN row. Its NaN sum of exp was taken for an empty
    # one and replaced by 1, so the row's other labels came out finite, unnormalised (exp(z), up to e^5 here).
    request.getfixturevalue(f"{backend}_backend")
    logits = 5 * torch.rand(2, 40, device=device)
    logits[0, 3] = float("nan")
    emitted = torch.tensor([[5], [-1]], device=device)
    out = masked_softmax(logits, emitted, log=log)
    assert torch.isnan(out[0, torch.arange(40, device=device) != 5]).all()
    torch.testing.assert_close(out[1], masked_softmax_reference(logits[1:], emitted[1:], log)[0])
    assert torch.isfinite(out[1]).all()
    _, e_bar = masked_softmax_weighted_sum(logits, emitted, torch.randn(40, 16, device=device), log=log)
    assert torch.isnan(e_bar[0]).all() and torch.isfinite(e_bar[1]).all()


@pytest.mark.parametrize("label_offset", [0, 40])
def test_triton_stats_match_reference(triton_backend, device, label_offset):
    torch.manual_seed(3)
    logits = torch.randn(4, 90, device=device, requires_grad=True)
    emitted = _emitted(4, 6, 90, seed=3, device=device) + label_offset
    emitted[2] = torch.arange(label_offset, label_offset + 6)
    row_max, row_sumexp = masked_softmax_stats(logits, emitted, label_offset=label_offset)
    want_max, want_sumexp = masked_softmax_stats_reference(logits, emitted, label_offset=label_offset)
    assert not row_max.requires_grad
    torch.testing.assert_close(row_max, want_max)
    torch.testing.assert_close(row_sumexp, want_sumexp, atol=1e-6, rtol=1e-5)
    grad_out = torch.randn(4, device=device)
    (grad,) = torch.autograd.grad(row_sumexp, logits, grad_out)
    (want,) = torch.autograd.grad(want_sumexp, logits, grad_out)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("B, L, T, D", [(3, 70, 4, 20), (17, 45, 3, 40), (1, 16, 2, 1)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("return_probs", [True, False])
def test_triton_weighted_sum_matches_reference(triton_backend, device, B, L, T, D, log, return_probs):
    torch.manual_seed(B * L + D)
    logits = torch.randn(B, L, device=device, requires_grad=True)
    table = torch.randn(L, D, device=device, requires_grad=True)
    emitted = _emitted(B, T, L, seed=B, device=device)
    probs, e_bar = masked_softmax_weighted_sum(logits, emitted, table, log=log, return_probs=return_probs)
    assert (probs is None) == (not return_probs)
    want_probs, want_e_bar = masked_softmax_weighted_sum_reference(logits, emitted, table, log=log)
    grad_e = torch.randn_like(e_bar)
    grad_p = torch.randn_like(want_probs)
    got = _grads([e_bar, probs], [logits, table], [grad_e, grad_p])
    want = _grads([want_e_bar, want_probs if return_probs else None], [logits, table], [grad_e, grad_p])
    torch.testing.assert_close(e_bar, want_e_bar, atol=1e-5, rtol=1e-5)
    if return_probs:
        torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- label-sharded vs unsharded


def _sharded_weighted_sum(logits, emitted, table, bounds, log):
    """What two label-sharded ranks compute, with the all-reduces done as plain tensor ops."""
    stats = [masked_softmax_stats(logits[:, lo:hi], emitted, label_offset=lo) for lo, hi in bounds]
    global_max = torch.stack([m for m, _ in stats]).amax(dim=0)
    shift = torch.where(torch.isfinite(global_max), global_max, torch.zeros_like(global_max))
    global_sumexp = sum(s * torch.exp(m - shift) for m, s in stats)
    parts = [
        masked_softmax_weighted_sum(
            logits[:, lo:hi], emitted, table[lo:hi], log=log,
            row_max=global_max, row_sumexp=global_sumexp, label_offset=lo,
        )
        for lo, hi in bounds
    ]
    return torch.cat([p for p, _ in parts], dim=1), sum(e for _, e in parts)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("log", [False, True])
def test_sharded_weighted_sum_equals_unsharded(request, device, backend, log):
    request.getfixturevalue(f"{backend}_backend")
    torch.manual_seed(7)
    B, L, D = 4, 60, 24
    logits = torch.randn(B, L, device=device, requires_grad=True)
    table = torch.randn(L, D, device=device, requires_grad=True)
    emitted = _emitted(B, 5, L, seed=7, device=device)
    emitted[3] = torch.tensor([0, 1, 2, 3, 4])  # row 3: every label of shard 0 is masked
    probs, e_bar = _sharded_weighted_sum(logits, emitted, table, [(0, 5), (5, 60)], log)
    want_probs, want_e_bar = masked_softmax_weighted_sum_reference(logits, emitted, table, log=log)
    torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(e_bar, want_e_bar, atol=1e-5, rtol=1e-5)
    grad_p, grad_e = torch.randn_like(want_probs), torch.randn_like(want_e_bar)
    got = _grads([probs, e_bar], [logits, table], [grad_p, grad_e])
    want = _grads([want_probs, want_e_bar], [logits, table], [grad_p, grad_e])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_row_sumexp_gradient_is_zero_where_it_is_zero(request, device, backend):
    # Row 1 has nothing finite: its given row_sumexp is 0, replaced by 1 inside, so no gradient reaches it.
    request.getfixturevalue(f"{backend}_backend")
    torch.manual_seed(3)
    logits = torch.randn(2, 20, device=device)
    logits[1] = float("-inf")
    row_max = torch.stack([logits[0].max(), torch.tensor(float("-inf"), device=device)])
    row_sumexp = torch.stack([torch.exp(logits[0] - row_max[0]).sum(), torch.zeros((), device=device)]).requires_grad_()
    emitted = torch.full((2, 1), -1, device=device, dtype=torch.long)
    probs, e_bar = masked_softmax_weighted_sum(logits, emitted, torch.randn(20, 4, device=device), log=True,
                                               row_max=row_max, row_sumexp=row_sumexp)
    (grad,) = torch.autograd.grad([probs, e_bar], [row_sumexp], [torch.ones_like(probs), torch.zeros_like(e_bar)])
    assert grad[1].item() == 0.0
    assert grad[0].item() == pytest.approx(-20 / row_sumexp[0].item(), rel=1e-5)  # d/dS of sum_l (z_l - m - log S)


# --------------------------------------------------------------------------------- GPU only


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [pytest.param(torch.float32, 1e-5, 1e-4, marks=GPU), pytest.param(torch.bfloat16, 2e-2, 2e-2, marks=GPU)],
)
@pytest.mark.parametrize("B, L, T, D", [(64, 200_003, 30, 256), (8, 670_091, 17, 300)])
def test_triton_large_matches_reference_on_gpu(triton_backend, B, L, T, D, dtype, atol, rtol):
    torch.manual_seed(11)
    logits = (3 * torch.randn(B, L, device="cuda")).to(dtype).requires_grad_()
    table = (torch.randn(L, D, device="cuda") / D**0.5).to(dtype).requires_grad_()
    emitted = _emitted(B, T, L, seed=11, device="cuda")
    for log in (False, True):
        probs, e_bar = masked_softmax_weighted_sum(logits, emitted, table, log=log)
        want_probs, want_e_bar = masked_softmax_weighted_sum_reference(logits, emitted, table, log=log)
        torch.testing.assert_close(e_bar.float(), want_e_bar.float(), atol=atol, rtol=rtol)
        finite = torch.isfinite(want_probs)
        assert torch.equal(torch.isfinite(probs), finite)
        torch.testing.assert_close(probs[finite].float(), want_probs[finite].float(), atol=atol, rtol=rtol)
        grad_p, grad_e = torch.randn_like(want_probs), torch.randn_like(want_e_bar)
        got = _grads([probs, e_bar], [logits, table], [grad_p, grad_e])
        want = _grads([want_probs, want_e_bar], [logits, table], [grad_p, grad_e])
        for g, w in zip(got, want):
            torch.testing.assert_close(g.float(), w.float(), atol=atol, rtol=rtol)


def test_rejects_bad_inputs(torch_backend):
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="emitted must be a LongTensor"):
        masked_softmax(logits, torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="table must be"):
        masked_softmax_weighted_sum(logits, torch.zeros(2, 1, dtype=torch.long), torch.randn(4, 3))
    with pytest.raises(ValueError, match="logits are torch.float32 but table is torch.float64"):
        masked_softmax_weighted_sum(logits, torch.zeros(2, 1, dtype=torch.long), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="both row_max and row_sumexp"):
        masked_softmax_weighted_sum(
            logits, torch.zeros(2, 1, dtype=torch.long), torch.randn(5, 3), row_max=torch.zeros(2)
        )


def test_an_empty_batch_gives_empty_outputs(triton_backend, device):
    # The Triton launcher divided by the number of row blocks, zero for an empty batch.
    logits = torch.randn(0, 37, device=device, requires_grad=True)
    table = torch.randn(37, 20, device=device, requires_grad=True)
    emitted = torch.zeros(0, 3, dtype=torch.long, device=device)
    probs, e_bar = masked_softmax_weighted_sum(logits, emitted, table)
    assert probs.shape == (0, 37) and e_bar.shape == (0, 20)
    (e_bar.sum() + probs.sum()).backward()
    assert logits.grad.shape == (0, 37) and torch.count_nonzero(table.grad) == 0
    assert masked_softmax(logits.detach(), emitted).shape == (0, 37)
