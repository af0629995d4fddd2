"""dynamic_max_pool: the reference pinned by hand, the Triton kernel held to the reference."""

import math

import pytest
import torch

from xmtc.ops import dynamic_max_pool
from xmtc.ops_reference import dynamic_max_pool_reference

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_reference_chunks_are_floor_ceil_windows():
    torch.manual_seed(0)
    B, C, T, p = 2, 3, 7, 3
    x, bias = torch.randn(B, C, T), torch.randn(C)
    got = dynamic_max_pool_reference(x, bias, p, relu=True)
    for i in range(p):
        lo, hi = math.floor(i * T / p), math.ceil((i + 1) * T / p)
        want = (x[:, :, lo:hi] + bias[None, :, None]).amax(dim=2).clamp_min(0)
        torch.testing.assert_close(got[:, :, i], want)


def test_reference_repeats_positions_when_time_is_shorter_than_chunks():
    x = torch.tensor([[[3.0, -1.0]]])
    # T=2, p=5: windows [0,1) [0,2) [0,2) [1,2) [1,2)
    got = dynamic_max_pool_reference(x, None, 5, relu=True)
    assert got.flatten().tolist() == [3.0, 3.0, 3.0, 0.0, 0.0]


SHAPES = [
    (2, 3, 7, 3),  # T not divisible by p: windows overlap by one step
    (1, 2, 2, 5),  # T < p: one step in several chunks
    (2, 2, 10, 1),  # one chunk: global max pool
    (3, 4, 129, 8),  # odd T: windows of 17 and 18 steps
    (1, 1, 1, 1),
    (2, 3, 300, 2),  # window 150: several BLOCK_W=64 iterations
    (2, 2, 40, 40),  # T == p: identity on relu(x + b)
    (1, 2, 50, 37),  # p > BLOCK_P: several chunk blocks
]


def _check_against_reference(x, bias, p, relu, atol, rtol):
    x = x.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    inputs = [x] if bias is None else [x, bias]
    out = dynamic_max_pool(x, bias, p, relu=relu)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    want = dynamic_max_pool_reference(x, bias, p, relu=relu)
    want_grads = torch.autograd.grad(want, inputs, grad_out)
    assert out.dtype == want.dtype and out.shape == want.shape
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_triton_matches_reference(triton_backend, device, shape, relu, with_bias):
    torch.manual_seed(hash((shape, relu, with_bias)) % 2**31)
    B, C, T, p = shape
    x = torch.randn(B, C, T, device=device)
    bias = torch.randn(C, device=device) if with_bias else None
    _check_against_reference(x, bias, p, relu, atol=1e-6, rtol=1e-6)


def test_triton_ties_and_all_negative_windows(triton_backend, device):
    # Integer values make ties; the first arg-max must receive the gradient, as in torch.
    torch.manual_seed(1)
    x = torch.randint(-3, 3, (3, 4, 23), device=device).float()
    x[0, 0] = -5.0  # all-negative row: ReLU clips every chunk, no gradient at all
    bias = torch.tensor([0.0, 1.0, -1.0, 0.5], device=device)
    # A gradient sent to the wrong tie would be off by O(1); 1e-6 only absorbs summation order.
    _check_against_reference(x, bias, 6, relu=True, atol=1e-6, rtol=1e-6)
    _check_against_reference(x, bias, 6, relu=False, atol=1e-6, rtol=1e-6)


def test_triton_bfloat16_matches_reference(triton_backend, device):
    # Multiples of 1/8 keep x + bias exact in bf16, so no rounding tie can move an arg-max.
    torch.manual_seed(3)
    x = (torch.randint(-64, 64, (2, 3, 37), device=device) / 8).bfloat16()
    bias = (torch.randint(-8, 8, (3,), device=device) / 4).bfloat16()
    _check_against_reference(x, bias, 5, relu=True, atol=0, rtol=0)


