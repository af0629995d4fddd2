"""Benchmark masked softmax (+ weighted sum) forward + backward: eager reference vs Triton.

    python -m pytest tests/benchmarks/bench_kernels_masked_softmax.py --benchmark-only -p no:cacheprovider
"""

import pytest
import torch

from xmtc.ops import masked_softmax, masked_softmax_weighted_sum, set_kernel_backend
from xmtc.ops_reference import masked_softmax_reference, masked_softmax_weighted_sum_reference

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="the Triton kernels need a CUDA device")
LABELS = [65_536, 670_091] if CUDA else [8_192]


@pytest.fixture
def triton_ops():
    previous = set_kernel_backend("triton")
    yield
    set_kernel_backend(previous)


def _case(num_labels, dim=256, batch=64, emitted=30):
    device = "cuda" if CUDA else "cpu"
    logits = torch.randn(batch, num_labels, device=device, requires_grad=True)
    table = torch.randn(num_labels, dim, device=device, requires_grad=True)
    ids = torch.randint(0, num_labels, (batch, emitted), device=device)
    return logits, ids, table


def _softmax_step(fn, logits, ids):
    out = fn(logits, ids, True)
    out.backward(torch.ones_like(out))
    if CUDA:
        torch.cuda.synchronize()


def _weighted_sum_step(fn, logits, ids, table):
    _, e_bar = fn(logits, ids, table)
    e_bar.backward(torch.ones_like(e_bar))
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("num_labels", LABELS)
def test_masked_softmax_eager(benchmark, num_labels):
    logits, ids, _ = _case(num_labels)
    benchmark(_softmax_step, masked_softmax_reference, logits, ids)


@needs_cuda
@pytest.mark.parametrize("num_labels", LABELS)
def test_masked_softmax_triton(benchmark, triton_ops, num_labels):
    logits, ids, _ = _case(num_labels)
    benchmark(_softmax_step, masked_softmax, logits, ids)


@pytest.mark.parametrize("num_labels", LABELS)
def test_masked_softmax_weighted_sum_eager(benchmark, num_labels):
    logits, ids, table = _case(num_labels)
    benchmark(_weighted_sum_step, masked_softmax_weighted_sum_reference, logits, ids, table)


@needs_cuda
@pytest.mark.parametrize("num_labels", LABELS)
def test_masked_softmax_weighted_sum_triton(benchmark, triton_ops, num_labels):
    logits, ids, table = _case(num_labels)
    benchmark(_weighted_sum_step, lambda *a: masked_softmax_weighted_sum(*a, return_probs=False), logits, ids, table)
