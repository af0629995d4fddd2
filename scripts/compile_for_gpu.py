"""Compile every Triton kernel for a GPU architecture without a GPU, at the tile sizes the launchers pick there.

    python scripts/compile_for_gpu.py [--arch 90] [--dtypes fp32,bf16] [--json out.json]

The interpreter (TRITON_INTERPRET=1, what CI runs the kernels under) never lowers a kernel to GPU code, so a
kernel that the interpreter runs correctly may still fail to compile for the GPU (an fp32 forward with a
table did, on Triton 3.6 and 3.9, for sm_90). This lowers each kernel to a cubin with Triton's own ptxas and
prints one line per kernel and configuration: compiled, with its shared memory, registers and spilled bytes
(from cuobjdump), or FAILED with the compiler's first line. Exit 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton and the kernels are imported: real JIT functions
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from kernels import dynamic_max_pool as dp  # noqa: E402
from kernels import fused_linear_bce as fb  # noqa: E402
from kernels import masked_softmax as ms  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def toolchain_missing() -> str | None:
    """Why this machine cannot compile for an NVIDIA GPU, or None."""
    for tool in ("ptxas", "cuobjdump"):
        if not (BIN / tool).is_file():
            return f"Triton {triton.__version__} has no bundled {tool} in {BIN}"
    return None


def _signature(fn: JITFunction, pointers: dict[str, str], constants: dict, dtype: str, div16: tuple = ()) -> tuple:
    """ASTSource's signature (every argument: its type, or "constexpr") and the 16-divisibility attributes the
    launcher's real tensors would give (every pointer: torch's allocations are 16-byte aligned)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, dtype)
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def cases(dtypes: list[str]):
    """(label, kernel, pointer dtypes, constants, num_warps, num_stages, 16-divisible scalars) for each
    kernel at the tiles the launchers use on a GPU (kernels.masked_softmax._Plan, fused_linear_bce._bce_configs,
    dynamic_max_pool's launchers), for the label counts and widths of the shipped configs. With fp32, the kernels
    that hold a `tl.dot` come again as "fp32-tf32": fp32 inputs on TF32 tensor cores (what
    torch.set_float32_matmul_precision("high") selects), at every tile and autotune config as well."""
    for dt in dtypes:
        variants = [(dt, "ieee" if dt == "fp32" else "tf32")] + ([("fp32-tf32", "tf32")] if dt == "fp32" else [])
        stats = {"max_ptr": "fp32", "sum_ptr": "fp32", "emitted_ptr": "i64", "shift_ptr": "fp32", "c_ptr": "fp32",
                 "ebar_ptr": "fp32", "out_ptr": "fp32"}
        # (BLOCK_B, BLOCK_L, BLOCK_D, table): no table (bandwidth-bound); with a table, a small and a full batch.
        for bb, bl, bd, table in ((4, 1024, 16, False), (16, 64, 128, True), (64, 64, 128, True)):
            tile = {"BLOCK_B": bb, "BLOCK_L": bl, "BLOCK_T": 32}
            yield f"{dt} masked_softmax stats {bb}x{bl}", ms._stats_kernel, stats, tile, 4, 3, ()
            yield f"{dt} masked_softmax grad_row_sum {bb}x{bl}", ms._grad_row_sum_kernel, stats, tile, 4, 3, ()
            for name, prec in variants[:None if table else 1]:  # without a table no dot is traced
                for log in (False, True):
                    yield (f"{name} masked_softmax forward {bb}x{bl}x{bd} log={log} table={table}", ms._forward_kernel, stats,
                           dict(tile, LOG=log, WRITE_P=True, HAS_TABLE=table, PRECISION=prec, BLOCK_D=bd), 4, 3, ())
                    yield (f"{name} masked_softmax dlogits {bb}x{bl}x{bd} log={log} table={table}", ms._dlogits_kernel, stats,
                           dict(tile, LOG=log, HAS_GP=True, HAS_TABLE=table, ADD_C=True, PRECISION=prec, BLOCK_D=bd), 4, 3, ())
                if table:
                    yield (f"{name} masked_softmax dtable {bb}x{bl}x{bd}", ms._dtable_kernel, stats,
                           dict(tile, PRECISION=prec, BLOCK_D=bd), 4, 3, ())
        bce = {"label_start_ptr": "i64", "pos_row_ptr": "i64", "pos_label_ptr": "i64", "loss_ptr": "fp32"}
        for name, prec in variants:
            for c in fb._bce_configs():
                yield (f"{name} fused_linear_bce chunk {c.kwargs} w{c.num_warps} s{c.num_stages}", fb._linear_bce_chunk_kernel,
                       bce, dict(c.kwargs, HAS_BIAS=True, WRITE_DZ=True, SQUARED_HINGE=False, PRECISION=prec), c.num_warps,
                       c.num_stages, ("H", "stride_f", "stride_w", "stride_dz"))
            yield (f"{name} fused_linear_bce grad_features 64x64x64", fb._grad_features_kernel, {"out_ptr": "fp32"},
                   {"PRECISION": prec, "BLOCK_B": 64, "BLOCK_K": 64, "BLOCK_H": 64}, 4, 3, ())
        for bp, bw in ((32, 64), (32, 4)):
            yield (f"{dt} dynamic_max_pool forward {bp}x{bw}", dp._dynamic_max_pool_fwd_kernel, {"arg_ptr": "i32"},
                   {"HAS_BIAS": True, "RELU": True, "BLOCK_P": bp, "BLOCK_W": bw}, 4, 3, ())
        yield (f"{dt} dynamic_max_pool backward 1024", dp._dynamic_max_pool_bwd_kernel, {"arg_ptr": "i32"},
               {"BLOCK_T": 1024}, 4, 3, ())


