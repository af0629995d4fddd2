"""SGM ablations on Reuters-21578 (or any SGM config): one 2-process `deepspeed` training per variant.

    python scripts/sgm_ablations.py                                   # every variant, runs/sgm_ablations/
    python scripts/sgm_ablations.py --variants full no_mask --epochs 10 --out runs/sgm_ablations_10ep
    python scripts/sgm_ablations.py --seed 1 --out runs/sgm_ablations_seed1    # the same sweep, another seed
    python scripts/sgm_ablations.py --combine runs/sgm_ablations runs/sgm_ablations_seed1 --out runs/sgm_ablations_2seeds

Each variant is the base config plus the overrides below. A variant whose run already wrote
final_metrics.json is not trained again (delete its folder to redo it), so an interrupted sweep
continues where it stopped. Writes results.json, results.md (the table) and results.png (micro-F1
and hamming loss per variant) into --out, each atomically. `--combine` trains nothing: it reads the
results.json of finished sweeps (one per seed) and writes the per-seed and mean table and plot. "train time" is the launcher's wall time (start-up and tokenizing included) for
variants trained by this script, else the trainer's own `train_time_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("SGM + global embedding (adaptive gate)", []),
    "no_ge": ("SGM without global embedding", ["--sgm.global_embedding", "none"]),
    "fixed_lambda": ("SGM + global embedding, fixed lambda = 0.5", ["--sgm.global_embedding", "fixed", "--sgm.global_lambda", "0.5"]),
    "no_mask": ("SGM + GE without the masked softmax", ["--sgm.mask", "false"]),
    "no_sort": ("SGM + GE without sorting labels by frequency", ["--sgm.sort_labels", "false"]),
}
KEYS = ("micro_f1", "micro_precision", "micro_recall", "hamming_loss", "P@1")


def train(name: str, out: Path, config: str, overrides: list[str], processes: int) -> dict:
    from xmtc.distributed import free_port

    run_dir = out / name
    final = run_dir / "final_metrics.json"
    if final.is_file():
        print(f"{name}: already trained ({final})", flush=True)
        return json.loads(final.read_text())
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(processes), "--master_port", str(free_port()),
           "launch/train.py", "--config", config, "--train.output_dir", str(run_dir), *overrides]
    print(f"{name}: {' '.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: training exited with {proc.returncode}; see {run_dir}")
    metrics = json.loads(final.read_text())
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    from xmtc.io import atomic_write_text

    atomic_write_text(final, json.dumps(metrics, indent=2) + "\n")  # keeps the wall time with the run
    return metrics


def table(rows: list[dict]) -> str:
    lines = ["| variant | micro-F1 | micro-P | micro-R | hamming loss | P@1 | train time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        seconds = m.get("train_seconds", m.get("train_time_s"))
        t = f"{seconds:.0f} s" if seconds is not None else "-"
        lines.append(f"| {r['label']} | {m['micro_f1']:.3f} | {m['micro_precision']:.3f} | {m['micro_recall']:.3f} | "
                     f"{m['hamming_loss']:.5f} | {m['P@1']:.3f} | {t} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmtc.io import atomic_write_bytes

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "micro_f1", "micro-F1 (higher is better)"), (axes[1], "hamming_loss", "hamming loss (lower is better)")):
        ax.bar(names, [r["metrics"][key] for r in rows], color="#4c72b0", label="mean" if "points" in rows[0] else None)
        if "points" in rows[0]:  # combined sweeps: one dot per seed
            xs = [i for i, r in enumerate(rows) for _ in r["points"]]
            ax.scatter(xs, [m[key] for r in rows for m in r["points"]], color="black", s=14, zorder=3, label="per seed")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        lo = min([r["metrics"][key] for r in rows] + [m[key] for r in rows for m in r.get("points", [])])
        ax.set_ylim(lo * 0.95, None)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def combine(sweeps: list[Path], out: Path) -> str:
    """Per-seed and mean table + plot of the variants that every sweep in `sweeps` has."""
    from xmtc.io import atomic_write_text

    results = []
    for d in sweeps:
        path = d / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run the sweep into {d} first")
        results.append({v["name"]: v for v in json.loads(path.read_text())["variants"]})
    names = [n for n in results[0] if all(n in r for r in results)]
    if not names:
        raise SystemExit(f"the sweeps {', '.join(map(str, sweeps))} have no variant in common")
    seeds = [json.loads((d / names[0] / "config.json").read_text())["train"]["seed"] for d in sweeps]
    rows = []
    for n in names:
        per = [r[n]["metrics"] for r in results]
        rows.append({"name": n, "label": results[0][n]["label"], "seeds": seeds, "per_seed": per,
                     "mean": {k: sum(m[k] for m in per) / len(per) for k in KEYS}})
    seed_txt = " / ".join(f"seed {s}" for s in seeds)
    lines = [f"| variant | micro-F1 ({seed_txt}) | mean | hamming loss ({seed_txt}) | mean | P@1 mean |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        f1 = " / ".join(f"{m['micro_f1']:.4f}" for m in r["per_seed"])
        hl = " / ".join(f"{m['hamming_loss']:.5f}" for m in r["per_seed"])
        lines.append(f"| {r['label']} | {f1} | {r['mean']['micro_f1']:.4f} | {hl} | {r['mean']['hamming_loss']:.5f} | "
                     f"{r['mean']['P@1']:.3f} |")
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"sweeps": [str(d) for d in sweeps], "seeds": seeds, "variants": rows}, indent=2) + "\n")
    atomic_write_text(out / "results.md", md)
    plot([{"name": r["name"], "metrics": r["mean"], "points": r["per_seed"]} for r in rows], out / "results.png")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="sgm_reuters")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/sgm_ablations")
    ap.add_argument("--epochs", type=float, default=None, help="override train.epochs for every variant")
    ap.add_argument("--seed", type=int, default=None, help="override train.seed for every variant (a second seed: use another --out)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--combine", nargs="+", type=Path, default=None, metavar="SWEEP",
                    help="train nothing: combine the results.json of these finished sweeps (one per seed) into --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.combine:
        print(combine(args.combine, out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--train.epochs", str(args.epochs)] if args.epochs else []
    extra += ["--train.seed", str(args.seed)] if args.seed is not None else []
    rows = []
    for name in args.variants:
        label, overrides = VARIANTS[name]
        metrics = train(name, out, args.config, [*overrides, *extra], args.processes)
        rows.append({"name": name, "label": label, "overrides": overrides + extra,
                     "metrics": {k: metrics[k] for k in (*KEYS, "train_seconds", "train_time_s") if k in metrics}})
    from xmtc.io import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps({"config": args.config, "variants": rows}, indent=2) + "\n")
    atomic_write_text(out / "results.md", table(rows))
    plot(rows, out / "results.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
