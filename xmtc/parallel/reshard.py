"""Re-shard a label-sharded checkpoint to another number of shards, or to one unsharded checkpoint.

    python -m xmtc.parallel.reshard --run runs/xml_cnn_670k --to 1            # for xmtc.predict / evaluate
    python -m xmtc.parallel.reshard --run runs/xml_cnn_670k --to 4 --set-latest   # resume with label_shards 4

A sharded tag holds DeepSpeed's `mp_rank_{s:02d}_model_states.pt` per shard s (label rows
[start_s, stop_s) of the output layer, the replicated encoder in each) and `label_shards.json`.
The tool writes a new tag (default `<tag>-shards<N>`) into a temporary folder and renames it into
place, so the source checkpoint is never touched and a half-written tag never exists. The optimizer
state (fp32 master weights, Adam's moments and step) is re-sharded too, from ZeRO-0, 1 and 2
sources alike: `xmtc.parallel.optim_state` reads it by parameter name out of the torch state dict
(ZeRO-0) or DeepSpeed's flat partitions (ZeRO-1/2, bf16), and the new tag stores it by name, one
`named_optimizer_shard{s:02d}.pt` per shard, which a run of any ZeRO stage 0-2 and any number of
data-parallel replicas resumes from (`xmtc.parallel.load_checkpoint`). Only a source without a
readable optimizer state (fp16/bf16 at ZeRO-0, DeepSpeed's FP16_UnfusedOptimizer) gives a weights-only tag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from xmtc.checkpoint import read_checkpoint_file, trained_in_bf16
from xmtc.config import ConfigError, UserError
from xmtc.parallel.groups import label_range
from xmtc.parallel.optim_state import named_state_file

SHARDS_FILE = "label_shards.json"


def model_file(tag_dir: Path, shard: int) -> Path:
    return Path(tag_dir) / f"mp_rank_{shard:02d}_model_states.pt"


def read_layout(tag_dir: Path) -> dict:
    """The tag's label_shards.json, or {"num_shards": 1} for an unsharded tag."""
    tag_dir = Path(tag_dir)
    path = tag_dir / SHARDS_FILE
    if path.is_file():
        try:
            layout = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # cut short, not JSON, not UTF-8
            raise UserError(f"{path} is damaged ({e}); it records the tag's label shards: use another checkpoint tag") from None
        shards = layout.get("num_shards") if isinstance(layout, dict) else None
        if type(shards) is not int or shards < 1:
            raise UserError(f"{path} is damaged (no shard count 'num_shards' >= 1); it records the tag's label shards: "
                            "use another checkpoint tag")
        return layout
    if model_file(tag_dir, 1).is_file():
        # Files written but not yet described (a save interrupted between the two): infer the layout.
        shards = sum(1 for _ in tag_dir.glob("mp_rank_*_model_states.pt"))
        return {"num_shards": shards, "inferred": True}
    return {"num_shards": 1}


def sharded_names(module_keys) -> list[str]:
    """The label-sharded entries of a model's state dict, told by its keys: SGM's label head or
    XML-CNN's output layer (for tags without label_shards.json: unsharded, or an interrupted save)."""
    from xmtc.parallel.label_shards import SHARDED_NAMES
    from xmtc.parallel.sgm_shards import SGM_SHARDED_NAMES

    keys = set(module_keys)
    for names in (SGM_SHARDED_NAMES, SHARDED_NAMES):
        present = [n for n in names if n in keys]
        if present:
            return present
    raise UserError(f"the checkpoint's model has none of {SHARDED_NAMES + SGM_SHARDED_NAMES}: nothing to shard by label")


def load_shard_states(tag_dir: Path) -> tuple[dict, list[dict]]:
    """(layout, the DeepSpeed model-states dict of every shard in shard order)."""
    layout = read_layout(tag_dir)
    states = [read_checkpoint_file(model_file(tag_dir, s)) for s in range(layout["num_shards"])]
    if "sharded" not in layout:
        layout["sharded"] = sharded_names(states[0]["module"])
    return layout, states


