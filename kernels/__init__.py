"""Triton kernels, one op per module (dynamic_max_pool, masked_softmax, fused_linear_bce).

Import the op modules only where triton is wanted (xmtc.ops does so lazily); this package
itself imports neither triton nor a device, so it is safe on CPU-only machines.
"""

import functools
import os

import torch


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1: kernels then run on CPU tensors with small, fixed tiles."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (queried at launch, never at import); 2 off CUDA."""
    if device.type != "cuda":
        return 2
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input_precision for inputs of `dtype`: fp32 follows torch's own float32 matmul setting
    (`torch.set_float32_matmul_precision`: "highest", the default, is IEEE fp32 as cuBLAS computes the torch
    reference; "high" or "medium" allow TF32 tensor cores, as they do for torch's matmuls); 16-bit inputs
    multiply exactly on the tensor cores whatever it says."""
    if dtype != torch.float32:
        return "tf32"
    # torch >= 2.9's per-backend setting (torch.backends.cuda.matmul.fp32_precision "ieee"/"tf32"/"none"); with it
    # set, the legacy getter raises rather than mix the two APIs.
    new_api = getattr(getattr(getattr(torch.backends, "cuda", None), "matmul", None), "fp32_precision", "none")
    if new_api in ("ieee", "tf32"):
        return new_api
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        return "ieee"
    return "ieee" if legacy == "highest" else "tf32"


class GradientsInForward(torch.autograd.Function):
    """Base of the fused losses that compute their input gradients during the forward, chunk by
    chunk (so no B x L logits are ever kept): `keep` stores them, the backward only scales them.

    Subclasses' forward takes (features, weight, bias, pos_label, pos_row, chunk_size, criterion).
    """

    @staticmethod
    def keep(ctx, features, grad_features, grad_weight, grad_bias):
        ctx.grads = (
            None if grad_features is None else grad_features.to(features.dtype),
            grad_weight,
            grad_bias,
        )

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_bce: backward ran twice; its gradients are consumed by the first.")
        # Scaling in place keeps the backward free of another [L, H] allocation.
        grads = tuple(None if g is None else g.mul_(grad_output.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return grads + (None, None, None, None)
