"""Memory benchmark: `python -m xmtc.memory --measure` across configs, ZeRO stages and rank counts.

    python -m pytest tests/benchmarks/bench_memory.py --benchmark-only -p no:cacheprovider
    XMTC_MEMORY_BENCH_RANKS=1,2,4 XMTC_MEMORY_BENCH_DIR=runs/memory_bench python -m pytest ... (same)
    python scripts/memory_table.py --compare OLD_DIR runs/memory_bench      # what changed

Each run writes one JSON record, `<config>-zero<S>-n<N>[-k<K>].json`, to XMTC_MEMORY_BENCH_DIR
(default runs/memory_bench): the layout, the predicted peak and components, and the measured live
tensor bytes per phase and component (deterministic for given torch/DeepSpeed versions, so a
regression shows up as a diff), plus the resident-memory or CUDA-allocator peak. CPU ranks run
under gloo (1 and 2 by default); with CUDA every visible GPU count up to 8 in powers of two.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("XMTC_MEMORY_BENCH_DIR", ROOT / "runs" / "memory_bench"))
if torch.cuda.is_available():
    RANKS = [n for n in (1, 2, 4, 8) if n <= torch.cuda.device_count()]
else:
    RANKS = [int(n) for n in os.environ.get("XMTC_MEMORY_BENCH_RANKS", "1,2").split(",")]
CASES = [(config, stage, n, 1) for config in ("debug_xml_cnn", "debug_sgm") for stage in (0, 1, 2, 3) for n in RANKS]
CASES += [("debug_xml_cnn", stage, n, 2) for stage in (0, 1) for n in RANKS if n % 2 == 0]


def record_name(config: str, stage: int, ranks: int, shards: int) -> str:
    return f"{config}-zero{stage}-n{ranks}" + (f"-k{shards}" if shards > 1 else "") + ".json"


def compact(doc: dict) -> dict:
    """The diffable part of the CLI's JSON: layout, prediction, measurement."""
    import deepspeed

    layout, m = doc["layouts"][0], doc["measurement"]
    return {
        "config": Path(doc["config"]).stem, **layout["layout"],
        "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__},
        "predicted": {"peak": layout["peak_bytes"], "phase": layout["peak_phase"],
                      "components": layout["components"], "phase_totals": layout["phase_totals"]},
        "measured": {k: m[k] for k in ("tracked_peak", "tracked_phase", "tracked_parts", "phase_peaks",
                                       "rss_peak", "cuda_peak_allocated", "cuda_peak_reserved")},
    }


def run_profile(config: str, stage: int, ranks: int, shards: int, tmp: Path) -> dict:
    full = tmp / "full.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    cmd = (launcher if ranks > 1 else [sys.executable]) + [
        "-m", "xmtc.memory", "--config", config, "--zero-stage", str(stage), "--label-shards", str(shards),
        "--measure", "--steps", "2", "--json", str(full),
        "--data.cache_dir", str(tmp / "cache"), "--train.output_dir", str(tmp / "run")]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=1800)
    record = compact(json.loads(full.read_text()))
    from xmtc.io import atomic_write_text  # a killed run leaves the old record, not half of a new one for --compare

    atomic_write_text(OUT / record_name(config, stage, ranks, shards), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


@pytest.mark.slow
@pytest.mark.parametrize("config,stage,ranks,shards", CASES, ids=lambda v: str(v))
def test_memory_profile(benchmark, tmp_path, config, stage, ranks, shards):
    record = benchmark.pedantic(run_profile, args=(config, stage, ranks, shards, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(predicted_peak=record["predicted"]["peak"], measured_peak=record["measured"]["tracked_peak"])
    assert record["measured"]["tracked_peak"] > 0
