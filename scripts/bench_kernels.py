"""Benchmark the fused ops (xmtc.ops) against eager torch and torch.compile.

    python scripts/bench_kernels.py                                  # every op, default sizes
    python scripts/bench_kernels.py --ops fused_linear_bce --dtype float32 --out runs/bench_kernels

On CUDA each op is timed forward + backward (median of triton.testing.do_bench) for every
provider and size; the script prints one table, and writes <out>/<op>.json and <out>/<op>.png
(time vs size, one line per provider). GB/s divides the bytes a fused kernel must move (the
model in docs/kernels.md) by the time, so providers compare on one scale. Before the sweep it
measures this device's limits (copy bandwidth, matrix rate: `measure_limits`) and, after it,
checks issue 5's targets at each op's largest size (`check_targets`): <out>/summary.json.
Memory: `peak_mb` is the rise of the allocator's peak over a step with the gradients set to None,
`scratch_mb` that less the gradients themselves (what the fused kernels exist to avoid).

Without CUDA, Triton timings would mean nothing: the script says so, times the eager reference
against the chunked torch paths at small sizes on the CPU, writes <out>/cpu.json and exits 0.
`--dry-run` instead runs the CUDA sweep's own code on the CPU (Triton under TRITON_INTERPRET=1,
float32, B=4, tiny sizes, about a minute): every file the GPU run writes, none of its meaning. It
is how the sweep is tested before a GPU lease is spent on it (tests/kernels/test_bench_targets.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmtc import ops  # noqa: E402
from xmtc.ops_reference import (  # noqa: E402
    dynamic_max_pool_reference,
    linear_bce_reference,
    linear_topk_reference,
    masked_softmax_reference,
    masked_softmax_weighted_sum_reference,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICE = "cuda"
"""Where the sweep's tensors live: "cpu" only for --dry-run (Triton under TRITON_INTERPRET=1)."""
ROWS = 64
"""Batch rows of the softmax and loss ops (the size names say B=64); --dry-run uses 4."""


# ----------------------------------------------------------------------------- op definitions
# Each op: sizes (x axis), make(size, dtype) -> (args, leaves), the eager reference and the
# public op, and the minimal bytes / FLOPs of its forward + backward.


def _leaf(t):
    return t.requires_grad_()


def _make_pool(batch, dtype):
    x = _leaf(torch.randn(batch, 128, 498, device=DEVICE, dtype=dtype))
    bias = _leaf(torch.randn(128, device=DEVICE, dtype=dtype))
    return (x, bias, 8), [x, bias]


def _make_softmax(labels, dtype):
    logits = _leaf(torch.randn(ROWS, labels, device=DEVICE, dtype=dtype))
    emitted = torch.randint(0, labels, (ROWS, 30), device=DEVICE)
    return (logits, emitted, True), [logits]


def _make_weighted_sum(labels, dtype):
    logits = _leaf(torch.randn(ROWS, labels, device=DEVICE, dtype=dtype))
    table = _leaf(torch.randn(labels, 256, device=DEVICE, dtype=dtype) / 16)
    emitted = torch.randint(0, labels, (ROWS, 30), device=DEVICE)
    return (logits, emitted, table), [logits, table]


def _make_bce(labels, dtype):
    features = _leaf(torch.randn(ROWS, 512, device=DEVICE, dtype=dtype))
    weight = _leaf(torch.randn(labels, 512, device=DEVICE, dtype=dtype) / 512**0.5)
    bias = _leaf(torch.zeros(labels, device=DEVICE, dtype=dtype))
    target_idx = torch.randint(0, labels, (ROWS * 5,), device=DEVICE)
    target_offsets = torch.arange(0, ROWS * 5 + 1, 5, device=DEVICE)
    return (features, weight, bias, target_idx, target_offsets), [features, weight, bias]


def _e_bar_only(fn):
    return lambda *a: fn(*a)[1]


