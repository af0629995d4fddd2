"""End to end through the real launcher: `deepspeed --num_gpus 2 launch/train.py --config
debug_xml_cnn` with and without `--parallel.label_shards 2` (gloo CPU ranks), then re-sharding
the sharded run's checkpoint for xmtc.evaluate / xmtc.predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shard_workers import free_port

ROOT = Path(__file__).resolve().parents[2]


def launch(out: Path, cache: Path, *overrides: str, config: str = "debug_xml_cnn") -> dict:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port()), "--num_gpus", "2",
           "launch/train.py", "--config", config, "--train.output_dir", str(out),
           "--data.cache_dir", str(cache), *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "final_metrics.json").read_text())


def module(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_sharded_run_matches_unsharded_and_reshards_for_predict(tmp_path):
    cache = tmp_path / "cache"
    plain = launch(tmp_path / "plain", cache)
    sharded = launch(tmp_path / "sharded", cache, "--parallel.label_shards", "2")
    assert sharded["step"] == plain["step"] == 40
    assert sharded["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)

    run = tmp_path / "sharded"
    tag_dir = run / "checkpoints" / "step40"
    assert sorted(p.name for p in tag_dir.glob("mp_rank_*")) == ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    assert json.loads((tag_dir / "label_shards.json").read_text())["label_ranges"] == [[0, 100], [100, 200]]

    out = module("xmtc.parallel.reshard", "--run", str(run), "--to", "1")
    assert "step40-shards1" in out.stdout
    unsharded = run / "checkpoints" / "step40-shards1"
    assert [p.name for p in unsharded.glob("mp_rank_*")] == ["mp_rank_00_model_states.pt"]
    assert (tag_dir / "label_shards.json").is_file()  # the source tag is untouched

    # The unsharded top-k of the re-sharded weights gives the metrics the sharded top-k gave in training.
    metrics_file = tmp_path / "metrics.json"
    module("xmtc.evaluate", "--run", str(run), "--tag", "step40-shards1", "--json", str(metrics_file))
    metrics = json.loads(metrics_file.read_text())
    for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
        assert metrics[key] == pytest.approx(sharded[key], abs=1e-9), key

    texts = tmp_path / "texts.txt"
    texts.write_text("the quick brown fox\nlabels and words of a synthetic document\nzzz\n")
    from_sharded = module("xmtc.predict", "--run", str(run), "--texts", str(texts), "--k", "5").stdout
    from_unsharded = module("xmtc.predict", "--run", str(run), "--tag", "step40-shards1",
                            "--texts", str(texts), "--k", "5").stdout
    assert from_sharded == from_unsharded and len(from_sharded.splitlines()) == 3



@pytest.mark.slow
def test_zero2_sharded_run_resharded_midway_resumes_unsharded(tmp_path):
    """2 shards under ZeRO-2 for 40 steps; its step-20 checkpoint re-sharded to 1 and resumed in the
    same run directory under ZeRO-1 (ZeRO now partitions over 2 data-parallel ranks instead of 1)
    ends where the uninterrupted run ended. The resumed run's step40 replaces the sharded one's,
    which is set aside, not mixed with it."""
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    sharded = launch(run, cache, "--parallel.label_shards", "2", "--deepspeed.zero_optimization.stage", "2")
    ckpt = run / "checkpoints"
    assert sorted(p.name for p in (ckpt / "step20").glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"]

    module("xmtc.parallel.reshard", "--run", str(run), "--tag", "step20", "--to", "1", "--set-latest")
    assert (ckpt / "latest").read_text() == "step20-shards1"
    resumed = launch(run, cache, "--deepspeed.zero_optimization.stage", "1", "--train.resume", "true")
    assert resumed["step"] == sharded["step"] == 40
    assert resumed["train_loss"] == pytest.approx(sharded["train_loss"], abs=1e-5)
    for key in ("P@1", "P@5", "nDCG@5"):
        assert resumed[key] == pytest.approx(sharded[key], abs=1e-6), key

    assert (ckpt / "step40.replaced1" / "label_shards.json").is_file()  # the sharded run's, intact
    assert sorted(p.name for p in (ckpt / "step40.replaced1").glob("mp_rank_*")) == [
        "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    new = ckpt / "step40"
    assert [p.name for p in new.glob("mp_rank_*")] == ["mp_rank_00_model_states.pt"]
    assert not (new / "label_shards.json").exists()
    assert sorted(p.name for p in new.glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.mark.slow
def test_sharded_sgm_resumes_from_its_resharded_zero2_checkpoint_under_zero0(tmp_path):
    """SGM's label head (output projection, bias and label embeddings) in 2 shards under ZeRO-2; the
    step-20 tag re-sharded (to 2 again: SGM's global batch depends on the shard count) and resumed
    under ZeRO-0 ends where the uninterrupted run ended: each rank loads its own shard's state."""
    cache = tmp_path / "cache"
    common = ("--parallel.label_shards", "2", "--train.save_every", "20")
    run = tmp_path / "run"
    whole = launch(run, cache, *common, "--deepspeed.zero_optimization.stage", "2", config="debug_sgm")
    module("xmtc.parallel.reshard", "--run", str(run), "--tag", "step20", "--to", "2", "--set-latest")
    resumed = launch(run, cache, *common, "--deepspeed.zero_optimization.stage", "0", "--train.resume", "true",
                     config="debug_sgm")
    assert resumed["step"] == whole["step"] == 60
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-6)
    assert resumed["micro_f1"] == pytest.approx(whole["micro_f1"], abs=1e-9)
