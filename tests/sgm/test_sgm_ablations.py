"""scripts/sgm_ablations.py: end to end on the debug config (two variants through the real launcher,
the table, the plot, a second call that reuses the finished runs), and --combine of two seeds' sweeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("sgm_ablations", ROOT / "scripts" / "sgm_ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ablation_sweep_trains_each_variant_once_and_writes_table_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    script = load_script()
    out = tmp_path / "ablations"
    assert script.main(["--config", "debug_sgm", "--variants", "full", "no_mask", "--out", str(out), "--seed", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["variants"]}
    assert rows["no_mask"]["overrides"] == ["--sgm.mask", "false", "--train.seed", "3"]
    assert json.loads((out / "no_mask" / "config.json").read_text())["sgm"]["mask"] is False
    assert json.loads((out / "full" / "config.json").read_text())["sgm"]["mask"] is True
    assert {json.loads((out / v / "config.json").read_text())["train"]["seed"] for v in rows} == {3}
    for r in rows.values():
        m = r["metrics"]
        assert 0.0 < m["micro_f1"] <= 1.0 and 0.0 <= m["hamming_loss"] < 0.1 and m["train_seconds"] > 0
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| SGM + global embedding (adaptive gate) | ")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    capsys.readouterr()
    before = (out / "full" / "final_metrics.json").stat().st_mtime_ns
    assert script.main(["--config", "debug_sgm", "--variants", "full", "--out", str(out)]) == 0
    assert "full: already trained" in capsys.readouterr().out
    assert (out / "full" / "final_metrics.json").stat().st_mtime_ns == before


def fake_sweep(directory: Path, seed: int, metrics: dict[str, dict[str, float]]) -> Path:
    """A finished sweep as the script leaves it: results.json plus each variant's resolved config."""
    script = load_script()
    rows = []
    for name, m in metrics.items():
        (directory / name).mkdir(parents=True)
        (directory / name / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
        rows.append({"name": name, "label": script.VARIANTS[name][0], "overrides": [], "metrics": m})
    (directory / "results.json").write_text(json.dumps({"config": "sgm_reuters", "variants": rows}))
    return directory


def metrics(f1: float, hamming: float, p1: float) -> dict[str, float]:
    return {"micro_f1": f1, "micro_precision": f1 + 0.01, "micro_recall": f1 - 0.01, "hamming_loss": hamming, "P@1": p1}


def test_combine_reports_each_seed_and_the_mean_of_the_shared_variants(tmp_path, capsys):
    script = load_script()
    a = fake_sweep(tmp_path / "s0", 0, {"full": metrics(0.87, 0.0035, 0.92), "no_mask": metrics(0.865, 0.0037, 0.923),
                                        "no_ge": metrics(0.85, 0.0040, 0.91)})
    b = fake_sweep(tmp_path / "s1", 1, {"no_mask": metrics(0.861, 0.0039, 0.925), "full": metrics(0.868, 0.0036, 0.93)})
    out = tmp_path / "both"
    assert script.main(["--combine", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| variant | micro-F1 (seed 0 / seed 1) | mean | hamming loss (seed 0 / seed 1) |")
    # no_ge is missing from the seed-1 sweep: left out; the first sweep's order is kept
    assert md[2:] == ["| SGM + global embedding (adaptive gate) | 0.8700 / 0.8680 | 0.8690 | 0.00350 / 0.00360 | 0.00355 | 0.925 |",
                      "| SGM + GE without the masked softmax | 0.8650 / 0.8610 | 0.8630 | 0.00370 / 0.00390 | 0.00380 | 0.924 |"]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and [r["name"] for r in results["variants"]] == ["full", "no_mask"]
    assert results["variants"][1]["mean"]["micro_f1"] == pytest.approx(0.863)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md[2] in capsys.readouterr().out

    with pytest.raises(SystemExit, match="results.json does not exist"):
        script.main(["--combine", str(a), str(tmp_path / "nowhere"), "--out", str(out)])
    c = fake_sweep(tmp_path / "s2", 2, {"no_sort": metrics(0.86, 0.0037, 0.93)})
    with pytest.raises(SystemExit, match="no variant in common"):
        script.main(["--combine", str(a), str(c), "--out", str(out)])