@pytest.mark.parametrize("relu", [True, False])
def test_triton_propagates_nan_as_torch(triton_backend, device, relu):
    # A NaN feature (a diverged model) must reach the output, as in torch; the kernel's max skipped it and
    # pooled the other steps. torch's arg-max of a window holding NaN is its last NaN (the gradient goes there).
    nan = float("nan")
    x = torch.tensor([[[nan, 1.0, nan, 0.5, 2.0, -1.0, 3.0], [-2.0, nan, -3.0, -1.0, -4.0, -5.0, nan]]], device=device)
    x = torch.cat([x, torch.randn(1, 2, 70, device=device)], dim=2)
    x[0, 0, 15] = x[0, 1, 70] = nan  # p=1: windows of 77 steps, two BLOCK_W=64 blocks, NaN in one or both
    bias = torch.tensor([0.5, -1.0], device=device)
    for p in (1, 2, 7, 100):
        xg, bg = x.clone().requires_grad_(), bias.clone().requires_grad_()
        out, want = dynamic_max_pool(xg, bg, p, relu=relu), dynamic_max_pool_reference(xg, bg, p, relu=relu)
        torch.testing.assert_close(out, want, equal_nan=True, atol=0, rtol=0)
        grad_out = torch.randn_like(out)
        got, ref = torch.autograd.grad(out, [xg, bg], grad_out), torch.autograd.grad(want, [xg, bg], grad_out)
        torch.testing.assert_close(got[0], ref[0], atol=0, rtol=0)
        torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-6)


def test_triton_bfloat16_rounds_x_plus_bias_as_torch(triton_backend, device):
    # x + bias not representable in bf16: the kernel must round it to nearest-even as torch does. The
    # interpreter's fp32 -> bf16 cast truncates (0.904296875 -> 0.90234375, not 0.90625), which also
    # moved the arg-max of [0.404296875, 0.40625] + 0.5 (a tie in bf16) to the second step.
    x = torch.tensor([[[0.404296875, 0.40625, -1.0]]], device=device).bfloat16()
    bias = torch.tensor([0.5], device=device).bfloat16()
    _check_against_reference(x, bias, 1, relu=True, atol=0, rtol=0)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 29, device=device).bfloat16()
    bias = torch.randn(3, device=device).bfloat16()
    for p in (1, 4, 40):
        xg, bg = x.clone().requires_grad_(), bias.clone().requires_grad_()
        out, want = dynamic_max_pool(xg, bg, p), dynamic_max_pool_reference(xg, bg, p)
        assert torch.equal(out, want)
        # torch sums the gradient in bf16 (of a step in several chunks, of the bias over 2 x 29 rounded
        # steps), the kernel in fp32; a gradient sent to another step would be off by O(1).
        grad_out = torch.randn_like(out)
        got, ref = torch.autograd.grad(out, [xg, bg], grad_out), torch.autograd.grad(want, [xg, bg], grad_out)
        torch.testing.assert_close(got[0], ref[0], atol=1e-2, rtol=2e-2)
        torch.testing.assert_close(got[1], ref[1], atol=1e-1, rtol=2e-2)


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [
        pytest.param(torch.float32, 1e-6, 1e-6, marks=GPU),
        pytest.param(torch.bfloat16, 1e-2, 1e-2, marks=GPU),
    ],
)
@pytest.mark.parametrize("shape", [(128, 128, 498, 7), (64, 256, 1000, 16), (32, 64, 500, 600)])
def test_triton_matches_reference_on_gpu(triton_backend, shape, dtype, atol, rtol):
    torch.manual_seed(2)
    B, C, T, p = shape
    x = torch.randn(B, C, T, device="cuda", dtype=dtype)
    bias = torch.randn(C, device="cuda", dtype=dtype)
    _check_against_reference(x, bias, p, relu=True, atol=atol, rtol=rtol)


def test_triton_chunk_bounds_past_int32(triton_backend, device):
    # p * T = 47,000^2 > 2^31: chunk * T and t * p overflowed int32 (reads out of bounds, NaN).
    T = p = 47_000
    x = torch.randn(1, 1, T, device=device, requires_grad=True)
    out = dynamic_max_pool(x, None, p, relu=False)
    ref = dynamic_max_pool_reference(x, None, p, relu=False)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_rejects_bad_shapes(torch_backend):
    with pytest.raises(ValueError, match="x must be"):
        dynamic_max_pool(torch.randn(3, 4), None, 2)
    with pytest.raises(ValueError, match="bias must be"):
        dynamic_max_pool(torch.randn(1, 3, 4), torch.randn(4), 2)
    with pytest.raises(ValueError, match="x is torch.float32 but bias is torch.float64"):
        dynamic_max_pool(torch.randn(1, 3, 4), torch.randn(3, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="num_chunks"):
        dynamic_max_pool(torch.randn(1, 3, 4), None, 0)
