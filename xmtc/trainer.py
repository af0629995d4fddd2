"""The training loop: DeepSpeed engine, deterministic data order, evaluation, checkpoints, logs.

Everything a run writes goes to `train.output_dir`:
  config.json           the resolved config (after overrides)
  checkpoints/          DeepSpeed checkpoints, tag `step<N>`, and the `latest` file; with model
                        selection also tag `best-step<N>` and `best.json` naming the selected tag;
                        `train.keep_checkpoints` N keeps the newest N step tags; a last step whose
                        weights give NaN scores is set aside as `step<N>.diverged<k>`
  metrics.jsonl         one JSON object per evaluation (split, step, epoch, samples_per_s, train_loss,
                        metrics); "split" is "valid" when the corpus has a validation split (periodic
                        evaluations then use it), else "test"
  final_metrics.json    the test evaluation at the end (of the selected step's weights when
                        `train.select_metric` is set) plus train_loss, step, timings and the selection
  train_log.jsonl       one JSON object per log step (`train.log_every`): step, epoch, train_loss, lr,
                        samples_per_s, memory
  curves.png            training loss (of every log step) and metrics by step, redrawn after each evaluation (`train.plot`)
  labels.txt            label names in id order (most frequent first)
  tokenizer/            the tokenizer (xmtc.evaluate/predict check that the corpus they rebuild has the same)
  corpus.json           the working directory the relative data paths start from, and the training label
                        counts (propensities): xmtc.evaluate of other files needs only the run directory
  .xmtc-run.lock        held by rank 0 while the run writes (xmtc.runlock): a second run into the directory stops

A run stopped by SIGUSR1/SIGTERM checkpoints at the next step boundary and exits with code 75
(`EXIT_REQUEUE`); `train.resume` continues exactly: same data order, same schedule, same dropout.
Nothing is written before every check has passed; a fresh run sets another run's files aside
(`<name>.replaced<k>`); a non-finite training loss stops the run (`Diverged`, exit code 2).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

import kernels
from xmtc import ops
from xmtc.checkpoint import (BEST_FILE, CORPUS_FILE, check_corpus_matches_run, corpus_record, keep_metrics_through, prune_step_tags, read_best,
                             set_aside_run, set_aside_tag)
from xmtc.config import LOWER_IS_BETTER, Config, ConfigError, UserError
from xmtc.config_checks import KeysRead, check_monitor_packages, check_precision, precision_blocks, unread_key_sentence
from xmtc.data import TrainBatchSampler, collate, load_corpus, stats_summary, whole_train_token_ids
from xmtc.distributed import DistInfo, all_reduce_max, all_reduce_sum, check_same_directory, from_main, print0, setup
from xmtc.evaluation import evaluate, move
from xmtc.io import append_jsonl, atomic_write_json, atomic_write_text
from xmtc.metrics import format_table
from xmtc.models import build_model
from xmtc.models.common import load_word_vectors
from xmtc.models.tfidf import document_frequencies
from xmtc.models.word_vectors import cached_ppmi_svd_vectors, scaled
from xmtc.optim import build_optimizer, configured_settings, lr_lambda
from xmtc.plots import CURVES_FILE, TRAIN_LOG_FILE, read_records, write_curves
from xmtc.parallel import load_checkpoint, parallelize
from xmtc.runlock import LOCK_NAME, DirectoryInUse, OutputDirError, RunLock, in_use_message, lock_wait_s
from xmtc.stopping import (DIVERGED_ADVICE, EXIT_INTERRUPTED, EXIT_REQUEUE, Diverged, Preempted, StopSignal, torch_save_failed,
                           weights_finite, write_failed)

def dropout_seed(seed: int, micro_step: int, rank: int) -> int:
    """The RNG seed of one micro-batch (step x accumulation + index) on one rank: dropout depends on
    nothing else, so a resumed run draws the same masks, and no two micro-batches or ranks share them."""
    return seed * 1_000_003 + micro_step * 7919 + rank


def resolve_deepspeed_config(cfg: Config, data_world_size: int, device_type: str) -> dict:
    """The deepspeed section plus what follows from the rest: batch size and precision.

    `train.precision` "auto" defers to a bf16/fp16 block of the deepspeed section when there is one (else bf16
    on CUDA, fp32 on CPU); "bf16" or "fp32" that a block contradicts (bf16 with `bf16.enabled` false or fp16
    enabled, fp32 with either enabled) is refused rather than one of the two silently winning."""
    ds = json.loads(json.dumps(cfg.deepspeed))
    ds["train_batch_size"] = cfg.micro_batch_size * cfg.grad_accum * data_world_size
    check_precision(cfg.train.precision, ds)
    blocks = precision_blocks(ds)
    for name, (key, enabled) in blocks.items():  # under its current name, `enabled` a bool: read alike everywhere
        ds[name] = {**ds.pop(key), "enabled": bool(enabled)}
    precision = cfg.train.precision
    if precision == "auto" and not blocks:
        precision = "bf16" if device_type == "cuda" else "fp32"
    if precision == "bf16":
        ds["bf16"] = {**ds.get("bf16", {}), "enabled": True}  # the block's other settings kept
    return ds


def model_mismatch(saved_config: Path, cfg: Config, ckpt_dir: Path, error: str) -> str:
    """One sentence for a resume whose checkpoint does not fit the model this config builds: the model
    settings that differ from the run's config.json, else the first line of the loader's complaint."""
    try:
        before = json.loads(saved_config.read_text())
    except (OSError, ValueError):
        before = {}
    now = cfg.to_dict()
    changed = [
        f"{section}.{key} = {before[section][key]!r} (now {value!r})"
        for section in ("model", "xml_cnn", "sgm", "data", "parallel")
        for key, value in now.get(section, {}).items()
        if isinstance(before.get(section), dict) and key in before[section] and before[section][key] != value
    ]
    detail = (", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")) if changed else error.strip().splitlines()[-1][:200]
    return (f"config key 'train.resume' is true but the checkpoint in {ckpt_dir} does not fit the model this config "
            f"builds; the run trained with {detail}: resume with the settings it trained with" if changed else
            f"config key 'train.resume' is true but the checkpoint in {ckpt_dir} does not fit the model this config "
            f"builds ({detail}); resume with the settings it trained with ({saved_config})")


def initialize_deepspeed(ds_config: dict, **kwargs):
    """`deepspeed.initialize(config=ds_config, **kwargs)`'s engine; what is wrong with the config in one sentence.

    DeepSpeed refuses bad values and removed features, but ignores a top-level key it does not know:
    `zero_optimisation` would train at ZeRO 0 without a word. It reads its top-level keys by name, so
    a key it never looked up while initialising is one it ignores, and is refused here, with the
    closest key it did look up.
    """
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfigError

    config = KeysRead(ds_config)
    try:
        engine, _, _, _ = deepspeed.initialize(config=config, dist_init_required=False, **kwargs)
    except (ValueError, TypeError, DeepSpeedConfigError) as e:  # its config models (pydantic errors are ValueErrors)
        why = "; ".join(line.strip() for line in str(e).splitlines()[:3] if line.strip())
        raise ConfigError(f"DeepSpeed refused the config's deepspeed section: {why}") from e
    # The engine pickles its config into every checkpoint: a plain dict, so that reading one needs no xmtc.
    plain = dict(config)
    if getattr(engine._config, "_param_dict", None) is config:
        engine._config._param_dict = plain
    engine.config = plain
    for key in ds_config:
        if key not in config.read:
            raise ConfigError(unread_key_sentence("", key, config.read, deepspeed.__version__))
    return engine


def memory_stats(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {
            "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    from xmtc.memory.rss import peak_rss_bytes

    return {"peak_rss_gb": peak_rss_bytes() / 2**30}


def _progress(total: int, initial: int, enabled: bool):
    """tqdm's bar on stderr when it is a terminal; else None, and the loop prints a plain line per log step
    (a log file, a SLURM output file: a bar there is one line of carriage returns, and the step lines were lost)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


