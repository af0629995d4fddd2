"""Kernel tests run every Triton kernel: on CUDA when there is one, else on CPU tensors through
triton's interpreter. TRITON_INTERPRET is read when a kernel is decorated, so it is set before
the test modules import kernels.* (they do so inside fixtures, never at module level).
"""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _interpret_without_cuda(monkeypatch):
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_backend():
    """Route xmtc.ops through Triton for one test (interpreted on CPU); restore afterwards."""
    pytest.importorskip("triton", reason="triton is not installed")
    from xmtc.ops import set_kernel_backend

    previous = set_kernel_backend("triton")
    yield
    set_kernel_backend(previous)


@pytest.fixture
def torch_backend():
    from xmtc.ops import set_kernel_backend

    previous = set_kernel_backend("torch")
    yield
    set_kernel_backend(previous)


@pytest.fixture
def device():
    return DEVICE
