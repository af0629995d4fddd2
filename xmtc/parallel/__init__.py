"""Parallelism applied to a plain model from outside (the models hold no distributed code).

`parallelize(model, cfg, dist_info)` returns a `ParallelPlan`: the (possibly rewritten) model and
everything the trainer must hand to DeepSpeed or do around it. With `parallel.label_shards = 1`
the plan is plain data parallelism over all ranks; with N > 1 the output layer is split by label
over groups of N ranks (`label_shards.py`, process groups and collectives in `groups.py`,
checkpoint re-sharding in `reshard.py`; docs/label_sharding.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xmtc.config import Config
from xmtc.distributed import DistInfo


@dataclass
class ParallelPlan:
    model: nn.Module
    data_rank: int
    """Which slice of every global batch (and of the test set) this rank reads."""
    data_world_size: int
    """How many slices a global batch is cut into."""
    mpu: Any = None
    """Handed to deepspeed.initialize(mpu=...) when DeepSpeed must know a model-parallel group."""

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """Optimizer parameter groups as DeepSpeed must see them."""
        return groups

    def deepspeed_config(self, ds: dict) -> dict:
        """The resolved deepspeed section as DeepSpeed must see it (batch sizes per its data-parallel rank)."""
        return ds

    def save_checkpoint(self, engine, ckpt_dir: Path, tag: str) -> None:
        """Called on every rank right after engine.save_checkpoint."""

    def load_checkpoint(self, engine, ckpt_dir: Path, tag: str) -> None:
        """Called on every rank right after engine.load_checkpoint."""


def parallelize(model: nn.Module, cfg: Config, dist_info: DistInfo) -> ParallelPlan:
    if cfg.train.resume:
        from xmtc.parallel.reshard import check_resume_layout

        check_resume_layout(Path(cfg.train.output_dir) / "checkpoints", cfg.parallel.label_shards)
    if cfg.parallel.label_shards == 1:
        return ParallelPlan(model, dist_info.rank, dist_info.world_size)
    from xmtc.parallel.label_shards import shard_labels

    return shard_labels(model, cfg, dist_info)
