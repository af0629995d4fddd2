"""A run's learning curves as a picture: `curves.png` beside `metrics.jsonl`, redrawn after each evaluation.

Three panels over the training step: the training loss (of every log step, `train_log.jsonl`), the ranking metrics (P@k, nDCG@k for the
evaluated ks), and the set metrics (micro precision, recall, F1; macro F1). Periodic evaluations of the
validation split are solid, of the test split dashed; with a validation split the test evaluation at
the end is a marker, at the selected step when a metric selected one. Also `python -m xmtc.plots --run RUN` for a finished run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

from xmtc.io import atomic_write_bytes

CURVES_FILE = "curves.png"
TRAIN_LOG_FILE = "train_log.jsonl"
"""One record per log step (`train.log_every`): step, epoch, train_loss, lr, samples_per_s, memory; the loss panel's curve."""
SET_METRICS = ("micro_precision", "micro_recall", "micro_f1", "macro_f1")


def read_records(path: str | os.PathLike) -> list[dict]:
    """metrics.jsonl's records; a line cut by a crash is left out."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def ranking_metrics(records: list[dict]) -> list[str]:
    """P@k then nDCG@k for every k the records carry, in k order."""
    keys = {k for r in records for k in r if k.startswith(("P@", "nDCG@")) and k.split("@")[1].isdigit()}
    return sorted(keys, key=lambda k: (not k.startswith("P@"), int(k.split("@")[1])))


def write_curves(records: list[dict], path: str | os.PathLike, title: str = "", train_records: list[dict] | None = None) -> bool:
    """Draw `records` (metrics.jsonl's) and `train_records` (train_log.jsonl's) into the PNG `path`, atomically; False
    when there is no evaluation to draw."""
    if not records:
        return False
    import matplotlib.pyplot as plt

    fig = curves_figure(records, title, train_records)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def curves_figure(records: list[dict], title: str = "", train_records: list[dict] | None = None):
    """The figure of `write_curves` (a matplotlib Figure with the three panels). The loss panel draws the training
    log's steps (every `train.log_every`) when there are any, else the losses the evaluations recorded (older runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # With a validation split, periodic evaluations score it and the test split is scored at the end only.
    with_valid = any(r.get("split") == "valid" for r in records)
    finals = [r for r in records if "selected_step" in r or (with_valid and r.get("split") == "test")]
    periodic = [r for r in records if not any(r is f for f in finals)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    loss_points = sorted({(r["step"], r["train_loss"]) for r in (train_records or records) if _finite(r.get("train_loss"))})
    axes[0].plot([s for s, _ in loss_points], [v for _, v in loss_points], color="black", marker=".")
    axes[0].set_ylabel("training loss (mean of the step)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, keys in ((axes[1], ranking_metrics(records)), (axes[2], [k for k in SET_METRICS if any(k in r for r in records)])):
        for i, key in enumerate(keys):
            color = colors[i % len(colors)]
            for split, style in (("valid", "-"), ("test", "--")):
                points = [(r["step"], r[key]) for r in periodic if r.get("split") == split and _finite(r.get(key))]
                if points:
                    ax.plot(*zip(*points), style, color=color, marker=".", label=f"{key} ({split})")
            for r in finals:
                if _finite(r.get(key)):
                    ax.plot([r.get("selected_step", r["step"])], [r[key]], "*", color=color, markersize=11)
        if finals and keys:
            selected = any("selected_step" in r for r in finals)
            ax.plot([], [], "*", color="gray", markersize=11, label="test, at the end" + (" (at the selected step)" if selected else ""))
        ax.set_ylabel("ranking metrics" if ax is axes[1] else "set metrics (predicted labels)")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmtc.plots", description="Draw a run's curves.png from its metrics.jsonl.")
    p.add_argument("--run", required=True, help="the run's output directory")
    p.add_argument("--out", default=None, help=f"PNG to write (default: RUN/{CURVES_FILE})")
    args = p.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / CURVES_FILE
    try:
        records = read_records(run / "metrics.jsonl")
    except OSError as e:  # --run names a file, or metrics.jsonl is a directory or unreadable
        print(f"error: {run / 'metrics.jsonl'} could not be read: {e.strerror or e}; pass the run's output directory", file=sys.stderr)
        return 2
    try:
        train_records = read_records(run / TRAIN_LOG_FILE)
    except OSError:  # unreadable: the evaluations' losses instead
        train_records = []
    try:
        drawn = write_curves(records, out, title=str(run), train_records=train_records)
    except OSError as e:
        print(f"error: --out {out} could not be written: {e.strerror or e}", file=sys.stderr)
        return 2
    if not drawn:
        print(f"error: {run / 'metrics.jsonl'} holds no evaluation to draw", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
