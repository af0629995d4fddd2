"""scripts/sgm_ablations.py end to end on the debug config: two variants through the real launcher,
the table, the plot, and a second call that reuses the finished runs instead of training again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def load_script():
    spec = importlib.util.spec_from_file_location("sgm_ablations", ROOT / "scripts" / "sgm_ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