def claim_output_dir(lock: RunLock, dist_info: DistInfo, take: bool) -> None:
    """Every rank stops (said once) when another run holds the output directory: checked (`take`
    False) before the data is read, and taken by rank 0 (`take` True) before the run writes anything.
    A requeued job first waits for the lock (`lock_wait_s`: a failed node's NFS lock outlives it a while)."""
    problem = None
    if dist_info.is_main:
        try:
            wait_s, waited = lock_wait_s(), 0.0
            holder = lock.acquire() if take else lock.holder()
            while holder is not None and waited < wait_s:
                if waited == 0.0:
                    print0(f"{lock.path.parent} is locked by another run ({holder}); waiting up to {wait_s:.0f} s for it")
                time.sleep(5.0)
                waited += 5.0
                holder = lock.acquire() if take else lock.holder()
            if holder is not None:
                problem = in_use_message(lock.path.parent, holder)
            elif take and lock.unsupported:
                print0(f"warning: {lock.unsupported}")
        except OutputDirError as e:
            problem = str(e)
        except OSError as e:  # not a directory, not writable, a full disk
            problem = f"cannot lock train.output_dir {lock.path.parent}: {e}"
    problem = from_main(problem, dist_info.device)
    if problem is not None:
        raise DirectoryInUse(problem)


