"""Every kernel compiles for sm_90 (H100/H200) at the tiles its launcher picks on a GPU: the interpreter that
runs the kernels in CI never lowers them, and an fp32 masked-softmax forward with a table ran there correctly
but did not compile for the GPU. Lowered here with Triton's bundled ptxas; no GPU is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_kernel_compiles_for_hopper(tmp_path):
    triton = pytest.importorskip("triton")
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "ptxas").is_file():
        pytest.skip(f"Triton {triton.__version__} has no bundled ptxas in {bin_dir}: cannot compile for the GPU here")

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from an earlier cache
    out = tmp_path / "compiled.json"
    proc = subprocess.run([sys.executable, "scripts/compile_for_gpu.py", "--arch", "90", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = {" ".join(r["case"].split()[:3]) for r in rows}
    # Each op's kernels, in both dtypes: 20 masked-softmax, 7 fused-BCE and 3 pooling cases per dtype; and the
    # dot kernels again with fp32 inputs on TF32 (torch.set_float32_matmul_precision("high")) at every tile and
    # autotune config: 10 masked-softmax (2 table tiles x forward, dlogits for log and not, dtable) and 7 fused-BCE.
    assert len(rows) == 2 * (20 + 7 + 3) + 17 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    tf32 = [r["case"] for r in rows if r["case"].startswith("fp32-tf32 ")]
    assert len(tf32) == 17 and sum(" chunk " in c for c in tf32) == 6 and sum(" dtable " in c for c in tf32) == 2, tf32
    assert {f"{dt} {op}" for dt in ("fp32", "bf16") for op in (
        "masked_softmax forward", "masked_softmax dlogits", "masked_softmax dtable", "masked_softmax stats",
        "fused_linear_bce chunk", "fused_linear_bce grad_features", "dynamic_max_pool forward", "dynamic_max_pool backward",
    )} <= kinds
    # Within an H100's 227 KB of shared memory per block.
    assert max(r["shared_bytes"] for r in rows) <= 227 * 1024
