"""The planner's output: text tables, one JSON document, a stacked-bar PNG."""

from __future__ import annotations

import io
import json
import os

from xmtc.io import atomic_write_bytes
from xmtc.memory.params import SEED_670K_GB, LayerRow, seed_explanation, seed_total
from xmtc.memory.plan import PHASES, Prediction
from xmtc.memory.tracker import COMPONENTS

GIB = 2**30


def gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / GIB:.3f}"


def unit(largest: float) -> tuple[float, str]:
    """GiB for sizes of a GiB and more, MiB below (a debug model is a few MiB)."""
    return (GIB, "GiB") if largest >= GIB else (2**20, "MiB")


def _fmt(n: int | float | None, scale: float) -> str:
    return "-" if n is None else f"{n / scale:.3f}"


def _millions(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def parameter_table(rows: list[LayerRow], title: str) -> str:
    has_seed = any(r.seed_formula for r in rows)
    header = ["layer", "shapes", "weights", "biases", "total"] + (["seed formula", "seed"] if has_seed else [])
    body = []
    for r in rows:
        shapes = " ".join(r.shapes[:4]) + (f" (+{len(r.shapes) - 4} more)" if len(r.shapes) > 4 else "")
        line = [r.name, shapes, f"{r.weights:,}", f"{r.biases:,}", f"{r.total:,}"]
        if has_seed:
            line += [r.seed_formula, _millions(r.seed_count)]
        body.append(line)
    total = sum(r.total for r in rows)
    seed = seed_total(rows)
    body.append(["total", "", f"{sum(r.weights for r in rows):,}", f"{sum(r.biases for r in rows):,}", f"{total:,}"]
                + (["", _millions(seed)] if has_seed else []))
    lines = [title] + _table(header, body, right={2, 3, 4, 6})
    scale, name = unit(total * 4)
    lines.append(f"fp32: {total * 4:,} bytes = {total * 4 / scale:.3f} {name}"
                 + (f" (seed: about {SEED_670K_GB} GB = {seed:,} x 4 bytes / 2^30)" if seed else ""))
    why = seed_explanation(rows)
    if why:
        lines.append(why)
    return "\n".join(lines)


def layout_table(predictions: list[Prediction]) -> str:
    scale, name = unit(max(p.peak for p in predictions))
    header = ["ranks", "ZeRO", "shards", "dtype", "batch", "params/rank"] + list(COMPONENTS) + [f"peak {name}", "at"]
    body = []
    for p in predictions:
        parts = p.parts()
        body.append([str(p.layout.world_size), str(p.layout.zero_stage), str(p.layout.label_shards), p.layout.dtype,
                     str(p.layout.micro_batch), f"{p.params_per_rank:,}"] + [_fmt(parts[c], scale) for c in COMPONENTS]
                    + [_fmt(p.peak, scale), p.peak_phase])
    return "\n".join([f"per-rank memory in {name} at each layout's peak (components as live at that moment), "
                      f"planned for {predictions[0].layout.device}"]
                     + _table(header, body, right=set(range(len(header) - 1)) - {3}))


def estimator_table(predictions: list[Prediction]) -> str:
    """Our model states next to DeepSpeed's own estimators, where they apply (ZeRO 2/3, no label shards)."""
    rows = [p for p in predictions if p.deepspeed_estimate]
    if not rows:
        return ""
    body = []
    for p in rows:
        est = p.deepspeed_estimate
        body.append([str(p.layout.world_size), str(p.layout.zero_stage), p.layout.dtype, gib(p.model_states),
                     gib(est["per_gpu"]), f"{p.model_states / est['per_gpu']:.2f}", est["formula"]])
    lines = ["model states (weights + grads + optimizer at the step) vs DeepSpeed's estimators, GiB per rank"]
    lines += _table(["ranks", "ZeRO", "dtype", "xmtc", "DeepSpeed", "ratio", "DeepSpeed's formula"], body, right={0, 1, 3, 4, 5})
    lines.append(
        "why they differ: DeepSpeed counts 2P weights + 18P/N (bf16 and fp32 gradient partitions, fp32 master, moments) "
        "or 4 x largest layer + 18P/N. DeepSpeed 0.19 itself keeps ZeRO-2's grads_in_partition whole for every "
        "parameter overlapping a rank's partition (the output layer's gradient on most ranks: higher here from 4 ranks), "
        "builds the fp32 gradient partition only inside the step (a temporary here: lower on 1-2 ranks), gathers "
        "ZeRO-3's largest module only in forward/backward, in the model's dtype; fp32 runs keep 4P weights. Neither "
        "estimator counts the reduce bucket, the step's fp64 norm copies, the optimizer's scratch or activations.")
    return "\n".join(lines)


def items_table(prediction: Prediction) -> str:
    body = [[i.phase, i.component, i.what, f"{i.nbytes:,}", i.formula] for i in prediction.items]
    return "\n".join([f"line items: {prediction.layout.describe()}"]
                     + _table(["phase", "component", "what", "bytes", "formula"], body, right={3}))


def measurement_table(prediction: Prediction, measured: dict) -> str:
    """Predicted vs measured, per phase and per component at the peak."""
    scale, name = unit(max(prediction.peak, measured["tracked_peak"]))

    def row(label, pred, meas):
        ratio = f"{pred / meas:.3f}" if pred is not None and meas else "-"
        return [label, _fmt(pred, scale), _fmt(meas, scale), ratio]

    body = [row(f"peak in {phase}", prediction.phase_total(phase), measured["phase_peaks"].get(phase, 0)) for phase in PHASES]
    at = measured["tracked_phase"]
    pred_parts = prediction.parts(at)
    body += [row(f"  {c} at the {at} peak", pred_parts[c], measured["tracked_parts"][c]) for c in COMPONENTS]
    body.append(row("peak (live tensors)", prediction.peak, measured["tracked_peak"]))
    if measured.get("rss_peak") is not None:
        body.append(row("peak resident memory - resident before the model", None, measured["rss_peak"]))
    if measured.get("cuda_peak_allocated") is not None:
        body.append(row("CUDA allocator: peak allocated", prediction.peak, measured["cuda_peak_allocated"]))
        body.append(row("CUDA allocator: peak reserved", None, measured["cuda_peak_reserved"]))
    title = (f"measured over {measured['steps']} steps on {measured['device']} (the worst of {measured['world_size']} "
             f"rank{'s' if measured['world_size'] > 1 else ''}: rank {measured['rank']}) vs predicted, {name}")
    lines = [title] + _table(["", "predicted", "measured", "pred/meas"], body, right={1, 2, 3})
    if measured.get("snapshot"):
        lines.append(f"CUDA memory snapshot: {measured['snapshot']} (drag it into https://pytorch.org/memory_viz)")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, document: dict) -> None:
    from xmtc.io import atomic_write_text

    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def write_plot(path: str | os.PathLike, predictions: list[Prediction], title: str, measured: dict | None = None,
               limit_gib: float | None = None) -> None:
    """Stacked bars of the components at each layout's peak (and the measurement beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(p.layout.describe().replace(", ", "\n", 2), p.parts()) for p in predictions]
    if measured is not None:
        bars.append(("measured\n" + measured["device"], measured["tracked_parts"]))
    colors = {"weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "activations": "#c44e52",
              "temporaries": "#8c8c8c"}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars) + 2), 5))
    bottom = [0.0] * len(bars)
    for c in COMPONENTS:
        values = [parts[c] / GIB for _, parts in bars]
        ax.bar(range(len(bars)), values, bottom=bottom, color=colors[c], label=c)
        bottom = [b + v for b, v in zip(bottom, values)]
    if limit_gib:
        ax.axhline(limit_gib, color="black", linestyle="--", linewidth=1, label=f"limit {limit_gib:g} GiB")
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7)
    ax.set_ylabel("GiB per rank at the peak")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()  # written whole or not at all: an earlier plot at `path` is never left half-overwritten
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