def agree_rank0_wrote(dist_info: DistInfo, write) -> None:
    """Rank 0 runs `write()` while the others wait; an OSError there (a full disk, no permission) stops every
    rank with one sentence, rather than leaving the others in a barrier until the process-group timeout."""
    problem = None
    if dist_info.is_main:
        try:
            write()
        except OSError as e:
            problem = f"cannot write into train.output_dir: {e}"
    problem = from_main(problem, dist_info.device)
    if problem is not None:
        raise OutputDirError(problem)


def train(cfg: Config, local_rank_arg: int | None = None) -> dict:
    """Train and evaluate per `cfg`; returns the final metrics (on every rank).

    Rank 0 holds `train.output_dir`'s lock (xmtc.runlock) from its first write there until this returns."""
    lock = RunLock(Path(cfg.train.output_dir))
    try:
        return _train(cfg, local_rank_arg, lock)
    finally:
        lock.release()


def _train(cfg: Config, local_rank_arg: int | None, lock: RunLock) -> dict:
    import deepspeed

    # First thing, so that SIGTERM/SIGUSR1 during start-up (preemption) also ends in a checkpoint and 75.
    stop = StopSignal()
    stop.install()
    ops.set_kernel_backend_from_config(cfg.model.kernels)
    dist_info = setup(cfg.parallel, cfg.train.device, local_rank_arg)
    cfg.check_batch(dist_info.world_size)
    check_monitor_packages(cfg.deepspeed)
    if cfg.model.kernels == "triton" and dist_info.device.type != "cuda" and not kernels.interpreting():
        raise ConfigError("config key 'model.kernels' is \"triton\" but this run is on the CPU; use \"auto\" or \"torch\" "
                          "(or TRITON_INTERPRET=1 to interpret the kernels, slowly)")
    out = Path(cfg.train.output_dir)
    ckpt_dir = out / "checkpoints"
    check_same_directory(out, "train.output_dir", dist_info.device)  # one run directory, not one per node
    claim_output_dir(lock, dist_info, take=False)  # before minutes of reading data and building the model

    corpus = load_corpus(cfg.data, cfg.synthetic)
    if cfg.train.resume and (ckpt_dir / "latest").is_file():
        # The data must be what the run trained on: another vocabulary of the same size would load and train on.
        check_corpus_matches_run(out, corpus, resuming=True)
    if dist_info.is_main:
        print0(
            f"data: {len(corpus.train)} train / {len(corpus.valid) if corpus.valid is not None else 0} valid / "
            f"{len(corpus.test)} test documents, {corpus.num_labels} labels, vocabulary {corpus.vocab_size}; {stats_summary(corpus.stats)}"
        )
    select = cfg.train.select_metric
    if select and corpus.valid is None:
        raise ConfigError(
            f"config key 'train.select_metric' is \"{select}\" but the corpus has no validation split; set "
            "data.valid_fraction (e.g. 0.1) or give the sgm corpus valid.src/valid.tgt"
        )

    torch.manual_seed(cfg.train.seed)  # identical initial parameters on every rank
    model = build_model(cfg, corpus.num_labels, corpus.vocab_size)
    if cfg.model.embed_init == "ppmi_svd":
        started = time.perf_counter()
        whole = cfg.model.embed_init_texts == "whole"
        vectors = cached_ppmi_svd_vectors(corpus, cfg.model.embed_dim, cfg.data.cache_dir,
                                          whole_docs=(lambda: whole_train_token_ids(corpus, cfg.data, cfg.synthetic)) if whole else None)
        load_word_vectors(model, scaled(vectors, cfg.model.embed_init_std))
        print0(f"word vectors: PPMI-SVD of the {cfg.model.embed_init_texts} training texts, {vectors.shape[1]} dimensions "
               f"({time.perf_counter() - started:.1f}s)")
    if getattr(model, "tfidf", None) is not None:
        model.tfidf.set_idf(*document_frequencies(corpus.train["input_ids"], corpus.vocab_size))
    plan = parallelize(model, cfg, dist_info)
    model = plan.model.to(dist_info.device)
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {cfg.model.name}, {n_params:,} parameters on rank 0, device {dist_info.device}")

    sampler = TrainBatchSampler(
        len(corpus.train), cfg.micro_batch_size, plan.data_rank, plan.data_world_size, cfg.train.seed, cfg.grad_accum
    )
    # (TrainBatchSampler refuses a training set smaller than one global batch, naming the settings to lower.)
    total_steps = cfg.train.max_steps or max(1, int(cfg.train.epochs * sampler.steps_per_epoch))

    ds_config = plan.deepspeed_config(resolve_deepspeed_config(cfg, plan.data_world_size, dist_info.device.type))
    leaf_types = getattr(model, "zero3_leaf_modules", None)
    if leaf_types and ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
        # Modules that run a data-dependent number of sub-module calls per forward (SGM's decoder)
        # are gathered whole, so ranks that decode different lengths stay in step.
        deepspeed.utils.set_z3_leaf_modules(model, list(leaf_types))
    optimizer = None if "optimizer" in cfg.deepspeed else build_optimizer(cfg, model, plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps)) if optimizer else None
    engine = initialize_deepspeed(
        ds_config,
        model=model,
        optimizer=optimizer,
        model_parameters=None if optimizer else plan.param_groups([{"params": list(model.parameters())}]),
        lr_scheduler=scheduler,
        mpu=plan.mpu,
    )

    step, last_loss = 0, float("nan")
    best: dict | None = None  # the selected checkpoint so far (best.json's content)
    last_saved: tuple[int, str] | None = None  # (step, tag) of the newest checkpoint `latest` names
    saved_before: tuple[int, str] | None = None  # the one `latest` named before it
    resumed = cfg.train.resume and (ckpt_dir / "latest").is_file()
    if resumed:
        restore_settings = configured_settings(optimizer, scheduler) if scheduler is not None else None
        try:
            loaded_tag, client = load_checkpoint(engine, plan, ckpt_dir)  # a rank may see a file missing alone
        except RuntimeError as e:
            if not any(x in str(e) for x in ("size mismatch", "Missing key(s)", "Unexpected key(s)")):
                raise
            raise ConfigError(model_mismatch(out / "config.json", cfg, ckpt_dir, str(e))) from None
        if restore_settings is not None and (changed := restore_settings()):
            print0(f"resumed with {', '.join(changed)} from the config, not the checkpoint's")
        step = int(client["step"])
        last_saved = (step, loaded_tag)
        last_loss = float(client.get("train_loss", float("nan")))
        best = read_best(ckpt_dir) if select else None
        if best is not None and (best["metric"] != select or best["step"] > step):
            best = None  # another metric, or a step this run has not reached (it will be met again)
        print0(f"resumed from {ckpt_dir} at step {step}" + (f"; best {select} so far {best['value']:.4f} at step {best['step']}" if best else ""))
        final = out / "final_metrics.json"
        done = None
        if step >= total_steps and final.is_file():
            try:
                done = json.loads(final.read_text())
            except (OSError, ValueError):  # damaged (written by hand, or not by this version): evaluated again
                print0(f"{final} cannot be read; the final evaluation runs again")
        if isinstance(done, dict) and done.get("step") == step:  # not a final of fewer steps this run extended
            print0(f"{out} finished at step {step} already (final_metrics.json); nothing to do")
            return done
    elif cfg.train.resume:
        print0(f"train.resume: no checkpoint in {ckpt_dir} (no 'latest'); starting from step 0")
    # Every check has passed: only now does this run write into its directory.
    claim_output_dir(lock, dist_info, take=True)

    def write_run_files() -> None:  # rank 0
        out.mkdir(parents=True, exist_ok=True)
        if resumed:
            # The evaluations after the checkpoint are logged again; at the last step only final ones exist.
            dropped = keep_metrics_through(out / "metrics.jsonl", lambda r: r.get("step", 0) < step or (r.get("step") == step and step < total_steps))
            if dropped:
                print0(f"metrics.jsonl: dropped {dropped} record(s) logged after step {step} by the interrupted run")
            keep_metrics_through(out / TRAIN_LOG_FILE, lambda r: r.get("step", 0) <= step)  # its steps are trained again
            # Copies a crash left between best.json and the removal of the previous best, selections of steps
            # after this checkpoint, or of another select_metric (none, now): only the selection in force is
            # kept, so xmtc.evaluate/xmtc.predict never default to weights this config did not select.
            for stray in ckpt_dir.glob("best-step*"):
                if best is None or stray.name != best["tag"]:
                    shutil.rmtree(stray, ignore_errors=True)
            if best is None and (ckpt_dir / BEST_FILE).is_file():
                try:
                    earlier = read_best(ckpt_dir)
                except UserError:  # unreadable: nothing to keep
                    earlier = None
                (ckpt_dir / BEST_FILE).unlink()
                if earlier is not None and earlier.get("metric") != select:
                    print0(f"{ckpt_dir / BEST_FILE}: removed the selection by {earlier.get('metric')} "
                           f"(train.select_metric is now {select or 'empty'})")
        else:
            aside = set_aside_run(out)
            if aside is not None:
                print0(f"{out} holds another run's files: moved them to <name>.replaced{aside}")
        cfg.save(out / "config.json")
        atomic_write_text(out / "labels.txt", "\n".join(corpus.label_names) + "\n")
        corpus.tokenizer.save(out / "tokenizer")
        atomic_write_text(out / CORPUS_FILE, json.dumps(corpus_record(corpus)))  # compact: 670K counts

    agree_rank0_wrote(dist_info, write_run_files)

    written: set[str] = set()  # tags this process saved (saving one again is DeepSpeed's overwrite)

    def prune_checkpoints() -> None:
        """train.keep_checkpoints: rank 0 deletes the oldest step tags, after DeepSpeed's closing barrier of the
        newest save (every rank's files of it are written)."""
        if cfg.train.keep_checkpoints and dist_info.is_main and last_saved is not None:
            pruned = prune_step_tags(ckpt_dir, cfg.train.keep_checkpoints, last_saved[0],
                                     protect={last_saved[1]} | ({best["tag"]} if best else set()))
            if pruned:
                print0(f"train.keep_checkpoints {cfg.train.keep_checkpoints}: removed checkpoint " + ", ".join(pruned))

    def check_output_dir(before: str) -> None:
        """Every rank: stop when rank 0's output directory was removed, moved or replaced during the run (its lock
        file is not the one rank 0 holds), before `before` writes there; the writes would rebuild a partial run
        directory (metrics, checkpoints without config.json, labels, tokenizer) and the run would end with 0."""
        gone = torch.zeros(1, device=dist_info.device)
        if dist_info.is_main and not lock.still_held():
            gone += 1
        if all_reduce_max(gone).item():
            raise OutputDirError(
                f"train.output_dir {out} was removed, moved or replaced during training (its {LOCK_NAME} is not the one "
                f"this run holds): the run stops at step {step}, before {before}, and writes nothing more there"
                + (f"; its newest checkpoint was {last_saved[1]}" if last_saved else "")
            )

    def log_write(path: Path, write) -> None:
        """Rank 0's `write()` of `path` (a log record, the curves); a failed one is one sentence (the other ranks end
        with the launcher)."""
        try:
            write()
        except OSError as e:
            raise write_failed(str(path), path.parent, e, ckpt_dir / last_saved[1] if last_saved else None) from None

    def save(tag_step: int, tag: str | None = None, latest: bool = True, prune: bool = True) -> str:
        nonlocal last_saved, saved_before
        tag = tag or f"step{tag_step}"
        check_output_dir(f"the checkpoint {tag}")
        if not weights_finite(engine.module, dist_info.device):
            # A finite loss, then an update that made the weights NaN or inf: a checkpoint of them would be the one
            # `latest` names, and a resumed run would start from weights that cannot train.
            raise Diverged(
                f"the weights are not finite after the update of step {tag_step} (its loss was finite): the run diverged "
                f"({DIVERGED_ADVICE}); step {tag_step} was not saved" + (f", the newest checkpoint is {ckpt_dir / last_saved[1]}" if last_saved else "")
            )
        if tag not in written:
            # A tag of this name from an earlier run (a fresh run into an old directory, or a run resumed
            # from a re-sharded tag, whose old later tags have another layout): DeepSpeed would write into
            # it and leave the old shards' files beside the new ones. Set it aside instead.
            old = all_reduce_max(torch.tensor([float((ckpt_dir / tag).exists())], device=dist_info.device)).item()
            if old and dist_info.is_main and (ckpt_dir / tag).exists():
                aside = set_aside_tag(ckpt_dir, tag)
                print0(f"checkpoint tag {tag} exists from an earlier run: moved it to {aside.name}")
            if old:
                torch.distributed.barrier()
            written.add(tag)
        try:
            # `latest` is written here, not by DeepSpeed: its rank 0 writes it after its own files, before the barrier
            # that waits for the other ranks', so a rank that failed to write left `latest` naming an incomplete tag.
            # Past that barrier (and the plan's) every rank's files are written; a rank that failed raised instead.
            engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": tag_step, "train_loss": last_loss}, save_latest=False)
            plan.save_checkpoint(engine, ckpt_dir, tag)
            if latest and dist_info.is_main:
                atomic_write_text(ckpt_dir / "latest", tag)
        except (OSError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not torch_save_failed(e):
                raise
            # `latest` still names the newest complete checkpoint; the incomplete tag is set aside when a resumed run
            # saves this step again (its first save of a tag that exists).
            raise write_failed(f"the checkpoint {tag} into {ckpt_dir}", ckpt_dir, e,
                               ckpt_dir / last_saved[1] if last_saved else None) from None
        if latest:
            saved_before, last_saved = (last_saved if last_saved != (tag_step, tag) else saved_before), (tag_step, tag)
            if prune:
                prune_checkpoints()
        return tag

    def save_unless_saved(prune: bool = True) -> str:
        """The checkpoint of this step: written now, unless it exists already (saved or resumed from)."""
        return last_saved[1] if last_saved is not None and last_saved[0] == step else save(step, prune=prune)

    def consider(record: dict, saved_tag: str | None = None) -> None:
        """Model selection: keep a checkpoint of this step if its validation `select` metric is the best so far."""
        nonlocal best
        value = float(record[select])
        if best is not None and not (value < best["value"] if select in LOWER_IS_BETTER else value > best["value"]):
            return
        tag = saved_tag or save(step, f"best-step{step}", latest=False)
        previous, best = best, {"tag": tag, "step": step, "metric": select, "value": value, "split": "valid"}
        if dist_info.is_main:
            # Pointer first, then the old copy: a crash in between leaves a valid best.json and a stray directory.
            atomic_write_json(ckpt_dir / BEST_FILE, best)
            if previous is not None and previous["tag"].startswith("best-step") and previous["tag"] != tag:
                shutil.rmtree(ckpt_dir / previous["tag"], ignore_errors=True)

    bar = _progress(total_steps, step, cfg.train.progress and dist_info.is_main)
    samples_per_step = cfg.micro_batch_size * cfg.grad_accum * plan.data_world_size
    t_start = time.perf_counter()
    t_window, steps_window = t_start, 0
    samples_per_s, trained_steps = 0.0, 0

    def log_eval(split: str, **extra) -> dict:
        dataset = corpus.valid if split == "valid" else corpus.test
        try:
            metrics = evaluate(engine, dataset, cfg, plan.data_rank, plan.data_world_size, dist_info.device,
                               corpus.label_counts, corpus.label_counts_docs, counts=plan.counts_metrics)
        except FloatingPointError:  # NaN scores: the last update made the weights huge (or NaN) after a finite loss
            newest = last_saved if last_saved and last_saved[0] < step else None
            aside = ""
            if last_saved and last_saved[0] == step:
                # The end of training saves before it evaluates: that checkpoint holds the weights that gave NaN. Set
                # it aside and point `latest` back at the one before, so that train.resume (with a lower train.lr)
                # starts from weights that still train.
                newest = saved_before if saved_before and (ckpt_dir / saved_before[1]).is_dir() else None
                if dist_info.is_main:
                    aside = f"; its checkpoint is set aside as {set_aside_tag(ckpt_dir, last_saved[1], 'diverged').name}"
                    if newest:
                        atomic_write_text(ckpt_dir / "latest", newest[1])
                    else:
                        (ckpt_dir / "latest").unlink(missing_ok=True)
            raise Diverged(
                f"the model's scores are NaN at the evaluation of step {step}: the run diverged in its last update "
                f"({DIVERGED_ADVICE})" + aside
                + (f"; the newest checkpoint is {ckpt_dir / newest[1]}" if newest else "")
            ) from None
        check_output_dir(f"the {split} metrics of step {step}")
        record = {"split": split, "step": step, "epoch": step / sampler.steps_per_epoch, "samples_per_s": samples_per_s,
                  "train_loss": last_loss, "lr": float(engine.get_lr()[0]), **metrics, **extra}
        if dist_info.is_main:
            log_write(out / "metrics.jsonl", lambda: append_jsonl(out / "metrics.jsonl", record))
            if cfg.train.plot:
                log_write(out / CURVES_FILE, lambda: write_curves(read_records(out / "metrics.jsonl"), out / CURVES_FILE,
                                                                  title=f"{cfg.model.name} - {out}",
                                                                  train_records=read_records(out / TRAIN_LOG_FILE)))
            if engine.monitor is not None and engine.monitor.enabled:
                engine.monitor.write_events([(f"Eval/{split}/{k}", v, step) for k, v in metrics.items()])
        return record

    periodic_split = "valid" if corpus.valid is not None else "test"
    engine.train()
    stop.in_loop = True  # from here Ctrl-C checkpoints at the end of the step
    try:  # the bar closes before whatever ends the loop is said (the launcher prints a raised error's sentence)
        while step < total_steps:
            epoch, in_epoch = divmod(step, sampler.steps_per_epoch)
            batches = sampler.micro_batches(epoch, in_epoch * cfg.grad_accum)
            step_loss = 0.0
            for micro, indices in enumerate(batches):
                torch.manual_seed(dropout_seed(cfg.train.seed, step * cfg.grad_accum + micro % cfg.grad_accum, dist_info.rank))
                batch = move(collate(corpus.train[indices], cfg.data.max_len), dist_info.device)
                loss = engine(batch["input_ids"], batch["label_idx"], batch["label_offsets"], batch["lengths"])
                engine.backward(loss)
                engine.step()
                step_loss = step_loss + loss.detach().float()
                if (micro + 1) % cfg.grad_accum:
                    continue
                step += 1
                trained_steps += 1
                steps_window += 1
                is_last = step >= total_steps
                # Every step: a checkpoint written at any step must carry that step's loss (the mean over its micro-batches).
                mean_loss = step_loss.reshape(1) / cfg.grad_accum
                step_loss = 0.0
                last_loss = float((all_reduce_sum(mean_loss) / dist_info.world_size).item())
                if not math.isfinite(last_loss):
                    raise Diverged(
                        f"the training loss is {last_loss} at step {step}: the run diverged ({DIVERGED_ADVICE}); nothing "
                        "was saved for this step"
                        + (f", the newest checkpoint is {ckpt_dir / last_saved[1]}" if last_saved else ""),
                    )
                if bar is not None:
                    bar.update(1)
                if step % cfg.train.log_every == 0 or is_last:
                    now = time.perf_counter()
                    samples_per_s = steps_window * samples_per_step / max(now - t_window, 1e-9)
                    t_window, steps_window = now, 0
                    check_output_dir(f"the log of step {step}")
                    memory = memory_stats(dist_info.device)
                    fields = {"loss": f"{last_loss:.4f}", "samples_s": f"{samples_per_s:.0f}", "lr": f"{engine.get_lr()[0]:.2e}",
                              **{k: f"{v:.2f}" for k, v in memory.items()}}
                    if dist_info.is_main:
                        log = {"step": step, "epoch": step / sampler.steps_per_epoch, "train_loss": last_loss,
                               "lr": float(engine.get_lr()[0]), "samples_per_s": samples_per_s, **memory}
                        log_write(out / TRAIN_LOG_FILE, lambda: append_jsonl(out / TRAIN_LOG_FILE, log))
                    if bar is not None:
                        bar.set_postfix(**fields)
                    else:  # no bar (train.progress false, or a log file): a plain line per log step, rank 0 only
                        print0(f"step {step}/{total_steps} " + " ".join(f"{k} {v}" for k, v in fields.items()))
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not is_last:
                    record = log_eval(periodic_split)
                    print0(f"step {step} ({periodic_split}): " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("P@1", "nDCG@3", "micro_f1"))))
                    if select:
                        consider(record)
                if cfg.train.save_every and step % cfg.train.save_every == 0 and not is_last:
                    save(step)
                if stop.any_rank(dist_info.device):
                    stop.ignore_further()
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not a second Ctrl-C mid-checkpoint either
                    save_unless_saved()
                    if bar is not None:
                        bar.close()
                    if stop.received == signal.SIGINT:
                        print0(f"interrupted: checkpoint at step {step} in {ckpt_dir}; exiting with {EXIT_INTERRUPTED} "
                               "(continue with --train.resume true)")
                        raise Preempted(step, EXIT_INTERRUPTED)
                    print0(f"signal received: checkpoint at step {step} in {ckpt_dir}; exiting with {EXIT_REQUEUE} to be requeued "
                           "(by hand: continue with --train.resume true)")
                    raise Preempted(step, EXIT_REQUEUE)
                if is_last:
                    break
    finally:
        if bar is not None:
            bar.close()
    stop.in_loop = False
    train_time = time.perf_counter() - t_start

    last_tag = save_unless_saved(prune=False)  # pruned after the evaluations: NaN scores set this one aside
    selection = {}
    if corpus.valid is not None:
        record = log_eval("valid")
        if select:
            consider(record, saved_tag=last_tag)
            if best["step"] != step:
                # Every rank loads the selected tag (collective under ZeRO-3 and label sharding).
                load_checkpoint(engine, plan, ckpt_dir, best["tag"])
            selection = {"selected_step": best["step"], "selected_tag": best["tag"], "select_metric": select,
                         f"valid_{select}": best["value"]}
            print0(f"model selection: step {best['step']} of {step} ({best['tag']}), valid {select} {best['value']:.4f}")
    record = log_eval("test", **selection)
    prune_checkpoints()
    final = {**record, "train_time_s": train_time,
             "train_samples_per_s": trained_steps * samples_per_step / max(train_time, 1e-9),
             **memory_stats(dist_info.device)}
    if dist_info.is_main:
        log_write(out / "final_metrics.json", lambda: atomic_write_json(out / "final_metrics.json", final))
        print0(format_table({k: v for k, v in final.items() if k not in ("step", "epoch")}, title=f"final metrics (step {step}" + (f", the weights of step {selection['selected_step']}" if selection else "") + f", {out})"))
    return final
