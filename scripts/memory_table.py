"""Markdown tables of the memory planner, and diffs of memory benchmark records.

    python scripts/memory_table.py --config xml_cnn_670k --world-size 1,2,4,8 --zero-stage 0,1,2,3 --dtype bf16
    python scripts/memory_table.py --records runs/memory_bench             # predicted vs measured
    python scripts/memory_table.py --compare OLD_DIR NEW_DIR [--tolerance 0.02]

--compare prints every phase peak that changed and exits 1 when one grew by more than --tolerance (a fraction).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2**30


def planner_table(config: str, worlds: list[int], stages: list[int], shards: list[int], dtype: str, batch: int | None) -> str:
    from xmtc.config import load_config
    from xmtc.memory import Layout, model_shape, predict

    cfg = load_config(config)
    shape = model_shape(cfg)
    batch = batch or cfg.micro_batch_size
    lines = ["| ranks | ZeRO | label shards | weights | grads | optimizer | activations | temporaries | peak GiB | at |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for n in worlds:
        for s in stages:
            for k in shards:
                if n % k or (k > 1 and s == 3):
                    continue
                p = predict(shape, Layout(n, s, k, dtype, batch, "cuda"))
                parts = p.parts()
                cells = [f"{parts[c] / GIB:.2f}" for c in ("weights", "grads", "optimizer", "activations", "temporaries")]
                lines.append(f"| {n} | {s} | {k} | " + " | ".join(cells) + f" | **{p.peak / GIB:.2f}** | {p.peak_phase} |")
    return "\n".join(lines)


def load_records(folder: str) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def records_table(folder: str) -> str:
    lines = ["| record | device | predicted GiB | measured GiB (live tensors) | pred/meas | resident / CUDA peak GiB |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in load_records(folder).items():
        pred, meas = r["predicted"]["peak"], r["measured"]["tracked_peak"]
        other = r["measured"]["cuda_peak_allocated"] or r["measured"]["rss_peak"]
        lines.append(f"| {name[:-5]} | {r['device']} | {pred / GIB:.4f} | {meas / GIB:.4f} | {pred / meas:.3f} | "
                     + (f"{other / GIB:.4f}" if other else "-") + " |")
    return "\n".join(lines)


def compare(old: str, new: str, tolerance: float) -> tuple[str, bool]:
    """Per record and phase, the measured live tensor bytes before and after; growth past `tolerance` flags."""
    before, after = load_records(old), load_records(new)
    lines, regressed = [], False
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            lines.append(f"{name}: only in {'the old' if name in before else 'the new'} records")
            continue
        a, b = before[name]["measured"]["phase_peaks"], after[name]["measured"]["phase_peaks"]
        for phase in sorted(set(a) & set(b)):
            change = (b[phase] - a[phase]) / a[phase] if a[phase] else 0.0
            flag = change > tolerance
            regressed |= flag
            if flag or b[phase] != a[phase]:
                lines.append(f"{name} {phase}: {a[phase]:,} -> {b[phase]:,} bytes ({change:+.2%})" + ("  REGRESSION" if flag else ""))
    lines.append(f"{len(set(before) & set(after))} records compared" + (", peaks grew" if regressed else ", no peak grew"
                                                                       f" more than {tolerance:.0%}"))
    return "\n".join(lines), regressed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--world-size", default="1,2,4,8")
    p.add_argument("--zero-stage", default="0,1,2,3")
    p.add_argument("--label-shards", default="1")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--records")
    p.add_argument("--compare", nargs=2, metavar=("OLD_DIR", "NEW_DIR"))
    p.add_argument("--tolerance", type=float, default=0.02)
    args = p.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    if args.compare:
        text, regressed = compare(*args.compare, args.tolerance)
        print(text)
        return 1 if regressed else 0
    if args.records:
        print(records_table(args.records))
        return 0
    if not args.config:
        p.error("give --config, --records or --compare")
    print(planner_table(args.config, ints(args.world_size), ints(args.zero_stage), ints(args.label_shards),
                        args.dtype, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
