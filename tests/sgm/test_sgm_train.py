"""SGM through the launchers users run: debug_sgm on 2 gloo processes, the SGM code's data format,
and a 2-rank label-sharded run against the same run unsharded on one process."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from launch_helpers import ROOT, env

pytestmark = pytest.mark.slow


def train(out: Path, *overrides: str, processes: int = 2, config: str = "debug_sgm") -> dict:
    from xmtc.distributed import free_port

    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port())] if processes == 2 else [sys.executable]
    cmd = [*launcher, "launch/train.py", "--config", config, "--train.output_dir", str(out),
           "--data.cache_dir", str(out.parent / "cache"), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "final_metrics.json").read_text())


def test_debug_sgm_trains_on_two_processes_and_writes_set_metrics(tmp_path):
    final = train(tmp_path / "run")
    assert final["step"] == 60 and final["num_docs"] == 200  # every test document counted once
    for key in ("micro_f1", "micro_precision", "micro_recall", "hamming_loss", "P@1", "train_loss"):
        assert key in final
    # Predicting nothing scores hamming loss = labels per document / labels = 2 / 30.
    assert final["hamming_loss"] < 0.05
    assert final["micro_f1"] > 0.4
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step60"


def test_zero3_gathers_the_decoder_whole_and_matches_zero0(tmp_path):
    """Ranks decode different numbers of steps; ZeRO-3 must gather the decoder as one leaf."""
    runs = {stage: train(tmp_path / f"z{stage}", "--train.max_steps", "12", "--train.save_every", "0",
                         "--deepspeed.zero_optimization.stage", str(stage))
            for stage in (0, 3)}
    assert runs[3]["step"] == runs[0]["step"] == 12
    assert runs[3]["train_loss"] == pytest.approx(runs[0]["train_loss"], rel=1e-4)
    assert runs[3]["micro_f1"] == pytest.approx(runs[0]["micro_f1"], abs=1e-6)


def write_sgm_corpus(root: Path, seed: int = 0) -> dict[str, list[list[str]]]:
    """{train,valid,test}.src/.tgt as the SGM code ships them: tokenized words, space-separated labels."""
    rng = random.Random(seed)
    labels = [f"topic-{c}" for c in "abcdefghijkl"]
    keywords = {name: [f"{name[-1]}{i}word" for i in range(3)] for name in labels}
    noise = [f"noise{i}" for i in range(200)]
    out = {}
    for split, n in (("train", 400), ("valid", 40), ("test", 60)):
        src, tgt = [], []
        for _ in range(n):
            chosen = rng.sample(labels, rng.choice([1, 1, 2, 3]))
            words = [w for name in chosen for w in keywords[name]] + rng.sample(noise, 12)
            rng.shuffle(words)
            src.append(" ".join(words))
            tgt.append(" ".join(chosen))
        (root / f"{split}.src").write_text("\n".join(src) + "\n")
        (root / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
        out[split] = [t.split() for t in tgt]
    return out


def test_sgm_code_format_trains_through_the_trainer(tmp_path):
    data = tmp_path / "aapd_like"
    data.mkdir()
    splits = write_sgm_corpus(data)
    out = tmp_path / "run"
    final = train(out, "--data.format", "sgm", "--data.path", str(data), "--data.max_len", "32",
                  "--train.max_steps", "120", "--train.lr", "0.01", "--sgm.beam_size", "1", processes=1)
    assert final["num_docs"] == 60
    names = (out / "labels.txt").read_text().split()
    assert sorted(names) == sorted({x for row in splits["train"] for x in row})
    # Each label owns three keywords: a model that read the files right separates them.
    assert final["micro_f1"] > 0.8


def test_label_sharded_run_matches_the_unsharded_run(tmp_path):
    """2 ranks splitting the labels read one batch per step, like one unsharded process."""
    steps = ["--train.max_steps", "20", "--train.save_every", "0"]
    sharded = train(tmp_path / "sharded", *steps, "--parallel.label_shards", "2")
    plain = train(tmp_path / "plain", *steps, processes=1)
    assert sharded["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    assert sharded["num_docs"] == plain["num_docs"] == 200  # the shard group decodes each document once, together
    for key in ("micro_f1", "hamming_loss", "P@1"):
        assert sharded[key] == pytest.approx(plain[key], abs=0.011), key
    layout = json.loads((tmp_path / "sharded" / "checkpoints" / "step20" / "label_shards.json").read_text())
    assert layout["num_labels"] == 31 and layout["label_ranges"] == [[0, 16], [16, 31]]  # 30 labels + EOS
    assert "decoder.label_head.embedding" in layout["sharded"]
