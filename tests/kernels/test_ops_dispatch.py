"""Backend selection in xmtc.ops: config/env switch, lazy triton import, clear errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xmtc import ops

REPO = Path(__file__).resolve().parents[2]


def test_set_kernel_backend_overrides_env_and_returns_previous(monkeypatch):
    monkeypatch.setenv("XMTC_KERNELS", "torch")
    previous = ops.set_kernel_backend(None)
    try:
        assert ops.kernel_backend() == "torch"
        assert ops.set_kernel_backend("triton") is None
        assert ops.kernel_backend() == "triton"
        assert ops.set_kernel_backend(None) == "triton"
        monkeypatch.setenv("XMTC_KERNELS", "")
        assert ops.kernel_backend() == "auto"
    finally:
        ops.set_kernel_backend(previous)


def test_config_auto_leaves_the_backend_to_the_environment(monkeypatch):
    # What the trainer does with model.kernels: "auto" (the default) must not override XMTC_KERNELS.
    monkeypatch.setenv("XMTC_KERNELS", "torch")
    previous = ops.set_kernel_backend(None)
    try:
        ops.set_kernel_backend_from_config("auto")
        assert ops.kernel_backend() == "torch"
        ops.set_kernel_backend_from_config("triton")
        assert ops.kernel_backend() == "triton"
    finally:
        ops.set_kernel_backend(previous)


def test_bad_backend_names_are_user_errors(monkeypatch):
    with pytest.raises(ValueError, match="model.kernels must be one of auto, triton, torch"):
        ops.set_kernel_backend("cuda")
    previous = ops.set_kernel_backend(None)
    try:
        monkeypatch.setenv("XMTC_KERNELS", "fast")
        with pytest.raises(ValueError, match="XMTC_KERNELS must be one of"):
            ops.kernel_backend()
    finally:
        ops.set_kernel_backend(previous)


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch, triton_backend):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="tensor is on the CPU"):
        ops.masked_softmax(torch.randn(2, 3), torch.full((2, 1), -1))


def test_import_and_cpu_calls_need_neither_triton_nor_a_gpu():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        import xmtc.ops as ops
        x = torch.randn(2, 3, 8)
        ops.dynamic_max_pool(x, None, 3)
        ops.masked_softmax(torch.randn(2, 5), torch.full((2, 1), -1))
        assert not any(name.startswith("kernels.") for name in sys.modules), sorted(sys.modules)
        ops.set_kernel_backend("triton")
        try:
            ops.dynamic_max_pool(x, None, 3)
        except RuntimeError as err:
            assert "triton does not import" in str(err), err
        else:
            raise AssertionError("the triton backend ran without triton")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XMTC_KERNELS", "TRITON_INTERPRET")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fp32_dots_follow_torchs_float32_matmul_precision():
    # The kernels' fp32 tl.dot was always IEEE; torch's own matmuls take TF32 when a user allows it.
    import torch

    from kernels import dot_precision

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert dot_precision(torch.float32) == "ieee"
        for setting in ("high", "medium"):
            torch.set_float32_matmul_precision(setting)
            assert dot_precision(torch.float32) == "tf32"
        assert dot_precision(torch.bfloat16) == "tf32"
    finally:
        torch.set_float32_matmul_precision(before)
    # torch's newer per-backend setting: once it is set the legacy getter raises; it is read first. In a child
    # process: the setting is process-wide, and the legacy getter would keep raising in later tests.
    import subprocess
    import sys

    script = ("import torch\nfrom kernels import dot_precision\nfor s in ('tf32', 'ieee'):\n"
              "    torch.backends.cuda.matmul.fp32_precision = s\n    print(dot_precision(torch.float32))\n")
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.split() == ["tf32", "ieee"], proc.stderr[-2000:]
