"""What a run does to its output directory: a fresh run sets another run's files aside, a failing run
writes nothing, a resumed run logs each evaluation once and a finished one is left as it is, and a
diverging run stops with one sentence. One plain-python process each, on the debug config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from launch_helpers import ROOT, env

from xmtc.checkpoint import check_corpus_matches_run, checkpoint_used, keep_metrics_through, prune_step_tags
from xmtc.trainer import dropout_seed


def train(out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/train.py", "--config", "debug_xml_cnn", "--train.output_dir", str(out),
           "--data.cache_dir", str(out.parent / "cache"), "--train.max_steps", "10", "--train.eval_every", "5",
           "--train.save_every", "5", "--train.progress", "false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_log(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def test_run_directory_lifecycle(tmp_path):
    run = tmp_path / "run"
    train(run)
    first = records(run)
    assert [(r["split"], r["step"]) for r in first] == [("test", 5), ("test", 10)]
    # The training log: a record per log step (debug_xml_cnn logs every 5), the loss the evaluations carry.
    first_log = train_log(run)
    assert first_log == [(5, first[0]["train_loss"]), (10, first[1]["train_loss"])]
    assert set(json.loads((run / "train_log.jsonl").read_text().splitlines()[0])) == {"step", "epoch", "train_loss", "lr", "samples_per_s", "peak_rss_gb"}
    final = (run / "final_metrics.json").read_text()
    # Checkpoints hold plain Python and torch objects: reading them needs no xmtc class.
    import zipfile

    for pt in (run / "checkpoints").rglob("*.pt"):
        with zipfile.ZipFile(pt) as z:
            pickles = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        assert pickles and not any(b"xmtc" in p for p in pickles), pt

    # A failing run (its check comes after the corpus is read) leaves the directory untouched.
    config = (run / "config.json").read_bytes()
    failed = train(run, "--deepspeed.train_micro_batch_size_per_gpu", "100000", "--model.embed_dim", "48", check=False)
    assert failed.returncode == 2 and "fewer than one global batch" in failed.stderr
    assert (run / "config.json").read_bytes() == config and records(run) == first

    # Resuming a finished run does nothing: no step set aside and written again, no record repeated.
    train(run, "--train.resume", "true")
    assert records(run) == first and (run / "final_metrics.json").read_text() == final
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step10", "step5"]

    # Resuming from step 5 (as after a crash past the step-10 evaluation) logs step 10 once, identically.
    (run / "checkpoints" / "latest").write_text("step5")
    (run / "final_metrics.json").unlink()
    train(run, "--train.resume", "true")
    again = records(run)
    assert [r["step"] for r in again] == [5, 10]
    assert again[0] == first[0]
    assert {k: v for k, v in again[1].items() if k != "samples_per_s"} == {k: v for k, v in first[1].items() if k != "samples_per_s"}
    assert train_log(run) == first_log  # the resumed steps logged once, with the same losses

    # A fresh run into the directory moves the old run's files aside, all of them, under one suffix.
    train(run, "--train.seed", "3", "--train.max_steps", "5")
    assert [r["step"] for r in records(run)] == [5] and records(run)[0]["train_loss"] != first[0]["train_loss"]
    aside = {p.name for p in run.iterdir() if ".replaced" in p.name}
    assert aside == {f"{n}.replaced1" for n in ("config.json", "labels.txt", "tokenizer", "corpus.json", "metrics.jsonl", "train_log.jsonl",
                                                     "final_metrics.json", "curves.png", "checkpoints")}
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl.replaced1").read_text().splitlines()] == [5, 10]
    assert (run / "checkpoints.replaced1" / "step10").is_dir() and not (run / "checkpoints" / "step10").exists()


def test_a_resumed_run_follows_its_config(tmp_path):
    """Resumed with more steps, another learning rate and no selection: the run takes them from its config
    (as its config.json says), drops the earlier selection, and a final of fewer steps is not "finished"."""
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    valid = ("--data.valid_fraction", "0.2")
    train(run, *valid, "--train.select_metric", "micro_f1")
    assert (run / "checkpoints" / "best.json").is_file()
    longer = (*valid, "--train.max_steps", "20", "--train.lr", "0.0003")
    proc = train(run, *longer, "--train.resume", "true")
    assert "resumed with train.lr from the config, not the checkpoint's" in proc.stdout
    assert "removed the selection by micro_f1 (train.select_metric is now empty)" in proc.stdout
    assert not (run / "checkpoints" / "best.json").exists() and not list((run / "checkpoints").glob("best-step*"))
    train(fresh, *longer)
    # The 10-step run's own final evaluation stays in the history.
    assert [(r["split"], r["step"]) for r in records(run)] == [("valid", 5), ("valid", 10), ("test", 10), ("valid", 15), ("valid", 20), ("test", 20)]
    # The learning rate after step 15 is the fresh run's (0.003 would give 10 times it).
    lr_at_15 = [r["lr"] for r in records(fresh) if r["step"] == 15]
    assert [r["lr"] for r in records(run) if r["step"] == 15] == lr_at_15 and 0 < lr_at_15[0] < 0.0003
    # An extension stopped before its final evaluation: final_metrics.json is still the 10-step run's.
    final = json.loads((run / "final_metrics.json").read_text())
    (run / "final_metrics.json").write_text(json.dumps({**final, "step": 10}))
    proc = train(run, *longer, "--train.resume", "true")
    assert "nothing to do" not in proc.stdout and json.loads((run / "final_metrics.json").read_text())["step"] == 20
    # A final_metrics.json cut short: the finished run evaluates again (a ValueError traceback before), to the same numbers.
    final = json.loads((run / "final_metrics.json").read_text())
    (run / "final_metrics.json").write_text('{"P@1": 0.5')
    proc = train(run, *longer, "--train.resume", "true")
    assert f"{run / 'final_metrics.json'} cannot be read; the final evaluation runs again" in proc.stdout
    again = json.loads((run / "final_metrics.json").read_text())
    assert {k: again[k] for k in ("step", "P@1", "nDCG@5", "micro_f1", "train_loss")} == {k: final[k] for k in ("step", "P@1", "nDCG@5", "micro_f1", "train_loss")}
    # Resumed with another model shape: one sentence naming the setting, and the directory as it was.
    config = (run / "config.json").read_bytes()
    proc = train(run, *longer, "--train.resume", "true", "--model.embed_dim", "48", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and errors == [
        f"error: config key 'train.resume' is true but the checkpoint in {run / 'checkpoints'} does not fit the model this "
        "config builds; the run trained with model.embed_dim = 32 (now 48): resume with the settings it trained with"
    ], proc.stderr[-2000:]
    assert (run / "config.json").read_bytes() == config
    # Resumed on other data whose vocabulary has the same size (it loaded, and trained on ids of other words): refused.
    proc = train(run, *longer, "--train.resume", "true", "--synthetic.seed", "99", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and f"the data behind {run} changed since it trained" in errors[0], proc.stderr[-2000:]
    assert (run / "config.json").read_bytes() == config
    # A `latest` that names no checkpoint (DeepSpeed writes it in place) is one sentence, before anything is read.
    for content, what in (("", "is empty (a save was stopped while DeepSpeed wrote it)"), ("step99\n", "names 'step99', which is not a checkpoint there")):
        (run / "checkpoints" / "latest").write_text(content)
        proc = train(run, *longer, "--train.resume", "true", check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and errors == [
            f"error: {run / 'checkpoints' / 'latest'} {what}; write the tag to resume from into it "
            "(checkpoints there: step5, step10, step15, step20)"
        ], proc.stderr[-2000:]


def test_configured_settings_survive_a_checkpoint_load():
    import torch

    from xmtc.optim import configured_settings

    def make(lr, weight_decay, betas):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW([{"params": [model.weight], "weight_decay": weight_decay}, {"params": [model.bias], "weight_decay": 0.0}],
                                lr=lr, betas=betas)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))

    model, opt, sched = make(0.1, 0.01, (0.9, 0.999))
    for _ in range(3):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        sched.step()
    state = (opt.state_dict(), sched.state_dict())
    _, opt2, sched2 = make(0.02, 0.5, (0.5, 0.9))
    restore = configured_settings(opt2, sched2)
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    assert opt2.param_groups[0]["lr"] == 0.1 / 4 and opt2.param_groups[0]["weight_decay"] == 0.01  # the checkpoint's
    assert restore() == ["train.betas", "train.lr", "train.weight_decay"]
    assert [g["lr"] for g in opt2.param_groups] == [0.02 / 4] * 2 and sched2.get_last_lr() == [0.02 / 4] * 2
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.5, 0.0] and opt2.param_groups[1]["betas"] == (0.5, 0.9)
    assert sched2.last_epoch == 3 and len(opt2.state) == 2  # position and moments stay the checkpoint's
    sched2.step()
    assert opt2.param_groups[0]["lr"] == 0.02 / 5
    assert restore() == []  # nothing differs any more


def rendezvous_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("xmtc-rdzv-*")}


def test_diverging_run_stops_with_one_sentence(tmp_path):
    run = tmp_path / "run"
    before = rendezvous_dirs()
    proc = train(run, "--train.lr", "1e30", check=False)
    assert rendezvous_dirs() <= before  # a lone process's file rendezvous is removed, even on an error exit
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the training loss is nan at step" in errors[0] and "the run diverged" in errors[0]
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_keep_metrics_through(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (5, 10, 15)) + '{"step": 2')  # a cut last line
    assert keep_metrics_through(path, lambda r: r["step"] <= 10) == 2
    assert path.read_text() == '{"step": 5}\n{"step": 10}\n'
    assert keep_metrics_through(path, lambda r: True) == 0 and keep_metrics_through(tmp_path / "none", lambda r: True) == 0


def test_prune_step_tags_keeps_the_newest_and_what_is_named(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for name in ("step1", "step2", "step3", "step4", "step5", "step6", "step9", "best-step3", "step4.replaced1", "steps"):
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (ckpt / ".step0.pruning" / "sub").mkdir(parents=True)  # a prune a crash cut short
    (ckpt / "latest").write_text("step5")  # as after a run resumed from step5 that has just written step6
    (ckpt / "best.json").write_text("{}")
    # Keep 2 of the tags up to step 6: 6 and 5; step2 is protected (the selected one), step9 is past the step.
    assert prune_step_tags(ckpt, 2, 6, protect={"step6", "step2"}) == ["step1", "step3", "step4"]
    left = sorted(p.name for p in ckpt.iterdir())
    assert left == ["best-step3", "best.json", "latest", "step2", "step4.replaced1", "step5", "step6", "step9", "steps"]
    # The tag `latest` names is never removed, whatever `keep` says; nothing else to do is an empty list.
    (ckpt / "latest").write_text("step2")
    assert prune_step_tags(ckpt, 1, 6, protect={"step6"}) == ["step5"]
    assert prune_step_tags(ckpt, 1, 6, protect={"step6"}) == []
    assert sorted(p.name for p in ckpt.glob("step[0-9]")) == ["step2", "step6", "step9"]


def test_checkpoint_used_says_which_and_why_and_that_the_run_still_trains(tmp_path):
    import socket

    from xmtc.runlock import RunLock

    (tmp_path / "checkpoints").mkdir()
    assert checkpoint_used(tmp_path, None, "step10") == f"{tmp_path}: checkpoint step10 (latest)"
    (tmp_path / "checkpoints" / "best.json").write_text(json.dumps({"tag": "best-step5", "step": 5, "metric": "P@1", "value": 0.51237}))
    assert checkpoint_used(tmp_path, None, "best-step5") == f"{tmp_path}: checkpoint best-step5 (selected by valid P@1 0.5124)"
    assert checkpoint_used(tmp_path, "step10", "step10") == f"{tmp_path}: checkpoint step10 (--tag)"
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    try:  # a training run holds the directory: predict and evaluate read a checkpoint that a later one may follow
        line = checkpoint_used(tmp_path, None, "step10")
    finally:
        lock.release()
    assert line.startswith(f"{tmp_path}: checkpoint step10 (latest); the run is still training (pid {os.getpid()} on host "
                           f"{socket.gethostname()}") and line.endswith("), a later checkpoint may follow")
    assert checkpoint_used(tmp_path, None, "step10") == f"{tmp_path}: checkpoint step10 (latest)"  # released


def test_dropout_seeds_differ_per_micro_batch_and_rank():
    # 2 micro-batches a step (accumulation 2), 4 ranks, 50 steps: every (micro-batch, rank) its own masks.
    seeds = {dropout_seed(0, step * 2 + micro, rank) for step in range(50) for micro in range(2) for rank in range(4)}
    assert len(seeds) == 50 * 2 * 4
    assert dropout_seed(7, 3, 1) == 7 * 1_000_003 + 3 * 7919 + 1  # accumulation 1: the masks runs had before


def test_evaluate_refuses_a_corpus_other_than_the_trained_one(tmp_path):
    import types

    import pytest

    from xmtc.config import UserError
    from xmtc.data.tokenizer import WhitespaceTokenizer

    tokenizer = WhitespaceTokenizer(["apple", "fig"])
    (tmp_path / "labels.txt").write_text("earn\nacq\n")
    tokenizer.save(tmp_path / "tokenizer")
    corpus = types.SimpleNamespace(label_names=["earn", "acq"], tokenizer=tokenizer, cache_path=tmp_path / "c", num_labels=2)
    check_corpus_matches_run(tmp_path, corpus)
    with pytest.raises(UserError, match="its labels.txt differs"):
        check_corpus_matches_run(tmp_path, types.SimpleNamespace(**{**vars(corpus), "label_names": ["acq", "earn"]}))
    with pytest.raises(UserError, match="its tokenizer/ differs"):
        check_corpus_matches_run(tmp_path, types.SimpleNamespace(**{**vars(corpus), "tokenizer": WhitespaceTokenizer(["fig", "apple"])}))
    # A run of an earlier xmtc, whose tokenizer cut words at combining marks: the same words still match (ASCII
    # text splits as before); other words are that change, said as such, not as changed data.
    WhitespaceTokenizer(["apple", "fig"], marks=False).save(tmp_path / "tokenizer")
    check_corpus_matches_run(tmp_path, corpus)
    with pytest.raises(UserError, match="earlier xmtc whose whitespace tokenizer cut words at combining marks"):
        check_corpus_matches_run(tmp_path, types.SimpleNamespace(**{**vars(corpus), "tokenizer": WhitespaceTokenizer(["apple", "café"])}))
    with pytest.raises(UserError, match="combining marks .*; train it afresh"):
        check_corpus_matches_run(tmp_path, types.SimpleNamespace(**{**vars(corpus), "tokenizer": WhitespaceTokenizer(["apple", "cafe\u0301"])}),
                                 resuming=True)
    # Other words without a mark: the data changed, whichever xmtc the run trained with.
    with pytest.raises(UserError, match="its tokenizer/ differs"):
        check_corpus_matches_run(tmp_path, types.SimpleNamespace(**{**vars(corpus), "tokenizer": WhitespaceTokenizer(["banana", "kiwi"])}))
    # A labels.txt that is not UTF-8 (damaged): one sentence, not a UnicodeDecodeError traceback.
    (tmp_path / "labels.txt").write_bytes(b"earn\nac\xffq\n")
    with pytest.raises(UserError, match=f"{tmp_path / 'labels.txt'} is damaged \\(not UTF-8: byte 7\\)"):
        check_corpus_matches_run(tmp_path, corpus)
    # Label names as a table may give them: U+2028, U+0085 and a form feed are not line breaks of labels.txt.
    odd = types.SimpleNamespace(**{**vars(corpus), "label_names": ["Foo\u2028Bar", "a\x85b", "c\x0cd", "e\u00a0f"]})
    (tmp_path / "labels.txt").write_bytes(("\n".join(odd.label_names) + "\n").encode())
    check_corpus_matches_run(tmp_path, odd)


def test_train_entry_point_shuts_its_process_groups_down(tmp_path):
    # A caller in the same interpreter (a notebook, a sweep) can train again: main() leaves no process group,
    # after errors too. (Launched, the script then ends with xmtc.process.exit_process: tests/test_process.py.)
    script = (
        "import sys, torch.distributed as dist; sys.path.insert(0, 'launch'); import train\n"
        "common = ['--config', 'debug_xml_cnn', '--data.cache_dir', sys.argv[1] + '/cache', '--train.progress', 'false']\n"
        "ok = train.main([*common, '--train.output_dir', sys.argv[1] + '/ok', '--train.max_steps', '2'])\n"
        "print('ok', ok, dist.is_initialized())\n"
        "bad = train.main([*common, '--train.output_dir', sys.argv[1] + '/bad', '--deepspeed.train_micro_batch_size_per_gpu', '100000'])\n"
        "print('bad', bad, dist.is_initialized())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "bad "))] == ["ok 0 False", "bad 2 False"]
    assert (tmp_path / "ok" / "final_metrics.json").is_file()


def test_a_signal_as_a_finished_run_exits_does_not_kill_it(tmp_path):
    # SLURM's SIGUSR1 (or a SIGTERM) can land while a finished run's interpreter shuts down, when Python has
    # put the default action (death, exit 138) back: the run is over, so the entry point ignores them.
    import os
    import signal
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "launch/train.py", "--config", "debug_xml_cnn", "--train.output_dir", str(run),
           "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "2", "--train.progress", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "final_metrics.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    sent = 0
    while proc.poll() is None:  # one every 0.5 ms until it is gone: its whole shutdown is covered
        try:
            os.kill(proc.pid, signal.SIGUSR1)
            sent += 1
        except ProcessLookupError:
            break
        time.sleep(0.0005)
    stderr = proc.communicate(timeout=60)[1]
    assert sent > 0 and proc.returncode == 0, (sent, proc.returncode, stderr[-2000:])


def test_tag_latest_names_the_newest_checkpoint(tmp_path):
    import pytest

    from xmtc.checkpoint import resolve_tag
    from xmtc.config import UserError

    (tmp_path / "step5").mkdir()
    (tmp_path / "step10").mkdir()
    (tmp_path / "latest").write_text("step10\n")
    (tmp_path / "best.json").write_text('{"tag": "step5", "step": 5, "metric": "P@1", "value": 0.5}')
    # `--tag latest` was refused ("checkpoint tag 'latest' does not exist"): it is the file naming the newest tag.
    assert resolve_tag(tmp_path, "latest", prefer_best=True) == "step10"
    assert resolve_tag(tmp_path, None, prefer_best=True) == "step5" and resolve_tag(tmp_path, "step5") == "step5"
    # A mistyped --tag names the tags there are, in step order (the one a prune is removing is not one).
    (tmp_path / "best-step7").mkdir()
    (tmp_path / ".step1.pruning").mkdir()
    with pytest.raises(UserError) as e:
        resolve_tag(tmp_path, "step50")
    assert str(e.value) == f"checkpoint tag 'step50' does not exist in {tmp_path}; it holds step5, best-step7, step10"
    with pytest.raises(UserError) as e:
        resolve_tag(tmp_path / "empty", "step5")
    assert str(e.value) == f"checkpoint tag 'step5' does not exist in {tmp_path / 'empty'}; it holds no checkpoint"


def test_evaluate_of_other_files_refuses_no_documents_and_says_what_it_dropped(tmp_path):
    run = tmp_path / "run"
    train(run, "--train.max_steps", "2", "--train.eval_every", "0", "--train.save_every", "0")
    names = (run / "labels.txt").read_text().split()

    def evaluate(texts: str, labels: str, *args: str) -> subprocess.CompletedProcess:
        (tmp_path / "t.txt").write_text(texts)
        (tmp_path / "l.txt").write_text(labels)
        return subprocess.run([sys.executable, "-m", "xmtc.evaluate", "--run", str(run), "--texts", str(tmp_path / "t.txt"),
                               "--labels", str(tmp_path / "l.txt"), "--json", str(tmp_path / "m.json"), *args],
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)

    # No document (an empty pair of files, or every line skipped): a table of zeros read as a model that is always wrong.
    for texts, labels, args, why in (("", "", (), ""), ("\n\n", "\n\n", ("--bad-lines", "skip"), " (skipped: empty 2)")):
        proc = evaluate(texts, labels, *args)
        assert proc.returncode == 2 and proc.stdout == "" and not (tmp_path / "m.json").exists(), proc.stderr
        assert proc.stderr.strip().splitlines() == [f"{run}: checkpoint step2 (latest)",
                                                    f"error: {tmp_path / 't.txt'} and {tmp_path / 'l.txt'} hold no document to evaluate{why}"]
    # Labels the run never trained on are dropped from the metrics: said, with the documents that are left without any.
    proc = evaluate("alpha beta\r\ngamma\r\n\r\n", f"{names[0]} NO-SUCH-LABEL\r\nNO-SUCH-LABEL\r\n{names[1]}\r\n", "--bad-lines", "skip")
    assert proc.returncode == 0 and json.loads((tmp_path / "m.json").read_text())["num_docs"] == 2, proc.stderr
    assert f"{tmp_path / 't.txt'}: skipped 1 document(s) (empty 1)" in proc.stderr
    assert (f"{tmp_path / 'l.txt'}: dropped 2 occurrence(s) of labels the run never saw in training "
            "(1 document(s) left without labels, still counted)") in proc.stderr


def _can_rename_host() -> bool:
    return subprocess.run(["unshare", "-u", "hostname", "xmtc-other-host"], capture_output=True).returncode == 0


def two_ranks(cwds: list[Path], tmp_path: Path, other_host: bool = False) -> list[tuple[int, str]]:
    """(exit code, stdout + stderr) of 2 ranks started as srun starts them, each in its working directory, with the
    relative output_dir "run"; `other_host`: rank 1 in a UTS namespace of its own, as on another node (same files)."""
    from xmtc.distributed import free_port

    port, procs = str(free_port()), []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(exist_ok=True)
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": port, "PYTHONPATH": str(ROOT), "XMTC_SHARED_WAIT_S": "2", "GLOO_SOCKET_IFNAME": "lo"}
        cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", "debug_xml_cnn", "--train.output_dir", "run",
               "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "2"]
        if other_host and rank == 1:
            cmd = ["unshare", "-u", "sh", "-c", 'hostname xmtc-other-host && exec "$0" "$@"', *cmd]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return [(p.wait(timeout=300), p.stdout.read()) for p in procs]


def test_an_output_dir_that_is_not_one_directory_for_all_ranks_stops_before_the_data(tmp_path):
    # Two ranks, each in its own working directory with a relative output_dir (as a node-local /tmp would be): each
    # wrote its own run directory; node 1's checkpoint shards and `latest` were apart from node 0's, and a resume hung
    # or started over.
    import socket

    dirs = [tmp_path / "node0", tmp_path / "node1"]
    results = two_ranks(dirs, tmp_path)
    assert [rc for rc, _ in results] == [2, 2], results
    errors = [line for _, out in results for line in out.splitlines() if "error: " in line]
    host = socket.gethostname()
    assert errors == [
        f"error: config key 'train.output_dir' (run) is not one directory for all ranks: rank 1 on {host} does not see the file "
        f"rank 0 on {host} wrote into . (looked for 0 s); a node-local path (/tmp, a node's scratch disk) or a relative path "
        "from different working directories gives ranks different directories: use an absolute path on a filesystem every "
        "node mounts"], results
    assert [sorted(p.name for p in d.iterdir()) for d in dirs] == [[], []]  # no run directory, no probe left


@pytest.mark.skipif(not _can_rename_host(), reason="needs `unshare -u` (a UTS namespace) to stand a rank on another host")
def test_a_rank_on_another_host_looks_for_the_probe_and_one_that_sees_it_trains(tmp_path):
    # Rank 1 "on another node" (its own host name, the same files): it looks for XMTC_SHARED_WAIT_S (2 s here) before it
    # gives up, and with the same working directory it sees rank 0's probe and the run trains.
    import socket

    results = two_ranks([tmp_path / "node0", tmp_path / "node1"], tmp_path, other_host=True)
    assert [rc for rc, _ in results] == [2, 2], results
    errors = [line for _, out in results for line in out.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: config key 'train.output_dir' (run) is not one directory for all ranks: rank 1 on xmtc-other-host does not "
        f"see the file rank 0 on {socket.gethostname()} wrote into . (looked for 2 s)"), results
    shared = tmp_path / "shared"
    results = two_ranks([shared, shared], tmp_path, other_host=True)
    assert [rc for rc, _ in results] == [0, 0], results
    assert json.loads((shared / "run" / "final_metrics.json").read_text())["step"] == 2
    assert not list(shared.glob(".xmtc-shared-*")) and not list((shared / "run").glob(".xmtc-shared-*"))
