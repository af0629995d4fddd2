"""Parallelism applied to a plain model from outside (the models hold no distributed code).

`parallelize(model, cfg, dist_info)` returns a `ParallelPlan`: the (possibly rewritten) model and
everything the trainer must hand to DeepSpeed or do around it. With `parallel.label_shards = 1`
the plan is plain data parallelism over all ranks; with N > 1 the output layer is split by label
over groups of N ranks (`label_shards.py`, process groups and collectives in `groups.py`,
checkpoint re-sharding in `reshard.py`; docs/label_sharding.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmtc.config import Config, UserError
from xmtc.distributed import DistInfo
from xmtc.io import atomic_write_text


@dataclass
class ParallelPlan:
    model: nn.Module
    data_rank: int
    """Which slice of every global batch (and of the test set) this rank reads."""
    data_world_size: int
    """How many slices a global batch is cut into."""
    mpu: Any = None
    """Handed to deepspeed.initialize(mpu=...) when DeepSpeed must know a model-parallel group."""

    @property
    def shard_rank(self) -> int:
        """Which label shard this rank holds (its model-parallel rank; 0 when unsharded)."""
        return self.mpu.get_model_parallel_rank() if self.mpu is not None else 0

    @property
    def counts_metrics(self) -> bool:
        """Whether this rank's evaluation sums enter the all-reduced metrics: false on all but one rank of a
        group that scores the same documents together (each document must count once)."""
        return True

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """Optimizer parameter groups as DeepSpeed must see them."""
        return groups

    def deepspeed_config(self, ds: dict) -> dict:
        """The resolved deepspeed section as DeepSpeed must see it (batch sizes per its data-parallel rank)."""
        return ds

    def save_checkpoint(self, engine, ckpt_dir: Path, tag: str) -> None:
        """Called on every rank right after engine.save_checkpoint."""
        from xmtc.parallel.optim_state import OPTIMIZER_PARAMS_FILE, optimizer_param_names

        names = optimizer_param_names(engine)
        if names and self.data_rank == 0:  # what maps a ZeRO-0 optimizer's state to parameters when re-sharding
            atomic_write_text(Path(ckpt_dir) / tag / OPTIMIZER_PARAMS_FILE, json.dumps(names) + "\n")

    def load_checkpoint(self, engine, ckpt_dir: Path, tag: str) -> None:
        """Called on every rank right after engine.load_checkpoint: a re-sharded tag's optimizer state."""
        from xmtc.parallel.optim_state import has_named_state, load_named_state, named_state_file

        tag_dir = Path(ckpt_dir) / tag
        if has_named_state(tag_dir):
            load_named_state(engine, torch.load(named_state_file(tag_dir, self.shard_rank), map_location="cpu",
                                                weights_only=False))


def load_checkpoint(engine, plan: ParallelPlan, ckpt_dir: Path, tag: str | None = None) -> tuple[str, dict]:
    """engine.load_checkpoint + plan.load_checkpoint, for tags the trainer saved and tags re-sharded by
    `xmtc.parallel.reshard` alike (those hold the optimizer state by parameter name, which DeepSpeed
    cannot read: it loads weights, schedule and client state, the plan the rest). Returns (tag, client state)."""
    from xmtc.parallel.optim_state import has_named_state

    ckpt_dir = Path(ckpt_dir)
    if tag is None:
        tag = (ckpt_dir / "latest").read_text().strip()
    named = has_named_state(ckpt_dir / tag)
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=not named)
    if path is None:
        raise UserError(f"checkpoint {ckpt_dir / tag} could not be loaded; pass another tag")
    plan.load_checkpoint(engine, ckpt_dir, tag)
    scheduler = getattr(engine, "lr_scheduler", None)
    if named and scheduler is not None and hasattr(scheduler, "get_last_lr"):
        # DeepSpeed restored the schedule's position but not the optimizer's param groups, whose lr a
        # schedule sets only at its next step: put back the lr of the step the checkpoint was taken at.
        for group, lr in zip(engine.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
    return tag, client


def parallelize(model: nn.Module, cfg: Config, dist_info: DistInfo) -> ParallelPlan:
    if cfg.train.resume:
        from xmtc.parallel.reshard import check_resume_layout

        check_resume_layout(Path(cfg.train.output_dir) / "checkpoints", cfg.parallel.label_shards)
    if cfg.parallel.label_shards == 1:
        return ParallelPlan(model, dist_info.rank, dist_info.world_size)
    from xmtc.parallel.label_shards import shard_labels

    return shard_labels(model, cfg, dist_info)