OPS = {
    "dynamic_max_pool": dict(
        sizes=[32, 128, 512, 2048], dry_sizes=[1], size_name="batch (C=128, T=498, p=8)", make=_make_pool,
        eager=dynamic_max_pool_reference, op=ops.dynamic_max_pool,
        bytes=lambda b, e: 2 * b * 128 * 498 * e + b * 128 * 8 * (2 * e + 8), flops=None,
    ),
    "masked_softmax": dict(
        sizes=[16_384, 65_536, 262_144, 670_091], dry_sizes=[100, 200], size_name="labels (B=64, T=30, log)",
        make=_make_softmax,
        eager=masked_softmax_reference, op=ops.masked_softmax,
        bytes=lambda n, e: 7 * ROWS * n * e, flops=None,
    ),
    "masked_softmax_weighted_sum": dict(
        sizes=[16_384, 65_536, 262_144, 670_091], dry_sizes=[64, 128], size_name="labels (B=64, T=30, D=256)",
        make=_make_weighted_sum,
        eager=_e_bar_only(masked_softmax_weighted_sum_reference),
        op=_e_bar_only(lambda *a: ops.masked_softmax_weighted_sum(*a, return_probs=False)),
        bytes=lambda n, e: 5 * ROWS * n * e + 3 * n * 256 * e, flops=lambda n: 6 * ROWS * n * 256,
    ),
    "fused_linear_bce": dict(
        sizes=[16_384, 65_536, 262_144, 670_091], dry_sizes=[100, 200], size_name="labels (B=64, H=512)",
        make=_make_bce,
        eager=linear_bce_reference, op=ops.fused_linear_bce,
        bytes=lambda n, e: 2 * n * 512 * e, flops=lambda n: 6 * ROWS * n * 512,
    ),
}


# ----------------------------------------------------------------------------------- CUDA run


def _providers(spec):
    def with_backend(name, fn):
        def run(*args):
            previous = ops.set_kernel_backend(name)
            try:
                return fn(*args)
            finally:
                ops.set_kernel_backend(previous)

        return run

    providers = {
        "eager": spec["eager"],
        "torch.compile": torch.compile(spec["eager"]),
        "triton": with_backend("triton", spec["op"]),
    }
    if spec["op"] is ops.fused_linear_bce:
        providers["torch chunked"] = with_backend("torch", spec["op"])
    return providers


def _bench(fn, leaves=None, warmup=10, rep=50, cpu_calls=1):
    """Median milliseconds of fn(): triton's do_bench on CUDA; on the CPU (--dry-run) the median of cpu_calls."""
    if DEVICE == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=leaves, return_mode="median")
    times = []
    for _ in range(cpu_calls):
        for t in leaves or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time_op(fn, args, leaves):
    """(median ms, peak MB, scratch MB) of a forward + backward; the memory is None off CUDA."""

    def step():
        out = fn(*args)
        out.backward(torch.ones_like(out))

    step()  # compile / autotune outside the timing
    for t in leaves:  # as a training step sees them: zero_grad(set_to_none=True)
        t.grad = None
    peak_mb = scratch_mb = None
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        scratch_mb = peak_mb - sum(t.numel() * t.element_size() for t in leaves) / 2**20
    return _bench(step, leaves), peak_mb, scratch_mb


