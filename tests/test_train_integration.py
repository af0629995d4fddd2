"""End to end through the launchers users run: 2 gloo CPU processes training the debug config.

ZeRO 0-3 must agree (fp32, the same global batches), a run stopped by a signal and resumed must end
exactly like an uninterrupted one, and predict/evaluate must reproduce the run's own evaluation.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import ROOT, env, losses, run_train, shm_workspaces, stderr_on_a_terminal, train_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def zero0(runs):
    out = runs / "zero0"
    before = shm_workspaces()
    final = run_train(out, "--train.eval_every", "20")
    # DeepSpeed's CPU allreduce leaves a 69 MB /dev/shm file per rank unless the trainer unlinks it.
    leaked = shm_workspaces() - before
    assert not leaked, f"left in /dev/shm: {sorted(leaked)}"
    return out, final


def test_loss_falls_and_metrics_are_written(zero0):
    out, final = zero0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40]
    first_loss = records[0]["train_loss"]
    assert final["train_loss"] < first_loss
    for key in ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5", "PSnDCG@1", "PSnDCG@5", "macro_f1",
                "hamming_loss", "micro_precision", "micro_recall", "micro_f1", "samples_per_s", "epoch"):
        assert key in final
    assert final["num_docs"] == 200  # every test document counted exactly once across the 2 ranks
    # 200 labels, ~3 per document: the most frequent label alone would score far lower.
    assert final["P@1"] > 0.2
    assert (out / "config.json").is_file() and (out / "checkpoints" / "latest").read_text().strip() == "step40"


@pytest.mark.parametrize("stage, kind", [(1, "deepspeed"), (2, "torchrun"), (3, "deepspeed")])
def test_zero_stages_agree(zero0, runs, stage, kind):
    _, reference = zero0
    final = run_train(runs / f"zero{stage}", "--deepspeed.zero_optimization.stage", str(stage), kind=kind)
    assert final["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert final["P@1"] == pytest.approx(reference["P@1"], abs=0.011)


def test_signal_checkpoints_and_resume_is_exact(zero0, runs):
    _, reference = zero0
    out = runs / "stopped"
    cmd = train_cmd(out, "--train.save_every", "5", "--train.eval_every", "20")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import psutil

    deadline = time.time() + 300
    while not (out / "checkpoints" / "step5").exists():
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 5"
        time.sleep(0.2)
    # Only the ranks: the launchers would die of SIGUSR1's default action (and `deepspeed` exits 0 then).
    for child in psutil.Process(proc.pid).children(recursive=True):
        if "--local_rank=" in " ".join(child.cmdline()):
            child.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    stopped_at = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 5 <= stopped_at < 40
    assert not (out / "final_metrics.json").exists()

    # train.keep_checkpoints prunes the stopped run's tags too (those up to its step; `latest` and the newest stay).
    final = run_train(out, "--train.save_every", "5", "--train.eval_every", "20", "--train.resume", "true",
                      "--train.keep_checkpoints", "2")
    assert final["step"] == 40
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step35", "step40"]
    # Bit for bit on CPU (fp32, gloo): the same data order, schedule and dropout masks, the same sums.
    assert final["train_loss"] == reference["train_loss"]
    timings = ("samples_per_s", "train_time_s", "train_samples_per_s", "peak_rss_gb")
    assert {k: v for k, v in final.items() if k not in timings} == {k: v for k, v in reference.items() if k not in timings}
    # Each evaluation logged once, whichever run logged it, with the uninterrupted run's losses.
    assert losses(out) == losses(zero0[0]) and len(losses(out)) == 2
    # The training log too: every log step once (those after the checkpoint dropped and trained again), bit for bit.
    logged = [(r["step"], r["train_loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]
    assert logged == [(r["step"], r["train_loss"]) for r in map(json.loads, (zero0[0] / "train_log.jsonl").read_text().splitlines())]
    assert [s for s, _ in logged] == list(range(5, 45, 5))


def test_predict_and_evaluate_round_trip(zero0, runs, tmp_path):
    out, final = zero0
    texts = tmp_path / "texts.txt"
    from xmtc.config import load_config
    from xmtc.data import load_corpus
    from xmtc.data.synthetic import generate_synthetic

    cfg = load_config(str(out / "config.json"))
    test_split = generate_synthetic(cfg.synthetic).splits["test"]
    test_texts = test_split.texts
    corpus = load_corpus(cfg.data, cfg.synthetic)
    assert corpus.cache_hit

    evaluated = subprocess.run([sys.executable, "-m", "xmtc.evaluate", "--run", str(out), "--json", str(tmp_path / "m.json")],
                               cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("P@1", "P@5", "nDCG@3", "PSP@5", "PSnDCG@5", "micro_f1", "macro_f1", "hamming_loss"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-6), key
    assert "P@1" in evaluated.stdout and f"{out}: checkpoint step40 (latest)\n" in evaluated.stderr

    # The same run scored on files of the user's: the first 50 test documents as texts + labels files.
    (tmp_path / "t.txt").write_text("\n".join(test_texts[:50]) + "\n")
    (tmp_path / "l.txt").write_text("\n".join(" ".join(x) for x in test_split.labels[:50]) + "\n")
    on_files = subprocess.run([sys.executable, "-m", "xmtc.evaluate", "--run", str(out), "--texts", str(tmp_path / "t.txt"),
                               "--labels", str(tmp_path / "l.txt"), "--json", str(tmp_path / "f.json")],
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert on_files.returncode == 0, on_files.stderr
    assert json.loads((tmp_path / "f.json").read_text())["num_docs"] == 50
    # An empty line in the user's files: stopped with the option that skips it, which then gives 49 documents.
    (tmp_path / "t.txt").write_text("\n".join(test_texts[:10] + [""] + test_texts[11:50]) + "\n")
    args = ["xmtc.evaluate", "--run", str(out), "--texts", str(tmp_path / "t.txt"), "--labels", str(tmp_path / "l.txt")]
    stopped = _module(*args)
    assert stopped.returncode == 2 and stopped.stderr.strip().endswith("fix it or pass --bad-lines skip to skip such documents"), stopped.stderr
    skipped = _module(*args, "--bad-lines", "skip", "--json", str(tmp_path / "s.json"))
    assert skipped.returncode == 0 and json.loads((tmp_path / "s.json").read_text())["num_docs"] == 49, skipped.stderr

    texts.write_text("\n".join(test_texts[:2] + [""] + test_texts[2:5]) + "\n")  # line 3 empty
    predicted = subprocess.run([sys.executable, "-m", "xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "3"],
                               cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.splitlines()
    assert len(lines) == 6 and lines[2] == "" and "1 empty or undecodable line(s)" in predicted.stderr
    del lines[2]
    label_names = set((out / "labels.txt").read_text().split())
    for line in lines:
        pairs = [p.rsplit(":", 1) for p in line.split()]
        assert len(pairs) == 3 and all(name in label_names for name, _ in pairs)
        scores = [float(s) for _, s in pairs]
        assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    bad_k = subprocess.run([sys.executable, "-m", "xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "0"],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert bad_k.returncode == 2 and bad_k.stderr.strip() == "error: --k must be at least 1, got 0"
    texts.write_text("")
    (tmp_path / "p.txt").write_text("an earlier file")
    empty = subprocess.run([sys.executable, "-m", "xmtc.predict", "--run", str(out), "--texts", str(texts), "--out", str(tmp_path / "p.txt")],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert empty.returncode == 0 and (tmp_path / "p.txt").read_text() == "", empty.stderr  # no lines in, none out


def evaluate_run(out: Path, tmp_path: Path, *args: str) -> dict:
    target = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    proc = subprocess.run([sys.executable, "-m", "xmtc.evaluate", "--run", str(out), "--json", str(target), *args],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(target.read_text())


def test_model_selection_tests_the_best_validation_step(runs, tmp_path):
    """ZeRO-3 on 2 ranks, a 20% hold-out, micro-F1 judged every 5 steps, stopped at 20 and resumed to 40."""
    out = runs / "selected"
    common = ("--deepspeed.zero_optimization.stage", "3", "--data.valid_fraction", "0.2", "--train.select_metric", "micro_f1",
              "--train.eval_every", "5", "--train.lr", "0.03")
    run_train(out, *common, "--train.max_steps", "20")
    first_best = json.loads((out / "checkpoints" / "best.json").read_text())
    (out / "checkpoints" / "best-step15.replaced1").mkdir()  # what a crash between best.json and the old copy's removal leaves
    final = run_train(out, *common, "--train.resume", "true")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid" and r["step"] > 0]
    # Steps 5..20 from the first run (20 twice: its end and the resumed run's start is not re-evaluated), 25..40 after.
    assert sorted({r["step"] for r in valid}) == list(range(5, 45, 5))
    assert all(r["num_docs"] == 320 for r in valid)  # 20% of the 1,600 training documents, each counted once
    best_value = max(r["micro_f1"] for r in valid)
    best_step = min(r["step"] for r in valid if r["micro_f1"] == best_value)
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == best_step and best["value"] == pytest.approx(best_value) and best["metric"] == "micro_f1"
    assert best_value >= first_best["value"]
    # This config (lr 0.03) peaks early and then degrades: selection picks a step before the last one.
    assert best_step < 40
    assert final["selected_step"] == best_step and final["valid_micro_f1"] == pytest.approx(best_value)
    assert final["split"] == "test" and final["num_docs"] == 200
    # Only the selected copy is kept; the end-of-run checkpoint stays `latest` for resuming.
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("best-step"))
    assert kept == [best["tag"]] and (out / "checkpoints" / "latest").read_text().strip() == "step40"

    # The run's test numbers are those of the selected weights: evaluate (default: the selection) agrees,
    # and the last step's weights score differently.
    selected = evaluate_run(out, tmp_path)
    last = evaluate_run(out, tmp_path, "--tag", "step40")
    for key in ("P@1", "nDCG@3", "micro_f1", "hamming_loss"):
        assert selected[key] == pytest.approx(final[key], abs=1e-6), key
    assert (last["micro_f1"], last["P@1"]) != (selected["micro_f1"], selected["P@1"])
    # ZeRO-3's reassembly prints its progress: to stderr, not among the predictions.
    (tmp_path / "two.txt").write_text("alpha beta\ngamma delta\n")
    predicted = subprocess.run([sys.executable, "-m", "xmtc.predict", "--run", str(out), "--texts", str(tmp_path / "two.txt"), "--k", "2"],
                               cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0 and "zero checkpoint" in predicted.stderr.lower(), predicted.stderr[-2000:]
    assert f"{out}: checkpoint {best['tag']} (selected by valid micro_f1 {best['value']:.4f})\n" in predicted.stderr
    assert [len(line.split()) for line in predicted.stdout.splitlines()] == [2, 2], predicted.stdout


@pytest.mark.parametrize("override, message", [
    (["--deepspeed.train_micro_batch_size_per_gpu", "100000"], "fewer than one global batch of 200000"),
    (["--deepspeed.zero_optimisation", '{"stage": 2}'], "did you mean 'deepspeed.zero_optimization'?"),
    # Met while each rank reads the data (it was said by every rank).
    (["--data.format", "xmtc_text", "--data.path", "/nonexistent/xmtc-data"], "data.path '/nonexistent/xmtc-data' is not a directory"),
    # Met while each rank reads the config, before any process group exists (it was said by every rank).
    (["--train.max_step", "3"], "config key 'train.max_step' is unknown"),
])
def test_an_error_every_rank_meets_is_said_once(tmp_path, override, message):
    # Found after the data is read, alike on both ranks: rank 0 says it, rank 1 hears that through the store and exits with 2 without repeating it.
    proc = subprocess.run(train_cmd(tmp_path / "run", "--train.max_steps", "2", *override), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "run").exists()


def deepspeed_version() -> str:
    from importlib.metadata import version

    return version("deepspeed")


def test_user_errors_exit_2_with_one_sentence(tmp_path):
    cases = [
        (["--config", "no_such_config"], "config 'no_such_config' is neither a file nor a config"),
        (["--config", "debug_xml_cnn", "--train.max_step", "3"], "config key 'train.max_step' is unknown"),
        (["--config", "debug_xml_cnn", "--data.format", "xmtc_text", "--data.path", str(tmp_path / "nope")], str(tmp_path / "nope")),
        (["--config", "debug_xml_cnn", "--train.select_metric", "micro_f1"],
         "config key 'train.select_metric' is \"micro_f1\" but the corpus has no validation split; set data.valid_fraction"),
        (["--config", "debug_xml_cnn", "--model.kernels", "triton"], "config key 'model.kernels' is \"triton\" but this run is on the CPU"),
        (["--config", "debug_xml_cnn", "--deepspeed.zero_optimization", '{"stage": 1, "reduce_bucket_size": "big"}'],
         "config key 'deepspeed.zero_optimization.reduce_bucket_size' is \"big\": DeepSpeed " + deepspeed_version() + " refuses it "
         "(Input should be a valid integer"),
        # A key a block does not have was DeepSpeed's pydantic text, after the data and the model: now at the config's reading.
        (["--config", "debug_xml_cnn", "--deepspeed.zero_optimization", '{"stage": 1, "offload_optimizer": {"device": "cpu", "pinn_memory": true}}'],
         "config key 'deepspeed.zero_optimization.offload_optimizer.pinn_memory' is not one DeepSpeed " + deepspeed_version()
         + " knows; did you mean 'deepspeed.zero_optimization.offload_optimizer.pin_memory'?"),
        # DeepSpeed ignores a top-level key it does not know: the run would have been ZeRO 0. Close to a key DeepSpeed's
        # config reads: at the config's reading; close to none: at engine start, which sees every key the engine reads.
        (["--config", "debug_xml_cnn", "--deepspeed.zero_optimisation", '{"stage": 2}'],
         "reads: it would be ignored; did you mean 'deepspeed.zero_optimization'?"),
        (["--config", "debug_xml_cnn", "--deepspeed.xyzzy", "1"], "config key 'deepspeed.xyzzy' is not one DeepSpeed "
         + deepspeed_version() + " reads: it would be ignored"),
        # A removed feature: DeepSpeed's own error class, not a ValueError.
        (["--config", "debug_xml_cnn", "--deepspeed.nebula", '{"enabled": true}'],
         "DeepSpeed refused the config's deepspeed section: Nebula checkpointing has been removed"),
        # datasets' failure is said once: its own "Failed to read schema ..." log line is not printed before it.
        (["--config", "debug_xml_cnn", "--data.format", "table", "--data.train_file", str(tmp_path / "x.parquet"),
          "--data.test_file", str(tmp_path / "x.parquet"), "--data.cache_dir", str(tmp_path / "c")],
         f"{tmp_path / 'x.parquet'} could not be read as parquet: ArrowInvalid: Parquet magic bytes not found"),
    ]
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:  # DeepSpeed imported it after the data and model: a traceback
        cases.append((["--config", "debug_xml_cnn", "--deepspeed.tensorboard", '{"enabled": true, "output_path": "tb"}'],
                      "config key 'deepspeed.tensorboard.enabled' is true but the tensorboard package is not installed"))
    (tmp_path / "x.parquet").write_text("not parquet\n")
    for args, message in cases:
        proc = subprocess.run([sys.executable, "launch/train.py", *args, "--train.output_dir", str(tmp_path / "o")],
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1 and message in error_lines[0], proc.stderr[-2000:]
        assert "Failed to" not in proc.stderr, proc.stderr[-2000:]


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def test_predict_needs_only_the_run_directory_and_says_what_is_wrong_with_it(zero0, tmp_path):
    out, _ = zero0
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha beta gamma\nbeta delta\n")
    reference = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "2")
    assert reference.returncode == 0 and len(reference.stdout.splitlines()) == 2, reference.stderr

    # A copy of the run whose config points at data that is gone: predict reads the run's labels.txt and
    # tokenizer/, evaluate (which needs the test split) says what is missing.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data"].update(format="xmtc_text", path=str(tmp_path / "gone"))
    (moved / "config.json").write_text(json.dumps(cfg))
    alone = _module("xmtc.predict", "--run", str(moved), "--texts", str(texts), "--k", "2")
    assert alone.returncode == 0 and alone.stdout == reference.stdout, alone.stderr
    jsonl = _module("xmtc.predict", "--run", str(moved), "--texts", str(texts), "--k", "2", "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [[f"{n}:{s:.4f}" for n, s in zip(r["labels"], r["scores"])] for r in rows] == [line.split() for line in reference.stdout.splitlines()]
    evaluated = _module("xmtc.evaluate", "--run", str(moved))
    assert evaluated.returncode == 2 and evaluated.stderr.strip().startswith("error: data.path") and "gone" in evaluated.stderr

    # A label name with whitespace: the text format would be ambiguous.
    names = (moved / "labels.txt").read_text().split("\n")
    (moved / "labels.txt").write_text("\n".join(["New York", *names[1:]]))
    spaced = _module("xmtc.predict", "--run", str(moved), "--texts", str(texts))
    assert spaced.returncode == 2 and spaced.stderr.strip().splitlines()[-1] == (
        f"error: label 'New York' of {moved} holds whitespace, which would make `label:score` lines ambiguous; pass --format jsonl")
    assert _module("xmtc.predict", "--run", str(moved), "--texts", str(texts), "--format", "jsonl").returncode == 0

    # An --out that cannot be written, a config that no longer fits the checkpoint, a corrupt checkpoint.
    (tmp_path / "outdir").mkdir()
    to_dir = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--out", str(tmp_path / "outdir"))
    assert to_dir.returncode == 2 and to_dir.stderr.strip().endswith("could not be written: Is a directory"), to_dir.stderr
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["xml_cnn"]["num_filters"] = 2 * cfg["xml_cnn"]["num_filters"]
    (edited / "config.json").write_text(json.dumps(cfg))
    misfit = _module("xmtc.predict", "--run", str(edited), "--texts", str(texts), "--out", str(tmp_path / "p.txt"))
    assert misfit.returncode == 2 and "does not fit the model that" in misfit.stderr and "size mismatch" in misfit.stderr, misfit.stderr
    assert len(misfit.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.txt").exists()
    tag = (edited / "checkpoints" / "latest").read_text().strip()
    (edited / "config.json").write_text((out / "config.json").read_text())
    states = edited / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])
    for cmd in (("xmtc.predict", "--run", str(edited), "--texts", str(texts)), ("xmtc.evaluate", "--run", str(edited))):
        corrupt = _module(*cmd)
        assert corrupt.returncode == 2 and corrupt.stderr.strip().startswith(f"error: {states} is not a readable checkpoint ("), corrupt.stderr
        assert corrupt.stdout == ""


def test_evaluate_reproduces_a_bf16_run(runs, tmp_path):
    # The run evaluated bf16 weights in bf16; evaluate did so in fp32 and its nDCG@3 differed by 7e-4.
    out = runs / "bf16"
    final = run_train(out, "--train.precision", "bf16", "--train.max_steps", "60", kind="python")
    metrics = evaluate_run(out, tmp_path)
    for key in ("P@1", "P@5", "nDCG@3", "nDCG@5", "PSP@5", "micro_precision", "micro_f1", "hamming_loss"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-9), key


def test_a_run_evaluates_from_anywhere_and_other_files_without_its_data(tmp_path):
    # A run trained in a project directory with relative data paths (data.path "data", the default cache
    # .cache/xmtc): its config.json keeps them relative, corpus.json says where they start.
    from xmtc.config import load_config
    from xmtc.data.synthetic import generate_synthetic

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    splits = generate_synthetic(load_config("debug_xml_cnn").synthetic).splits
    for name in ("train", "test"):
        (project / "data" / f"{name}_texts.txt").write_text("\n".join(splits[name].texts) + "\n")
        (project / "data" / f"{name}_labels.txt").write_text("\n".join(" ".join(x) for x in splits[name].labels) + "\n")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config", "debug_xml_cnn", "--data.format", "xmtc_text",
                           "--data.path", "data", "--train.output_dir", "runs/r", "--train.max_steps", "12", "--train.eval_every", "0"],
                          cwd=project, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = project / "runs" / "r"
    final = json.loads((out / "final_metrics.json").read_text())
    record = json.loads((out / "corpus.json").read_text())
    assert record["working_directory"] == str(project) and record["train_documents"] == 1600
    counts = [0] * len(record["label_counts"])
    names = (out / "labels.txt").read_text().split("\n")[:-1]
    index = {n: i for i, n in enumerate(names)}
    for labels in splits["train"].labels:
        for name in set(labels):
            counts[index[name]] += 1
    assert record["label_counts"] == counts

    # From another working directory (the repository root, which has no data/): the run's own data and cache.
    caches = sorted(p.name for p in (project / ".cache" / "xmtc").iterdir())
    own = evaluate_run(out, tmp_path)
    for key in ("P@1", "nDCG@3", "PSP@5", "micro_f1", "hamming_loss"):
        assert own[key] == pytest.approx(final[key], abs=1e-6), key
    assert sorted(p.name for p in (project / ".cache" / "xmtc").iterdir()) == caches  # read, not rebuilt

    # The cache gone, the data still where the run trained: the cache is rebuilt there, not in this directory.
    shutil.rmtree(project / ".cache")
    evaluate_run(out, tmp_path)
    assert sorted(p.name for p in (project / ".cache" / "xmtc").iterdir()) == caches

    # The data and its cache gone: other files still evaluate (PSP@k from corpus.json's counts), to the same numbers;
    # the test split cannot, and says so.
    shutil.copy(project / "data" / "test_texts.txt", tmp_path / "t.txt")
    shutil.copy(project / "data" / "test_labels.txt", tmp_path / "l.txt")
    files = ("--texts", str(tmp_path / "t.txt"), "--labels", str(tmp_path / "l.txt"))
    with_data = evaluate_run(out, tmp_path, *files)
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".cache")
    without = evaluate_run(out, tmp_path, *files)
    assert without == with_data and without["PSP@5"] == pytest.approx(final["PSP@5"], abs=1e-6)
    gone = _module("xmtc.evaluate", "--run", str(out))
    assert gone.returncode == 2 and gone.stderr.strip().startswith("error: data.path 'data' (relative to the current directory"), gone.stderr
    assert gone.stderr.strip().endswith(f"(nor under {project}, where {out} trained)") and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    # A damaged corpus.json is as none: predict (which needs none of it) still runs.
    (out / "corpus.json").write_text(json.dumps({"label_counts": record["label_counts"]}))
    (tmp_path / "two.txt").write_text("alpha beta\ngamma\n")
    predicted = _module("xmtc.predict", "--run", str(out), "--texts", str(tmp_path / "two.txt"))
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 2, predicted.stderr
    # A run without corpus.json (written before it existed): other files need its data for the label counts.
    (out / "corpus.json").unlink()
    older = _module("xmtc.evaluate", "--run", str(out), *files)
    assert older.returncode == 2 and older.stderr.strip().startswith(
        f"error: {out} has no corpus.json (it trained before runs wrote one), so the training label counts come from its data, "
        "which could not be read: data.path 'data'"), older.stderr


def test_predict_and_evaluate_take_a_device_and_a_batch_size(zero0, tmp_path):
    out, final = zero0
    import torch

    # Batches of 7 (the last one short) score as the run's batches of 128 did.
    metrics = evaluate_run(out, tmp_path, "--batch-size", "7", "--device", "cpu")
    for key in ("P@1", "nDCG@5", "PSP@5", "micro_f1", "hamming_loss"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-6), key
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha beta gamma\nbeta delta\n\nepsilon\nzeta eta theta\n")
    whole = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "3")
    small = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "3", "--batch-size", "2", "--device", "cpu")
    assert whole.returncode == small.returncode == 0 and small.stdout == whole.stdout and len(whole.stdout.splitlines()) == 5
    for tool in (["xmtc.predict", "--texts", str(texts)], ["xmtc.evaluate"]):
        zero = _module(*tool, "--run", str(out), "--batch-size", "0")
        assert zero.returncode == 2 and zero.stderr.strip() == "error: --batch-size must be at least 1, got 0", zero.stderr
        if not torch.cuda.is_available():
            cuda = _module(*tool, "--run", str(out), "--device", "cuda")
            assert cuda.returncode == 2 and cuda.stderr.strip() == (
                'error: --device is "cuda" but no CUDA device is visible; pass --device cpu (or auto)'), cuda.stderr


def test_predict_and_evaluate_show_progress_on_a_terminal(zero0, tmp_path):
    out, _ = zero0
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha beta\n" * 30)
    for tool, unit in ((["xmtc.predict", "--texts", str(texts), "--out", str(tmp_path / "p.txt")], "30/30"),
                       (["xmtc.evaluate", "--json", str(tmp_path / "m.json")], "200/200")):
        rc, seen = stderr_on_a_terminal([sys.executable, "-m", *tool, "--run", str(out), "--batch-size", "8"])
        assert rc == 0, seen[-2000:]
        assert unit in seen and "doc" in seen, seen[-2000:]
    # Not on a terminal (a pipe, a file, CI): no bar.
    piped = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--batch-size", "8")
    assert piped.returncode == 0 and "30/30" not in piped.stderr, piped.stderr


def test_predict_and_evaluate_write_dev_stdout_to_stdout(zero0, tmp_path):
    # Both hold descriptor 1 for stderr while they load (DeepSpeed's chatter): /dev/stdout went to stderr.
    out, final = zero0
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha beta gamma\nbeta delta\n")
    plain = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "2")
    named = _module("xmtc.predict", "--run", str(out), "--texts", str(texts), "--k", "2", "--out", "/dev/stdout")
    assert named.returncode == 0 and named.stdout == plain.stdout and len(plain.stdout.splitlines()) == 2, named.stderr
    assert plain.stdout.splitlines()[0] not in named.stderr
    evaluated = _module("xmtc.evaluate", "--run", str(out), "--json", "/dev/stdout")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics, end = json.JSONDecoder().raw_decode(evaluated.stdout)
    assert metrics["P@1"] == pytest.approx(final["P@1"], abs=1e-6) and "P@1" in evaluated.stdout[end:]
    assert '"P@1"' not in evaluated.stderr


def test_predict_and_evaluate_keep_the_runs_kernel_choice(zero0, tmp_path):
    # With --device auto a GPU machine evaluates on the GPU: a run that ruled the Triton kernels out
    # (model.kernels "torch") must stay on torch there; a "triton" run loaded on the CPU falls back to torch.
    from xmtc import ops
    from xmtc.checkpoint import load_run

    out, _ = zero0
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    previous = ops.set_kernel_backend(None)
    try:
        for kernels, expected in (("torch", "torch"), ("triton", "auto"), ("auto", "auto")):
            cfg = json.loads((copy / "config.json").read_text())
            cfg["model"]["kernels"] = kernels
            (copy / "config.json").write_text(json.dumps(cfg))
            load_run(copy, need_data=False)
            assert ops.kernel_backend() == expected, kernels
    finally:
        ops.set_kernel_backend(previous)
