"""Benchmark XML-CNN's output layer (configs/xml_cnn_670k.json: 512 x 670,091) for one training step
(loss, backward, AdamW step): samples/s and peak memory per rank, three ways:

  plain    materialized logits: the B x L logits, targets, sigmoid and gradient exist (1 rank)
  fused    xmtc.ops.fused_linear_bce, label chunk by label chunk (1 rank)
  sharded  label sharding over 2 ranks (gloo on CPU, NCCL on CUDA), fused loss; each rank brings
           its own B documents, so a step trains on 2 x B of them

    python tests/benchmarks/bench_output_layer.py                    # CPU fp32, the table of docs/benchmarks.md
    python tests/benchmarks/bench_output_layer.py --labels 100000    # smaller
    python tests/benchmarks/bench_output_layer.py --device cuda      # bf16 on a GPU (2 GPUs for `sharded`)
    python -m pytest tests/benchmarks/bench_output_layer.py --benchmark-only -p no:cacheprovider   # small, timing only

Each case runs in fresh processes. "peak memory" on the CPU is how far the process's peak RSS rose
above its RSS before the layer was built (parameters, gradients, Adam state, temporaries: tensors
this large are mmapped, so RSS follows them); on CUDA it is torch.cuda.max_memory_allocated. The
FLOP count of a step is 6 x B x H x L per rank (a shard scores N x B documents on L / N labels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CASES = ("plain", "fused", "sharded")


def build_layer(case: str, hidden: int, labels: int, chunk: int, groups=None):
    from xmtc.models.output_layer import OutputLayer
    from xmtc.parallel.label_shards import LabelShardedOutputLayer

    if case == "sharded":
        layer = LabelShardedOutputLayer(hidden, labels, groups, loss="fused", chunk_size=chunk)
        with torch.no_grad():  # OutputLayer's init on the slice; no full layer is ever built here
            torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            layer.bias.uniform_(-hidden**-0.5, hidden**-0.5)
        return layer
    return OutputLayer(hidden, labels, loss="materialized" if case == "plain" else "fused", chunk_size=chunk)


def worker(rank: int, args: dict, out_dir: str) -> None:
    """One rank of one case: build, warm up, time `steps` steps, write its numbers to out_dir."""
    ranks, device = args["ranks"], torch.device(args["device"] if args["device"] == "cpu" else f"cuda:{rank}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    groups = None
    if args["case"] == "sharded":
        import torch.distributed as dist

        from xmtc.distributed import DistInfo
        from xmtc.parallel.groups import LabelShardGroups

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=ranks)
        groups = LabelShardGroups(ranks, DistInfo(rank, ranks, rank, device, dist.get_backend()))
    torch.manual_seed(rank)
    batch, hidden, labels = args["batch"], args["hidden"], args["labels"]
    per_doc = args["labels_per_doc"]
    counts = torch.poisson(torch.full((batch,), per_doc)).long().clamp(min=1)
    idx = torch.randint(0, labels, (int(counts.sum()),), device=device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(device)
    from xmtc.memory.rss import peak_rss_bytes, reset_peak_rss, rss_bytes

    reset_peak_rss()
    rss_before = rss_bytes()
    times = []
    layer = build_layer(args["case"], hidden, labels, args["chunk"], groups).to(device, dtype)
    # fused: one kernel per tensor, no parameter-sized temporaries (DeepSpeed's FusedAdam on GPU behaves
    # alike); default: torch's CPU path, whose sqrt/div temporaries add 2 x the layer to the step's peak.
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True if args["adam"] == "fused" else None)
    features = torch.randn(batch, hidden, device=device, dtype=dtype, requires_grad=True)
    for step in range(args["warmup"] + args["steps"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        layer.loss(features, idx, offsets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        features.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args["warmup"]:
            times.append(time.perf_counter() - t0)
    # The same GEMM shapes as the step: a shard multiplies the ranks x B gathered rows.
    matmul_tflops = matmul_limit(layer.weight, features.detach().repeat(ranks, 1)) if device.type == "cuda" else None
    result = {
        "matmul_tflops": matmul_tflops,
        "step_s": statistics.median(times),
        # CPU: growth of peak RSS over the process before the layer existed (tensors this big are
        # mmapped, so RSS follows them); CUDA: the allocator's peak.
        "peak_gb": (peak_rss_bytes() - rss_before if device.type == "cpu"
                    else torch.cuda.max_memory_allocated(device)) / 2**30,
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "threads": torch.get_num_threads(),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if groups is not None:
        from xmtc.distributed import teardown

        teardown()


@torch.no_grad()
def matmul_limit(weight: torch.Tensor, features: torch.Tensor, repeats: int = 10) -> float:
    """TFLOP/s of the step's three GEMMs alone (logits, weight and feature gradients) at its shapes."""
    z = features @ weight.t()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        z = torch.mm(features, weight.t(), out=z)
        torch.mm(z.t(), features)
        torch.mm(z, weight)
    torch.cuda.synchronize()
    return 6 * features.shape[0] * weight.shape[0] * weight.shape[1] * repeats / (time.perf_counter() - t0) / 1e12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: str, batch: int, hidden: int, labels: int, chunk: int, device: str = "cpu",
             warmup: int = 1, steps: int = 3, labels_per_doc: float = 5.45, adam: str = "fused") -> dict:
    """Samples/s (all ranks together) and the worst rank's peak memory of one case."""
    import torch.multiprocessing as mp

    ranks = 2 if case == "sharded" else 1
    args = dict(case=case, ranks=ranks, batch=batch, hidden=hidden, labels=labels, chunk=chunk, device=device,
                warmup=warmup, steps=steps, labels_per_doc=labels_per_doc, adam=adam, port=free_port())
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(args, out), nprocs=ranks, join=True)
        per_rank = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(ranks)]
    step_s = max(r["step_s"] for r in per_rank)
    flops = 6 * batch * hidden * labels  # per rank: a shard scores ranks x B documents on L / ranks labels
    return {
        "case": case, "ranks": ranks, "batch_per_rank": batch, "step_s": step_s,
        "samples_per_s": ranks * batch / step_s,
        "tflops": ranks * flops / step_s / 1e12,
        "peak_gb": max(r["peak_gb"] for r in per_rank),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in per_rank),
        "threads_per_rank": per_rank[0]["threads"],
        "matmul_tflops": per_rank[0]["matmul_tflops"],
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="xml_cnn_670k")
    p.add_argument("--labels", type=int, default=None, help="override the config's label count")
    p.add_argument("--batch", type=int, default=None, help="documents per rank (default: the config's micro batch)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--adam", default="fused", choices=("fused", "default"), help="torch AdamW implementation")
    p.add_argument("--json", default=None, help="also write the machine and the rows as JSON here")
    args = p.parse_args(argv)
    from xmtc.config import load_config

    cfg = load_config(args.config)
    hidden, labels = cfg.xml_cnn.bottleneck, args.labels or cfg.synthetic.num_labels
    batch, chunk = args.batch or cfg.micro_batch_size, cfg.xml_cnn.loss_chunk_size
    print(f"machine: {machine()}\nconfig {args.config}: H={hidden}, L={labels:,}, batch {batch} per rank, chunk {chunk}, "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}, {args.adam} AdamW, {args.steps} timed steps after {args.warmup} warm-up")
    rows = []
    for case in args.cases.split(","):
        rows.append(run_case(case, batch, hidden, labels, chunk, args.device, args.warmup, args.steps,
                             cfg.synthetic.labels_per_doc, args.adam))
        r = rows[-1]
        print(f"  {case:8s} ranks {r['ranks']}  step {r['step_s']:.3f} s  {r['samples_per_s']:8.1f} samples/s  "
              f"{r['tflops']:.3f} TFLOP/s  peak {r['peak_gb']:.2f} GB/rank  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB/rank"
              + (f"  (GEMMs alone: {r['matmul_tflops']:.1f} TFLOP/s per rank)" if r["matmul_tflops"] else ""), flush=True)
    plain = next((r for r in rows if r["case"] == "plain"), None)
    print("\n| case | ranks | samples/s | step (s) | TFLOP/s | peak memory / rank (GiB) | vs plain | peak RSS / rank (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['peak_gb'] / plain['peak_gb']:.2f}" if plain else "-"
        print(f"| {r['case']} | {r['ranks']} | {r['samples_per_s']:.1f} | {r['step_s']:.2f} | {r['tflops']:.3f} | "
              f"{r['peak_gb']:.2f} | {ratio} | {r['peak_rss_gb']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine(), config=args.config, labels=labels, batch=batch,
                                                   device=args.device, rows=rows), indent=2))
    return 0


# ------------------------------------------------------------- pytest-benchmark (small sizes)


def _small_step(case):
    from xmtc.models.output_layer import OutputLayer

    layer = OutputLayer(64, 20_000, loss="materialized" if case == "plain" else "fused", chunk_size=4096)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    features = torch.randn(32, 64, requires_grad=True)
    idx, offsets = torch.randint(0, 20_000, (160,)), torch.arange(0, 161, 5)

    def step():
        layer.loss(features, idx, offsets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def test_output_layer_step_plain(benchmark):
    benchmark(_small_step("plain"))


def test_output_layer_step_fused(benchmark):
    benchmark(_small_step("fused"))


if __name__ == "__main__":
    sys.exit(main())