def measure_limits(dtype):
    """The physical limits the kernels are held to, measured on this device in this run.

    copy_gb_per_s: a 1 GiB device-to-device copy, counting bytes read plus written (what a
    memory-bound kernel's GB/s counts); matmul_tflop_per_s: an 8192^3 product in `dtype` on random
    data (zeros run faster on Hopper and would flatter the ratio).
    """
    cuda = DEVICE == "cuda"
    nbytes, n = (2**30, 8192) if cuda else (2**26, 1024)  # --dry-run: CPU-sized
    src = torch.empty(nbytes // 2, device=DEVICE, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    copy_ms = _bench(lambda: dst.copy_(src), warmup=25, rep=100, cpu_calls=3)
    del src, dst
    a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
    mm_ms = _bench(lambda: a @ b, warmup=25, rep=100, cpu_calls=3)
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return dict(copy_gb_per_s=2 * nbytes / copy_ms / 1e6, matmul_tflop_per_s=2 * n**3 / mm_ms / 1e9,
                matmul_dtype=str(dtype).replace("torch.", ""))


# Issue 5's targets (an H100), checked at each op's largest size.
TARGETS = {
    "masked_softmax": dict(copy_fraction=0.80, speedup_vs_eager=1.5),
    "dynamic_max_pool": dict(speedup_vs_eager=2.0),
    "fused_linear_bce": dict(matmul_fraction=0.60, memory_vs_eager=0.10),
}


def check_targets(rows, limits):
    """Rows of one sweep + measure_limits() -> one record per target: measured value, target, met.

    A target whose providers failed or were not run is reported with met=None, never as met.
    """
    checks = []
    for op, targets in TARGETS.items():
        sizes = [r["size"] for r in rows if r["op"] == op]
        if not sizes:
            continue
        size = max(sizes)
        at = {r["provider"]: r for r in rows if r["op"] == op and r["size"] == size and r.get("ms") is not None}
        triton, eager = at.get("triton"), at.get("eager")
        for name, target in targets.items():
            value = None
            if name == "copy_fraction" and triton:
                value = triton["gb_per_s"] / limits["copy_gb_per_s"]
            elif name == "matmul_fraction" and triton:
                value = triton["tflop_per_s"] / limits["matmul_tflop_per_s"]
            elif name == "speedup_vs_eager" and triton and eager:
                value = eager["ms"] / triton["ms"]
            elif name == "memory_vs_eager" and triton and eager and (eager.get("scratch_mb") or 0) > 0 \
                    and triton.get("scratch_mb") is not None:
                # Beyond the inputs and the gradients every path must return (the L x H weight
                # gradient alone is 0.65 GiB at 670K labels in bf16): the logits and their kin.
                value = max(triton["scratch_mb"], 0.0) / eager["scratch_mb"]
            met = None if value is None else (value <= target if name == "memory_vs_eager" else value >= target)
            checks.append(dict(op=op, size=size, check=name, value=value, target=target, met=met))
    return checks


def _device_name():
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (--dry-run: TRITON_INTERPRET=1, tiny sizes)"


def run_cuda(names, dtype, out_dir, dry_run=False):
    limits = measure_limits(dtype)
    print(f"limits: copy {limits['copy_gb_per_s']:.0f} GB/s (read + write), "
          f"{limits['matmul_dtype']} matmul {limits['matmul_tflop_per_s']:.0f} TFLOP/s", flush=True)
    rows = []
    elem = torch.finfo(dtype).bits // 8
    for name in names:
        spec = OPS[name]
        op_rows = []
        for size in spec["dry_sizes" if dry_run else "sizes"]:
            args, leaves = spec["make"](size, dtype)
            for provider, fn in _providers(spec).items():
                row = dict(op=name, size=size, provider=provider, dtype=str(dtype).replace("torch.", ""))
                try:
                    ms, peak_mb, scratch_mb = _time_op(fn, args, leaves)
                except Exception as err:  # one provider failing (OOM, compile) must not end the sweep
                    row.update(ms=None, error=f"{type(err).__name__}: {err}"[:200])
                else:
                    row.update(ms=ms, peak_mb=peak_mb, scratch_mb=scratch_mb, gb_per_s=spec["bytes"](size, elem) / ms / 1e6)
                    row["copy_fraction"] = row["gb_per_s"] / limits["copy_gb_per_s"]
                    if spec["flops"] is not None:
                        row["tflop_per_s"] = spec["flops"](size) / ms / 1e9
                        row["matmul_fraction"] = row["tflop_per_s"] / limits["matmul_tflop_per_s"]
                op_rows.append(row)
                _print_row(row)
            del args, leaves
            if not dry_run:
                torch.cuda.empty_cache()
        _write(out_dir, name, dict(device=_device_name(), size_name=spec["size_name"], limits=limits,
                                   rows=op_rows))
        _plot(out_dir, name, spec["size_name"], op_rows)
        rows += op_rows
        # The verdicts so far, after each op: a sweep stopped at its time cap keeps those of the ops it finished.
        checks = check_targets(rows, limits)
        for c in checks:
            if c["op"] != name:
                continue
            value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
            verdict = {True: "met", False: "MISSED", None: "not measured"}[c["met"]]
            print(f"target {c['op']} {c['check']} at {c['size']}: {value} (target {c['target']}) {verdict}", flush=True)
        _write(out_dir, "summary", dict(device=_device_name(), date=time.strftime("%Y-%m-%d"),
                                        torch=torch.__version__, limits=limits, checks=checks))
    return rows


# ------------------------------------------------------------------------------------ CPU run


def _time_cpu(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run_cpu(out_dir):
    rows = []
    for labels in (16_384, 65_536):
        features = torch.randn(64, 64, requires_grad=True)
        weight = (torch.randn(labels, 64) / 8).requires_grad_()
        bias = torch.zeros(labels, requires_grad=True)
        targets = (torch.randint(0, labels, (64 * 5,)), torch.arange(0, 64 * 5 + 1, 5))
        cases = {
            "eager": lambda: linear_bce_reference(features, weight, bias, *targets).backward(),
            "torch chunked": lambda: ops.fused_linear_bce(features, weight, bias, *targets).backward(),
        }
        for provider, fn in cases.items():
            rows.append(dict(op="fused_linear_bce", size=labels, provider=provider, ms=_time_cpu(fn)))
            _print_row(rows[-1])
        with torch.no_grad():
            for provider, fn in {
                "eager": lambda: linear_topk_reference(features, weight, bias, 5),
                "torch chunked": lambda: ops.linear_topk(features, weight, bias, 5),
            }.items():
                rows.append(dict(op="linear_topk", size=labels, provider=provider, ms=_time_cpu(fn)))
                _print_row(rows[-1])
    _write(out_dir, "cpu", dict(device="cpu", threads=torch.get_num_threads(), rows=rows))
    return rows


# ------------------------------------------------------------------------------------- output


def _print_row(row):
    if row.get("ms") is None:
        print(f"{row['op']:<28} {row['size']:>9} {row['provider']:<14} failed: {row.get('error')}")
        return
    extra = ""
    if "gb_per_s" in row:
        extra = f" {row['gb_per_s']:>9.1f} GB/s"
        if row.get("peak_mb") is not None:
            extra += f" {row['peak_mb']:>9.1f} MB"
    if "tflop_per_s" in row:
        extra += f" {row['tflop_per_s']:>7.1f} TFLOP/s"
    print(f"{row['op']:<28} {row['size']:>9} {row['provider']:<14} {row['ms']:>10.3f} ms{extra}", flush=True)


def _write(out_dir, name, payload):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))


