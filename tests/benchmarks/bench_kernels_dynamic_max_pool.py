"""Benchmark dynamic_max_pool forward + backward: eager reference vs Triton (CUDA only).

    python -m pytest tests/benchmarks/bench_kernels_dynamic_max_pool.py --benchmark-only -p no:cacheprovider
"""

import pytest
import torch

from xmtc.ops import dynamic_max_pool, set_kernel_backend
from xmtc.ops_reference import dynamic_max_pool_reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="the Triton kernel needs a CUDA device")


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture
def triton_ops():
    previous = set_kernel_backend("triton")
    yield
    set_kernel_backend(previous)


def _case(batch):
    device = "cuda" if CUDA else "cpu"
    # XML-CNN: 128 filters over 500 tokens, pooled to 8 chunks.
    x = torch.randn(batch, 128, 498, device=device, requires_grad=True)
    bias = torch.randn(128, device=device, requires_grad=True)
    return x, bias


def _step(fn, x, bias):
    out = fn(x, bias, 8)
    out.backward(torch.ones_like(out))
    _sync()


@pytest.mark.parametrize("batch", [16, 128] if CUDA else [4])
def test_dynamic_max_pool_eager(benchmark, batch):
    x, bias = _case(batch)
    benchmark(_step, dynamic_max_pool_reference, x, bias)


@needs_cuda
@pytest.mark.parametrize("batch", [16, 128])
def test_dynamic_max_pool_triton(benchmark, triton_ops, batch):
    x, bias = _case(batch)
    benchmark(_step, dynamic_max_pool, x, bias)
