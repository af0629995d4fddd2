"""A run's life beyond the happy path, through the launcher users run: divergence (a NaN loss, weights or scores),
Ctrl-C before and during training, its output directory moved away, and its progress on a terminal or in a log file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import ROOT, env, stderr_on_a_terminal, train_cmd

pytestmark = pytest.mark.slow


def test_a_last_step_with_nan_scores_is_set_aside_and_resume_starts_before_it(tmp_path):
    out = tmp_path / "run"

    def train(*overrides):
        return subprocess.run(train_cmd(out, "--train.eval_every", "0", *overrides, kind="python"), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=600)

    assert train("--train.max_steps", "1").returncode == 0
    # Resumed for one more step at lr 1e30: a finite loss, then weights of ~1e30 (finite) whose scores are NaN. The end
    # of training saved step 2 first: it is set aside and `latest` names step 1 again (keep_checkpoints 1 had not
    # removed step 1: the last step's tag is pruned only after its evaluations).
    diverged = train("--train.max_steps", "2", "--train.lr", "1e30", "--train.resume", "true", "--train.keep_checkpoints", "1")
    assert diverged.returncode == 2 and "Traceback" not in diverged.stderr, diverged.stderr[-2000:]
    assert diverged.stderr.strip().splitlines()[-1] == (
        "error: the model's scores are NaN at the evaluation of step 2: the run diverged in its last update (lower "
        "train.lr, raise train.warmup_steps or set deepspeed.gradient_clipping); its checkpoint is set aside as "
        f"step2.diverged1; the newest checkpoint is {out / 'checkpoints' / 'step1'}")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step1"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step1", "step2.diverged1"]
    # Resumed at the config's lr, from step 1: it trains step 2 and finishes; keep_checkpoints 1 then leaves step 2 only.
    finished = train("--train.max_steps", "2", "--train.resume", "true", "--train.keep_checkpoints", "1")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 2
    assert "train.keep_checkpoints 1: removed checkpoint step1" in finished.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step2", "step2.diverged1"]


def test_training_shows_a_bar_on_a_terminal_and_step_lines_in_a_log_file(tmp_path):
    # Rank 0's tqdm bar (step, loss, samples/s, ETA) on a terminal; in a log file (a SLURM output file) a plain line
    # per log step instead. Before, the bar went into the file too: one line of carriage returns, no step lines.
    rc, text = stderr_on_a_terminal(train_cmd(tmp_path / "tty", "--train.max_steps", "12", "--train.progress", "true",
                                              kind="python"), columns=160)
    assert rc == 0, text[-3000:]
    assert re.search(r"train: 100%.*12/12 \[[0-9:]+<00:00.*loss=[0-9.]+, lr=.*samples_s=[0-9]+", text), text[-3000:]

    log = tmp_path / "train.log"
    with open(log, "w") as f:
        logged = subprocess.run(train_cmd(tmp_path / "file", "--train.max_steps", "12", "--train.progress", "true", kind="python"),
                                cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert logged.returncode == 0, text[-3000:]
    assert "\r" not in text and "12/12 [" not in text, text[-3000:]
    steps = [int(m) for m in re.findall(r"^step (\d+)/12 loss [0-9.]+ samples_s [0-9]+", text, flags=re.M)]
    assert steps == [5, 10, 12], text[-3000:]


def test_ctrl_c_checkpoints_at_the_end_of_the_step_and_a_second_one_stops_at_once(tmp_path):
    # Before, Ctrl-C was a KeyboardInterrupt traceback (of every rank) and the steps since the last save were lost.
    from xmtc.stopping import StopSignal

    previous = signal.getsignal(signal.SIGINT)
    stop = StopSignal()
    try:
        stop.install()
        with pytest.raises(KeyboardInterrupt):  # before the training loop: nothing to save yet
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        stop.in_loop = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # the deepspeed launcher's SIGTERM after the Ctrl-C: the first one decides
        time.sleep(0.1)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, "--train.max_steps", "100000", "--train.save_every", "5", kind="python"),
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step5").exists():
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 5"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted: a checkpoint at the end of this step" in stderr, stderr[-2000:]
    line = next(x for x in stdout.splitlines() if x.startswith("interrupted: checkpoint at step"))
    step = int(line.split()[4])
    assert line.endswith("exiting with 130 (continue with --train.resume true)")
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step{step}" and 5 <= step < 100000
    assert not (out / "final_metrics.json").exists()


def test_a_run_whose_output_dir_is_moved_away_stops_and_writes_nothing_more_there(tmp_path):
    # Before, the run's next writes (train_log.jsonl, metrics, DeepSpeed's save, each making its parents) rebuilt a
    # partial run directory (no config.json, labels or tokenizer) and the run ended with 0.
    out, moved = tmp_path / "run", tmp_path / "moved"
    proc = subprocess.Popen(train_cmd(out, "--train.max_steps", "100000", "--train.log_every", "5", kind="python"),
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "train_log.jsonl").exists() and (out / "train_log.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "training did not log step 5"
        time.sleep(0.1)
    os.rename(out, moved)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stdout[-2000:] + stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: train.output_dir {re.escape(str(out))} was removed, moved or replaced during training "
                        r"\(its .xmtc-run.lock is not the one this run holds\): the run stops at step (\d+), before the "
                        r"log of step \1, and writes nothing more there", last), last
    assert not out.exists()
    logged = [json.loads(x)["step"] for x in (moved / "train_log.jsonl").read_text().splitlines()]
    assert logged and logged == list(range(5, 5 * len(logged) + 1, 5)) and int(re.search(r"step (\d+)", last)[1]) == logged[-1] + 5
    assert (moved / "config.json").is_file() and not (moved / "final_metrics.json").exists()


def test_ctrl_c_before_training_is_one_sentence(tmp_path):
    # A Ctrl-C while the data loads (the trainer's handler raises KeyboardInterrupt before the loop): one sentence, 130.
    script = (
        "import sys; sys.path.insert(0, 'launch'); import train, xmtc.trainer\n"
        "def interrupted(cfg, local_rank): raise KeyboardInterrupt\n"
        "xmtc.trainer.train = interrupted\n"
        "print('rc', train.main(['--config', 'debug_xml_cnn', '--train.output_dir', sys.argv[1]]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "rc 130" in proc.stdout, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: interrupted (Ctrl-C) without a checkpoint of this step; no checkpoint was written"


def test_weights_made_nan_by_the_last_update_are_one_sentence_not_a_checkpoint_and_resume_without_a_checkpoint_says_so(tmp_path):
    # A finite loss, then an update of lr 1e39 (inf in fp32) made the weights inf and NaN: they were saved as the
    # checkpoint `latest` names (a resumed run started from them), then the evaluation's FloatingPointError was a traceback.
    proc = subprocess.run(train_cmd(tmp_path / "nan", "--train.max_steps", "1", "--train.lr", "1e39", kind="python"),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the weights are not finite after the update of step 1 (its loss was finite): the run diverged (lower "
        "train.lr, raise train.warmup_steps or set deepspeed.gradient_clipping); step 1 was not saved")
    assert not (tmp_path / "nan" / "checkpoints" / "latest").exists()
    # train.resume with no checkpoint (a mistyped output_dir) starts afresh, and says so.
    fresh = subprocess.run(train_cmd(tmp_path / "typo", "--train.max_steps", "2", "--train.resume", "true", kind="python"),
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert f"train.resume: no checkpoint in {tmp_path / 'typo' / 'checkpoints'} (no 'latest'); starting from step 0" in fresh.stdout


def test_a_checkpoint_that_cannot_be_written_is_one_sentence_and_resume_continues(tmp_path):
    # A full disk at a save: torch.save's RuntimeError ("[enforce fail at inline_container.cc] unexpected pos ...") was a
    # traceback. Here the files of step 4 go to /dev/full, which fails every write as a full disk does (ENOSPC).
    out = tmp_path / "run"
    script = (
        "import sys, torch; sys.path.insert(0, 'launch'); import train\n"
        "save = torch.save\n"
        "def full(obj, f, *a, **k): return save(obj, '/dev/full' if 'step4' in str(f) else f, *a, **k)\n"
        "torch.save = full\n"
        "sys.exit(train.main(sys.argv[1:]))\n"
    )
    args = train_cmd(out, "--train.max_steps", "6", "--train.save_every", "2", "--train.eval_every", "0", kind="python")[2:]
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    ckpt = out / "checkpoints"
    assert re.fullmatch(
        rf"error: could not write the checkpoint step4 into {re.escape(str(ckpt))} \(RuntimeError: \[enforce fail at "
        r"inline_container\.cc:\d+\] .*: a full disk, a quota or a lost mount\); [0-9.]+ GiB free there now; the run stops, "
        rf"the newest checkpoint is {re.escape(str(ckpt / 'step2'))}; continue with --train\.resume true once it can be written",
        last), last
    assert (ckpt / "latest").read_text().strip() == "step2"
    resumed = subprocess.run(train_cmd(out, "--train.max_steps", "6", "--train.save_every", "2", "--train.eval_every", "0",
                                       "--train.resume", "true", kind="python"),
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and json.loads((out / "final_metrics.json").read_text())["step"] == 6
    assert (ckpt / "latest").read_text().strip() == "step6"
    # The incomplete files of the failed save are set aside when the resumed run saves step 4 again.
    assert "checkpoint tag step4 exists from an earlier run: moved it to step4.replaced1" in resumed.stdout
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step2", "step4", "step4.replaced1", "step6"]


def test_a_log_record_that_cannot_be_written_is_one_sentence(tmp_path):
    # train_log.jsonl's writes go to /dev/full (ENOSPC, as a full disk): an OSError traceback from rank 0 before.
    out = tmp_path / "run"
    script = (
        "import sys; sys.path.insert(0, 'launch'); import train, xmtc.trainer\n"
        "append = xmtc.trainer.append_jsonl\n"
        "xmtc.trainer.append_jsonl = lambda path, obj: append('/dev/full' if 'train_log' in str(path) else path, obj)\n"
        "sys.exit(train.main(sys.argv[1:]))\n"
    )
    args = train_cmd(out, "--train.max_steps", "2", "--train.log_every", "1", kind="python")[2:]
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.fullmatch(rf"error: could not write {re.escape(str(out / 'train_log.jsonl'))} \(No space left on device\); "
                        r"[0-9.]+ GiB free there now; the run stops, no checkpoint was completed; continue with "
                        r"--train\.resume true once it can be written", proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]


def test_latest_never_names_a_tag_that_a_rank_failed_to_write(tmp_path):
    # DeepSpeed's rank 0 wrote `latest` after its own files, before the barrier that waits for the others': when rank 1
    # failed to write its part of step 4, `latest` named step 4 all the same, and a resume met the missing file.
    out = tmp_path / "run"
    wrapper = tmp_path / "full_on_rank1.py"
    wrapper.write_text(
        "import os, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'launch')!r})\n"
        "import train\n"
        "save = torch.save\n"
        "def full(obj, f, *a, **k):\n"
        "    return save(obj, '/dev/full' if os.environ['RANK'] == '1' and 'step4' in str(f) else f, *a, **k)\n"
        "torch.save = full\n"
        "sys.exit(train.main(sys.argv[1:]))\n")
    from launch_helpers import launcher

    # ZeRO-1: every rank writes its optimizer partition (at ZeRO-0 rank 0 writes all).
    args = train_cmd(out, "--train.max_steps", "6", "--train.save_every", "2", "--train.eval_every", "0",
                     "--deepspeed.zero_optimization.stage", "1")[len(launcher("deepspeed")) + 1:]
    proc = subprocess.run([*launcher("torchrun"), str(wrapper), *args], cwd=ROOT, env={**env(), "XMTC_ERROR_WAIT_S": "2"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line]
    assert any(line.startswith(f"error: rank 1: could not write the checkpoint step4 into {out / 'checkpoints'} (RuntimeError: ")
               for line in errors), errors
    assert (out / "checkpoints" / "latest").read_text().strip() == "step2"