def _plot(out_dir, name, size_name, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for provider in dict.fromkeys(r["provider"] for r in rows):
        points = [(r["size"], r["ms"]) for r in rows if r["provider"] == provider and r["ms"] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=provider)
    ax.set(xscale="log", yscale="log", xlabel=size_name, ylabel="forward + backward (ms)", title=name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    global DEVICE, ROWS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", choices=sorted(OPS), default=list(OPS), help="ops to benchmark")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="input dtype on CUDA")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_kernels"), help="folder for JSON and PNG")
    parser.add_argument("--dry-run", action="store_true",
                        help="the CUDA sweep's code on the CPU: Triton interpreted, tiny sizes, float32 (a check, not a timing)")
    args = parser.parse_args(argv)
    print(f"{'op':<28} {'size':>9} {'provider':<14} {'time':>13}")
    if args.dry_run:
        if any(name.startswith("kernels.") for name in sys.modules) and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--dry-run sets TRITON_INTERPRET=1, which must happen before kernels/ is imported")
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, ROWS = "cpu", 4
        run_cuda(args.ops, torch.float32, args.out, dry_run=True)
        return 0
    if not torch.cuda.is_available():
        print("No CUDA device: Triton timings need one. CPU comparison of eager vs chunked torch only.")
        run_cpu(args.out)
        return 0
    run_cuda(args.ops, DTYPES[args.dtype], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