def merge_module_states(layout: dict, modules: list[dict]) -> dict[str, torch.Tensor]:
    """Full state dict: sharded entries concatenated along labels, the rest from shard 0."""
    sharded = set(layout.get("sharded", ()))
    out = {}
    for name, value in modules[0].items():
        out[name] = torch.cat([m[name] for m in modules]) if name in sharded else value
    num_labels = layout.get("num_labels")
    for name in sharded:
        if num_labels is not None and out[name].shape[0] != num_labels:
            raise UserError(f"re-assembled {name} has {out[name].shape[0]} labels but {SHARDS_FILE} says {num_labels}")
    return out


def load_unsharded_weights(tag_dir: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(full fp32 state dict of the model in a (label-sharded) tag, whether the run kept its weights in bf16):
    what xmtc.checkpoint loads."""
    layout, states = load_shard_states(Path(tag_dir))
    full = merge_module_states(layout, [s["module"] for s in states])
    return {k: v.float() for k, v in full.items()}, trained_in_bf16(states[0])


def load_unsharded_state(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the model in a (label-sharded) tag."""
    return load_unsharded_weights(tag_dir)[0]


def split_rows(full: torch.Tensor, num_shards: int) -> list[torch.Tensor]:
    return [full[slice(*label_range(full.shape[0], num_shards, s))].clone() for s in range(num_shards)]


def reshard_optimizer(tag_dir: Path, layout: dict, states: list[dict], num_shards: int) -> list[dict] | None:
    """The optimizer state of each of N new shards (NamedStates, xmtc.parallel.optim_state), or None
    when the source tag holds none that can be read (a DeepSpeed optimizer block, fp16 loss scaling)."""
    from xmtc.parallel.optim_state import read_named_state, split_named_state

    named = [read_named_state(tag_dir, s, layout, states[s]) for s in range(len(states))]
    if any(n is None for n in named):
        return None
    sharded = set(layout["sharded"])
    return split_named_state(named, sharded, lambda full: split_rows(full, num_shards), num_shards)


def reshard_tag(ckpt_dir: Path, tag: str, num_shards: int, new_tag: str | None = None, set_latest: bool = False) -> str:
    """Write `tag` re-sharded to `num_shards` as a new tag; returns its name."""
    src = ckpt_dir / tag
    new_tag = new_tag or f"{tag}-shards{num_shards}"
    if "/" in new_tag or os.sep in new_tag or new_tag in (".", ".."):
        raise UserError(f"--new-tag {new_tag!r} must be a folder name in {ckpt_dir} (no '/'), as checkpoints/latest names tags")
    dst = ckpt_dir / new_tag
    if dst.exists():
        raise UserError(f"{dst} already exists; pass another --new-tag or remove it")
    layout, states = load_shard_states(src)
    if layout.get("inferred"):
        raise UserError(f"{src} lacks {SHARDS_FILE} (its save was interrupted); re-shard an earlier tag")
    full = merge_module_states(layout, [s["module"] for s in states])
    sharded = list(layout["sharded"])
    num_labels = full[sharded[0]].shape[0]
    if not 1 <= num_shards <= num_labels:
        raise UserError(f"--to {num_shards} must be between 1 and the {num_labels} labels")
    pieces = {name: split_rows(full[name], num_shards) for name in sharded}
    optimizers = reshard_optimizer(src, layout, states, num_shards)
    tmp = ckpt_dir / f".{new_tag}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for t in range(num_shards):
            state = dict(states[0])
            state["module"] = {k: (pieces[k][t] if k in pieces else v) for k, v in full.items()}
            state["optimizer"] = None  # the optimizer state is in named_optimizer_shard{t:02d}.pt, by parameter name
            state["mp_world_size"] = num_shards
            if state.get("param_shapes") is not None:
                state["param_shapes"] = None  # ZeRO's flat-buffer shapes of the old shard; this tag has no ZeRO files
            torch.save(state, model_file(tmp, t))
            if optimizers is not None:
                torch.save(optimizers[t], named_state_file(tmp, t))
        if num_shards > 1:
            new_layout = {
                "num_shards": num_shards, "num_labels": num_labels,
                "label_ranges": [label_range(num_labels, num_shards, s) for s in range(num_shards)],
                "sharded": sharded, "zero_stage": layout.get("zero_stage", 0),
                "optimizer": "named" if optimizers is not None else None,
            }
            (tmp / SHARDS_FILE).write_text(json.dumps(new_layout, indent=2) + "\n")
        if optimizers is None:
            (tmp / "WEIGHTS_ONLY").write_text(f"re-sharded from {tag} without optimizer state\n")
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if set_latest:
        from xmtc.io import atomic_write_text

        atomic_write_text(ckpt_dir / "latest", new_tag)
    return new_tag


def check_resume_layout(ckpt_dir: Path, num_shards: int) -> None:
    """Before DeepSpeed reads the files: stop with one sentence if the latest tag has another layout."""
    latest = Path(ckpt_dir) / "latest"
    if not latest.is_file():
        return
    tag = latest.read_text().strip()
    tag_dir = Path(ckpt_dir) / tag
    if not tag or "/" in tag or not tag_dir.is_dir():
        # Not the hidden ones: `.<tag>.tmp<pid>`, what a killed re-shard left (and never resumable).
        tags = sorted((p.name for p in Path(ckpt_dir).iterdir()
                       if p.is_dir() and not p.name.startswith(".") and any(p.glob("*model_states.pt"))),
                      key=lambda t: (len(t), t))
        what = "is empty (a save was stopped while DeepSpeed wrote it)" if not tag else f"names {tag!r}, which is not a checkpoint there"
        raise UserError(
            f"{latest} {what}; write the tag to resume from into it (checkpoints there: {', '.join(tags) or 'none'})"
            + ("" if tags else ", or remove it to start afresh")
        )
    saved = int(read_layout(tag_dir)["num_shards"])
    run = Path(ckpt_dir).parent
    if saved != num_shards:
        raise ConfigError(
            f"config key 'parallel.label_shards' is {num_shards} but checkpoint {tag_dir} was saved with {saved}; "
            f"resume with --parallel.label_shards {saved}, or re-shard it first: "
            f"python -m xmtc.parallel.reshard --run {run} --to {num_shards} --set-latest"
        )
    if (tag_dir / "WEIGHTS_ONLY").is_file():
        raise ConfigError(
            f"config key 'train.resume' is true but checkpoint {tag_dir} holds weights only (re-sharded from a "
            "run whose optimizer state it could not read, such as fp16 at ZeRO-0), so training cannot continue "
            "exactly; use it with xmtc.predict/xmtc.evaluate"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the train.output_dir of a run")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    p.add_argument("--to", type=int, required=True, help="shards of the new tag; 1 = unsharded")
    p.add_argument("--new-tag", default=None, help="name of the new tag (default: <tag>-shards<N>)")
    p.add_argument("--set-latest", action="store_true", help="point checkpoints/latest at the new tag (to resume from it)")
    args = p.parse_args(argv)
    try:
        from xmtc.checkpoint import resolve_tag

        ckpt_dir = Path(args.run) / "checkpoints"
        if not ckpt_dir.is_dir():
            raise UserError(f"{args.run} has no checkpoints/ folder; pass the train.output_dir of a run")
        tag = resolve_tag(ckpt_dir, args.tag)
        new_tag = reshard_tag(ckpt_dir, tag, args.to, args.new_tag, args.set_latest)
        print(f"wrote {ckpt_dir / new_tag} ({args.to} shard{'s' if args.to > 1 else ''})"
              + ("" if args.set_latest else f"; use it with --tag {new_tag}"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
