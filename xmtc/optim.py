"""The torch optimizer and learning-rate schedule the trainer hands DeepSpeed (and the memory planner models).

A torch Adam(W), not DeepSpeed's: its fused CPU Adam needs a long JIT build. A `deepspeed.optimizer`
block in the config still selects DeepSpeed's own. Where this torch has it for the device, the
optimizer is torch's fused implementation: one kernel over all parameters, without the per-tensor
temporaries of the for-loop one; on one CPU core it steps 13.3M parameters in 12.2 ms instead of 102.6 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from xmtc.config import Config


@functools.cache
def fused_adam_supported(device_type: str) -> bool:
    """Whether torch.optim.Adam(W)(fused=True) runs on `device_type` ("cpu", "cuda") with this torch."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # torch before 2.1: fused Adam was CUDA-only
        return device_type == "cuda"
    return device_type in _get_fused_kernels_supported_devices()


def build_optimizer(cfg: Config, model: torch.nn.Module, plan) -> torch.optim.Optimizer:
    """Adam(W) over `model` with weight decay on matrices other than embeddings; `plan` groups the parameters."""
    t = cfg.train
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim > 1 and "embedding" not in n)]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    groups = plan.param_groups([g for g in groups if g["params"]])
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    device = next(model.parameters()).device.type
    return cls(groups, lr=t.lr, betas=tuple(t.betas), fused=fused_adam_supported(device) or None)


def lr_lambda(cfg: Config, total_steps: int):
    """Step -> learning-rate factor: linear warm-up, then linear, cosine or constant down to min_lr_ratio."""
    t = cfg.train

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
        shape = 1.0 - progress if t.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * shape

    return factor


def configured_settings(optimizer: torch.optim.Optimizer, scheduler) -> Callable[[], list[str]]:
    """What the config set in `optimizer` and `scheduler` (lr, weight decay, betas per group), as a function
    that puts it back after a checkpoint load, which restores the checkpointed run's values: a resumed run
    takes train.lr, weight_decay and betas from its config, as its config.json then says. The function
    returns the settings that differed from the checkpoint's (config keys)."""
    groups = [(g["weight_decay"], tuple(g["betas"])) for g in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)

    def restore() -> list[str]:
        changed = set()
        if [float(b) for b in scheduler.base_lrs] != base_lrs:
            changed.add("train.lr")
        for g, (weight_decay, betas) in zip(optimizer.param_groups, groups):
            changed |= {"train.weight_decay"} if g["weight_decay"] != weight_decay else set()
            changed |= {"train.betas"} if tuple(g["betas"]) != betas else set()
            g["weight_decay"], g["betas"] = weight_decay, betas
        scheduler.base_lrs = list(base_lrs)
        for g, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            g["initial_lr"], g["lr"] = base, base * factor(scheduler.last_epoch)  # the restored position
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        return sorted(changed)

    return restore
