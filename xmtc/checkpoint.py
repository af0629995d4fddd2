"""Reading DeepSpeed checkpoints back into plain modules (for predict, evaluate and re-sharding).

A run's checkpoints live in `<output_dir>/checkpoints/<tag>/`, `latest` naming the newest tag; a run
with model selection (`train.select_metric`) also writes `best.json`, naming the selected tag.
ZeRO 0-2 keep full weights in `mp_rank_00_model_states.pt`; ZeRO-3 keeps them partitioned, and
DeepSpeed's own `zero_to_fp32` reassembles them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from xmtc.config import Config, UserError, load_config


BEST_FILE = "best.json"
"""checkpoints/best.json: {"tag", "step", "metric", "value", "split"} of the selected checkpoint."""


def read_best(ckpt_dir: Path) -> dict | None:
    """The run's selected checkpoint (best.json), or None when the run selected none."""
    path = Path(ckpt_dir) / BEST_FILE
    if not path.is_file():
        return None
    try:
        best = json.loads(path.read_text())
        str(best["tag"]), int(best["step"]), float(best["value"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({e}); pass --tag, or delete the file to use the latest checkpoint") from None
    return best


def resolve_tag(ckpt_dir: Path, tag: str | None, prefer_best: bool = False) -> str:
    """`tag` if given; else the selected tag (best.json) when `prefer_best` and the run selected one; else `latest`."""
    if tag == "latest" and not (ckpt_dir / tag).is_dir():  # the name of the file that names the newest tag
        tag, prefer_best = None, False
    if tag:
        if not (ckpt_dir / tag).is_dir():
            tags = existing_tags(ckpt_dir)
            shown = ", ".join(tags[:12]) + (f", ... ({len(tags)} in all)" if len(tags) > 12 else "")
            raise UserError(f"checkpoint tag '{tag}' does not exist in {ckpt_dir}; "
                            + (f"it holds {shown}" if tags else "it holds no checkpoint"))
        return tag
    best = read_best(ckpt_dir) if prefer_best else None
    if best is not None:
        if not (ckpt_dir / best["tag"]).is_dir():
            raise UserError(f"{ckpt_dir / BEST_FILE} names tag '{best['tag']}', which does not exist; pass --tag")
        return best["tag"]
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        raise UserError(f"{ckpt_dir} holds no checkpoint (no 'latest' file); train first or pass --tag")
    return latest.read_text().strip()


STEP_TAG = re.compile(r"step(\d+)")
"""The tags of the trainer's periodic and final checkpoints (`train.keep_checkpoints` prunes only these)."""


def existing_tags(ckpt_dir: Path) -> list[str]:
    """The checkpoint tags in `ckpt_dir` (its directories, hidden ones left out), in step order where a name has one."""
    ckpt_dir = Path(ckpt_dir)
    names = [d.name for d in ckpt_dir.iterdir() if d.is_dir() and not d.name.startswith(".")] if ckpt_dir.is_dir() else []

    def order(name: str):
        m = STEP_TAG.search(name)  # best-step<N>, step<N>.replaced<k>: by their step too
        return (int(m.group(1)) if m else -1, name)

    return sorted(names, key=order)


def free_replaced_suffix(directory: Path, names, word: str = "replaced") -> int:
    """The first k for which no `<name>.<word><k>` of `names` exists in `directory`."""
    k = 1
    while any((Path(directory) / f"{name}.{word}{k}").exists() for name in names):
        k += 1
    return k


def set_aside_tag(ckpt_dir: Path, tag: str, word: str = "replaced") -> Path:
    """Rename checkpoint tag `tag` to the first free `<tag>.<word><k>` ("replaced": a later run writes a tag of
    that name; "diverged": its weights give NaN scores); returns the new path."""
    aside = Path(ckpt_dir) / f"{tag}.{word}{free_replaced_suffix(ckpt_dir, [tag], word)}"
    os.rename(Path(ckpt_dir) / tag, aside)
    return aside


PRUNING_SUFFIX = ".pruning"


def prune_step_tags(ckpt_dir: Path, keep: int, up_to_step: int, protect=()) -> list[str]:
    """Delete all but the newest `keep` tags `step<N>` with N <= `up_to_step`; returns the deleted tags, oldest first.

    Never deleted: the tags in `protect` (the one just saved, the selected one), the tag `latest` names, any other
    name (`best-step<N>`, re-sharded tags, `<tag>.replaced<k>`) and tags past `up_to_step` (an earlier attempt's,
    set aside when this run reaches them). A tag is first renamed to the hidden `.<tag>.pruning`, then removed:
    a crash part-way leaves no half-deleted tag that looks like a checkpoint, and the next prune finishes it."""
    ckpt_dir = Path(ckpt_dir)
    for leftover in ckpt_dir.glob(f".*{PRUNING_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    latest = ckpt_dir / "latest"
    protected = set(protect) | ({latest.read_text().strip()} if latest.is_file() else set())
    steps = sorted(((int(m.group(1)), d.name) for d in ckpt_dir.iterdir()
                    if d.is_dir() and (m := STEP_TAG.fullmatch(d.name)) and int(m.group(1)) <= up_to_step), reverse=True)
    deleted = []
    for _, tag in reversed(steps[keep:]):
        if tag in protected:
            continue
        doomed = ckpt_dir / f".{tag}{PRUNING_SUFFIX}"
        try:
            os.rename(ckpt_dir / tag, doomed)
        except OSError as e:
            print(f"warning: train.keep_checkpoints could not remove {ckpt_dir / tag} ({e}); it stays", file=sys.stderr)
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(tag)
    return deleted


CORPUS_FILE = "corpus.json"
"""<output_dir>/corpus.json: {"working_directory", "train_documents", "label_counts"}: where the run's relative data
paths start, and the training label counts (propensities for PSP@k), so that xmtc.evaluate of other files needs
only the run directory."""

RUN_FILES = ("config.json", "labels.txt", "tokenizer", CORPUS_FILE, "metrics.jsonl", "train_log.jsonl", "final_metrics.json", "curves.png",
             "checkpoints")
"""What a run writes into its output_dir (besides what a config points there, such as a cache)."""


def set_aside_run(out: Path) -> int | None:
    """A fresh run into a directory another run wrote: rename that run's files to `<name>.replaced<k>`
    (one k for all of them), so its metrics, checkpoints and config are neither mixed nor lost.
    Nothing happens when only a config.json/labels.txt is there (a run that stopped before step 1)."""
    out = Path(out)
    ckpt = out / "checkpoints"
    if not ((out / "metrics.jsonl").exists() or (out / "train_log.jsonl").exists() or (out / "final_metrics.json").exists()
            or (ckpt.is_dir() and any(ckpt.iterdir()))):
        return None
    k = free_replaced_suffix(out, RUN_FILES)
    for name in RUN_FILES:
        if (out / name).exists():
            os.rename(out / name, out / f"{name}.replaced{k}")
    return k


def keep_metrics_through(path: Path, keep) -> int:
    """Rewrite metrics.jsonl (atomically) with only the records `keep(record)` accepts: a resumed run
    logs the evaluations after its checkpoint again. Returns how many were dropped."""
    from xmtc.io import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line a crash cut short
        if keep(record):
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def read_checkpoint_file(path: Path) -> dict:
    """One DeepSpeed checkpoint file, memory-mapped where it can be (a ZeRO-0 file also holds the optimizer's
    moments, which a reader of the weights never touches); a file that cannot be read is one sentence."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing; the tag is incomplete, pass another --tag")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=False)  # an old, non-zip file
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as e:
        raise UserError(f"{path} is not a readable checkpoint ({_first_line(e)}); pass another --tag") from None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(e).__name__


def trained_in_bf16(states: dict) -> bool:
    """Whether the DeepSpeed model-states dict `states` is of a run that kept its weights in bf16: its bf16 block
    (or the old name "bfloat16") read as DeepSpeed read it, so a string "false" of an older run is false."""
    from xmtc.config_checks import precision_blocks
    from xmtc.errors import ConfigError

    try:
        return bool(precision_blocks(states.get("ds_config") or {}).get("bf16", (None, False))[1])
    except ConfigError:  # a value DeepSpeed would not have started with
        return False


def load_checkpoint_weights(ckpt_dir: str | Path, tag: str | None = None) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    """(full, unsharded state dict in fp32, the dtype the run trained and evaluated its weights in).

    bf16 runs: ZeRO 0-2 and label-sharded tags hold the bf16 weights themselves (exact in fp32); ZeRO-3 holds
    only the fp32 master weights, of which the bf16 weights are the rounding: cast to the returned dtype, every
    layout gives the weights the run evaluated."""
    ckpt_dir = Path(ckpt_dir)
    tag = resolve_tag(ckpt_dir, tag)
    tag_dir = ckpt_dir / tag
    if (tag_dir / "label_shards.json").is_file() or (tag_dir / "mp_rank_01_model_states.pt").is_file():
        from xmtc.parallel.reshard import load_unsharded_weights

        state, bf16 = load_unsharded_weights(tag_dir)
        return state, torch.bfloat16 if bf16 else torch.float32
    plain = tag_dir / "mp_rank_00_model_states.pt"
    if not plain.is_file() and (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file():
        stage = 3  # ZeRO-3 writes only per-rank partitions
        states = read_checkpoint_file(tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    elif not plain.is_file():
        raise UserError(f"{tag_dir} is not a DeepSpeed checkpoint (no mp_rank_00_model_states.pt); pass another --tag")
    else:
        states = read_checkpoint_file(plain)
        stage = int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    dtype = torch.bfloat16 if trained_in_bf16(states) else torch.float32
    if stage != 3:
        return {k: v.float() for k, v in states["module"].items()}, dtype
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not results
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag), dtype
    except (RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError, OSError) as e:
        raise UserError(f"the ZeRO-3 checkpoint in {tag_dir} could not be reassembled ({_first_line(e)}); pass another --tag") from None


def load_model_state(ckpt_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Full (unsharded) fp32 state dict of the model saved under `ckpt_dir`."""
    return load_checkpoint_weights(ckpt_dir, tag)[0]


def _marked_words(tokenizer) -> set[str]:
    """The words of a whitespace vocabulary that hold a combining mark (Unicode category M)."""
    import unicodedata

    return {w for w in getattr(tokenizer, "words", ()) if any(unicodedata.category(c)[0] == "M" for c in w)}


def check_corpus_matches_run(run_dir: Path, corpus, resuming: bool = False) -> None:
    """The corpus rebuilt from a run's config must be the one it trained on: same labels in the same
    order (labels.txt), same tokenizer (tokenizer/); else its weights would be read against other ids
    (`resuming`: the advice is for a resumed run, not for xmtc.evaluate)."""
    from xmtc.data import load_tokenizer

    labels = run_dir / "labels.txt"
    if labels.is_file() and read_label_names(labels) != corpus.label_names:
        raise UserError(f"the data behind {run_dir} changed since it trained: its labels.txt differs from the labels of "
                        f"{corpus.cache_path} ({corpus.num_labels}); point the run's config.json at the data it trained on")
    saved = run_dir / "tokenizer"
    if saved.is_dir() and tokenizer_state(trained := load_tokenizer(saved)) != tokenizer_state(corpus.tokenizer):
        if (getattr(trained, "marks", True) is False and getattr(corpus.tokenizer, "marks", False)
                and _marked_words(corpus.tokenizer)):  # the new split made words with marks: the change, not the data
            advice = ("train it afresh (or resume it with the xmtc it trained with)" if resuming else
                      "evaluate its test split with --texts/--labels, which use the run's own tokenizer/")
            raise UserError(f"{run_dir} trained with an earlier xmtc whose whitespace tokenizer cut words at combining "
                            f"marks (accents, vowel signs), so its vocabulary cannot be rebuilt from {corpus.cache_path}; "
                            f"{advice}")
        raise UserError(f"the data behind {run_dir} changed since it trained: its tokenizer/ differs from the one of "
                        f"{corpus.cache_path}; point the run's config.json at the data it trained on")


def read_label_names(path: Path) -> list[str]:
    """A run's labels.txt: one name per line, split on "\n" only (a label may hold U+2028 or U+0085, which
    splitlines() would cut); a file that is not UTF-8 is one sentence."""
    try:
        return path.read_bytes().decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is damaged (not UTF-8: byte {e.start}); the run wrote its label names there in UTF-8") from None


def tokenizer_state(tokenizer) -> tuple:
    return (tokenizer.kind, getattr(tokenizer, "words", None), getattr(tokenizer, "model_proto", None))


def corpus_record(corpus) -> dict:
    """What corpus.json keeps of the corpus a run trains on (written by rank 0 beside labels.txt)."""
    return {"working_directory": os.getcwd(), "train_documents": int(corpus.label_counts_docs),
            "label_counts": [int(c) for c in corpus.label_counts]}


def read_corpus_record(run_dir: Path) -> dict | None:
    """The run's corpus.json, or None for a run that wrote none (an earlier version) or an unreadable one."""
    path = Path(run_dir) / CORPUS_FILE
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    counts, docs, where = record.get("label_counts"), record.get("train_documents"), record.get("working_directory")
    if (not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts)
            or not isinstance(docs, int) or docs < 0 or not isinstance(where, str)):
        return None  # damaged: as if absent (predict needs none of it; evaluate then reads the data)
    return record


DATA_PATH_KEYS = ("path", "train_file", "test_file", "cache_dir", "hub_name")
"""The data settings that may name files, relative to the working directory of the run."""


def rebase_data_paths(data, base: str | None):
    """`data` (a DataConfig) with each relative path that exists under `base` (the directory the run trained
    from) made absolute there, so that a run evaluates on its own data from any working directory. Paths that
    do not exist there stay as they are (relative to this working directory: the run's files moved with it)."""
    if not base or not Path(base).is_dir():
        return data
    changes = {}
    for key in DATA_PATH_KEYS:
        value = getattr(data, key)
        if value and not Path(value).is_absolute() and (Path(base) / value).exists():
            changes[key] = str(Path(base) / value)
    if changes and data.cache_dir and not Path(data.cache_dir).is_absolute():
        # The data is the run's own, found where it trained: so is its cache (rebuilt there if it was removed),
        # not a new one in whatever directory evaluate runs from.
        changes["cache_dir"] = str(Path(base) / data.cache_dir)
    return dataclasses.replace(data, **changes)


def run_vocabulary(run_dir: Path):
    """What predicting needs of the corpus (tokenizer, label names and sizes), from the files the run wrote
    beside its checkpoints (tokenizer/, labels.txt), and, where it wrote corpus.json, the training label counts
    that evaluating other files needs (`label_counts` None otherwise): the training data need not be at hand.
    None for a run directory without labels.txt and tokenizer/."""
    import numpy as np

    from xmtc.data import load_tokenizer

    labels, saved = run_dir / "labels.txt", run_dir / "tokenizer"
    if not labels.is_file() or not (saved / "tokenizer.json").is_file():
        return None
    names = read_label_names(labels)
    tokenizer = load_tokenizer(saved)
    record = read_corpus_record(run_dir)
    counts = None
    if record is not None and len(record["label_counts"]) == len(names):
        counts = np.asarray(record["label_counts"], dtype=np.int64)
    return SimpleNamespace(label_names=names, num_labels=len(names), tokenizer=tokenizer, vocab_size=tokenizer.vocab_size,
                           label_index={n: i for i, n in enumerate(names)}, label_counts=counts,
                           label_counts_docs=int(record["train_documents"]) if counts is not None else 0)


def inference_device(name: str) -> torch.device:
    """--device of xmtc.predict/xmtc.evaluate: "auto" is the first CUDA device when one is visible, else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError('--device is "cuda" but no CUDA device is visible; pass --device cpu (or auto)')
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def add_inference_arguments(parser) -> None:
    """The options xmtc.predict and xmtc.evaluate share: where and in what batches the model runs, and its progress."""
    import argparse

    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default auto: the first CUDA device when one is visible, else the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="documents per forward pass (default: the run's eval.batch_size)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar on stderr (a terminal only)")


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")


def checkpoint_used(run_dir: Path, given: str | None, tag: str) -> str:
    """One line for predict and evaluate: which checkpoint they read and why (--tag, the run's selection, latest),
    and that the run is still training when its directory's lock is held (a later checkpoint may come)."""
    from xmtc.runlock import RunLock

    best = read_best(Path(run_dir) / "checkpoints")
    why = ("--tag" if given else f"selected by valid {best['metric']} {best['value']:.4f}"
           if best is not None and best["tag"] == tag else "latest")
    holder = RunLock(run_dir).holder()
    return (f"{run_dir}: checkpoint {tag} ({why})"
            + (f"; the run is still training ({holder}), a later checkpoint may follow" if holder else ""))


def load_run(run_dir: str | Path, tag: str | None = None, device: str = "cpu", need_data: bool = True,
             need_counts: bool = False, announce: bool = False):
    """(config, model with trained weights in eval mode, corpus) of a finished or running run.

    Without `tag`: the selected checkpoint when the run selected one (best.json), else `latest`; `announce` says
    which on stderr (`checkpoint_used`). The model is
    in the dtype the run evaluated in (bf16 for a bf16 run), so its numbers are the run's own. With
    `need_data` false, `corpus` is only the tokenizer and labels the run saved (`run_vocabulary`), when it did,
    and with `need_counts` its training label counts too (corpus.json). Otherwise the corpus is rebuilt (or
    read from its cache) from config.json, whose relative data paths start where the run trained.
    """
    from xmtc.data import load_corpus
    from xmtc.models import build_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json); pass the train.output_dir of a run")
    cfg: Config = load_config(str(run_dir / "config.json"))
    corpus = None if need_data else run_vocabulary(run_dir)
    if corpus is None or (need_counts and corpus.label_counts is None):
        record = read_corpus_record(run_dir)
        trained_in = record.get("working_directory") if record else None
        cfg = dataclasses.replace(cfg, data=rebase_data_paths(cfg.data, trained_in))
        try:
            corpus = load_corpus(cfg.data, cfg.synthetic)
        except UserError as e:
            if need_counts and record is None:
                raise UserError(f"{run_dir} has no {CORPUS_FILE} (it trained before runs wrote one), so the training label "
                                f"counts come from its data, which could not be read: {e}") from None
            unfound = [v for k in DATA_PATH_KEYS if (v := getattr(cfg.data, k)) and not Path(v).is_absolute()]
            if trained_in and Path(trained_in) != Path.cwd() and any(f"'{v}'" in str(e) or f"{v}/" in str(e) for v in unfound):
                raise UserError(f"{e} (nor under {trained_in}, where {run_dir} trained)") from None
            raise
        check_corpus_matches_run(run_dir, corpus)
    model = build_model(cfg, corpus.num_labels, corpus.vocab_size)
    ckpt_dir = run_dir / "checkpoints"
    given, tag = tag, resolve_tag(ckpt_dir, tag, prefer_best=True)
    state, dtype = load_checkpoint_weights(ckpt_dir, tag)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise UserError(f"the checkpoint {ckpt_dir / tag} does not fit the model that {run_dir / 'config.json'} builds "
                        f"({detail}); was config.json edited after the run?") from None
    if announce:  # once the weights are in (an error before is its one sentence); on stderr: stdout holds the results
        print(checkpoint_used(run_dir, given, tag), file=sys.stderr, flush=True)
    # The run's kernel choice holds where it can: "torch" (a run that ruled the Triton kernels out) stays torch on a
    # GPU too; "triton" on a CPU falls back to the torch reference (auto) rather than refusing to run.
    from xmtc import ops

    kernels = cfg.model.kernels
    ops.set_kernel_backend_from_config("auto" if kernels == "triton" and torch.device(device).type != "cuda" else kernels)
    return cfg, model.to(device=device, dtype=dtype).eval(), corpus