def compile_one(fn, pointers, constants, dtype, num_warps, num_stages, div16, arch: int) -> dict:
    while not isinstance(fn, JITFunction):  # an autotuner or heuristics wraps the JIT function
        fn = fn.fn
    sig, attrs = _signature(fn, pointers, constants, dtype, div16)
    t0 = time.monotonic()
    try:
        k = triton.compile(ASTSource(fn, sig, constants, attrs), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as e:  # noqa: BLE001 - the compiler raises many kinds; each is reported
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return {"ok": False, "error": f"{type(e).__name__}: {first[:300]}", "seconds": round(time.monotonic() - t0, 1)}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(BIN / "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = {key: int(v) for key, v in re.findall(r"(REG|LOCAL|STACK):(\d+)", usage)}
    return {"ok": True, "shared_bytes": k.metadata.shared, "registers": found.get("REG"),
            "local_bytes": found.get("LOCAL"), "seconds": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--only", default="", help="compile only the cases whose label holds this text")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if (why := toolchain_missing()) is not None:
        print(f"error: {why}; cannot compile for sm_{args.arch} here", file=sys.stderr)
        return 2
    rows = []
    for label, fn, pointers, constants, warps, stages, div16 in cases(args.dtypes.split(",")):
        if args.only not in label:
            continue
        row = {"case": label, **compile_one(fn, pointers, constants, label.split()[0].split("-")[0], warps, stages, div16, args.arch)}
        rows.append(row)
        if row["ok"]:
            print(f"{label:78s} compiled: shared {row['shared_bytes']} B, {row['registers']} registers, "
                  f"{row['local_bytes']} B spilled ({row['seconds']} s)", flush=True)
        else:
            print(f"{label:78s} FAILED: {row['error']}", flush=True)
    if args.json:
        from xmtc.io import atomic_write_json

        atomic_write_json(args.json, {"arch": args.arch, "triton": triton.__version__, "rows": rows})
    failed = [r["case"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} compiled for sm_{args.arch} with Triton {triton.__version__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
