"""Benchmark the output layer's loss, forward + backward: materialized reference vs chunked
torch vs Triton (CUDA only).

    python -m pytest tests/benchmarks/bench_kernels_fused_linear_bce.py --benchmark-only -p no:cacheprovider
"""

import pytest
import torch

from xmtc.ops import fused_linear_bce, set_kernel_backend
from xmtc.ops_reference import linear_bce_reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="the Triton kernel needs a CUDA device")
LABELS = [65_536, 670_091] if CUDA else [16_384]


@pytest.fixture
def backend(request):
    previous = set_kernel_backend(request.param)
    yield request.param
    set_kernel_backend(previous)


def _case(num_labels, batch=64, hidden=512 if CUDA else 64, per_row=5):
    device = "cuda" if CUDA else "cpu"
    dtype = torch.bfloat16 if CUDA else torch.float32
    features = torch.randn(batch, hidden, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(num_labels, hidden, device=device) / hidden**0.5).to(dtype).requires_grad_()
    bias = torch.zeros(num_labels, device=device, dtype=dtype, requires_grad=True)
    target_idx = torch.randint(0, num_labels, (batch * per_row,), device=device)
    target_offsets = torch.arange(0, batch * per_row + 1, per_row, device=device)
    return features, weight, bias, target_idx, target_offsets


def _step(fn, *args):
    fn(*args).backward()
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("num_labels", LABELS)
def test_fused_linear_bce_eager(benchmark, num_labels):
    benchmark(_step, linear_bce_reference, *_case(num_labels))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_cuda)], indirect=True)
@pytest.mark.parametrize("num_labels", LABELS)
def test_fused_linear_bce_chunked(benchmark, backend, num_labels):
    benchmark(_step, fused_linear_bce, *_case(num_labels))
