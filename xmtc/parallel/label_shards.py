"""Label sharding of XML-CNN's output layer: each of N ranks owns a contiguous slice of the labels.

The encoder stays data-parallel. The sharded layer all-gathers the bottleneck features (and the
sparse targets) of its shard group, scores the group batch against its own labels with the fused
linear + BCE of `xmtc.ops`, and all-reduces one scalar for the reported loss; the all-gather's
backward hands each rank the summed gradient of its own feature rows (a reduce-scatter). Top-k
takes each shard's top-k of the group batch, all-gathers the candidates and merges them.

DeepSpeed is told through its `mpu` argument (see `xmtc.parallel.groups`): the replica group is its
data-parallel group, so ZeRO 1/2 partition each shard's optimizer state over that shard's replicas,
gradient norms add up over shards, and each shard is checkpointed once as mp_rank_{s:02d}.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from xmtc import ops
from xmtc.config import Config, ConfigError
from xmtc.distributed import DistInfo
from xmtc.io import atomic_write_text
from xmtc.models.output_layer import OutputLayer, check_label_ids, dense_targets
from xmtc.ops_reference import multilabel_loss_reference
from xmtc.parallel import ParallelPlan
from xmtc.parallel.groups import (
    LabelShardGroups,
    all_gather_csr,
    all_gather_flat,
    all_gather_rows,
    gather_sizes,
    mark_label_sharded,
    sum_grads_over_shard_group,
)
from xmtc.parallel.optim_state import optimizer_param_names
from xmtc.parallel.reshard import SHARDS_FILE

SHARDED_NAMES = ("output.weight", "output.bias")
"""State-dict entries of XML-CNN that are split by label (dimension 0); the rest are replicated."""


class LabelShardedOutputLayer(nn.Module):
    """Rows [label_start, label_stop) of an `OutputLayer`, with the same loss/topk interface.

    `num_labels` is the global label count; weight is [label_stop - label_start, H].
    """

    def __init__(self, in_features: int, num_labels: int, groups: LabelShardGroups,
                 loss: str = "fused", chunk_size: int = 8192, criterion: str = "bce"):
        super().__init__()
        self.in_features, self.num_labels = in_features, num_labels
        self.loss_mode, self.chunk_size, self.criterion = loss, chunk_size, criterion
        self.groups = groups
        self.label_start, self.label_stop = groups.label_range(num_labels)
        local = self.label_stop - self.label_start
        self.weight = mark_label_sharded(nn.Parameter(torch.empty(local, in_features)), groups)
        self.bias = mark_label_sharded(nn.Parameter(torch.empty(local)), groups)

    @classmethod
    def from_layer(cls, layer: OutputLayer, groups: LabelShardGroups) -> LabelShardedOutputLayer:
        """This rank's slice of `layer` (copied, so the full layer can be freed)."""
        sharded = cls(layer.in_features, layer.num_labels, groups, layer.loss_mode, layer.chunk_size, layer.criterion)
        with torch.no_grad():
            sharded.weight.copy_(layer.weight[sharded.label_start : sharded.label_stop])
            sharded.bias.copy_(layer.bias[sharded.label_start : sharded.label_stop])
        return sharded

    def _gather(self, features: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        group = self.groups.shard_group
        sizes = gather_sizes(features.shape[0], group, features.device)
        return all_gather_rows(features, group, sizes), sizes

    def local_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the shard group's documents for this shard's labels: [group batch, L_local]."""
        return F.linear(self._gather(features)[0], self.weight, self.bias)

    def loss(self, features: torch.Tensor, label_idx: torch.Tensor, label_offsets: torch.Tensor) -> torch.Tensor:
        """Mean over the shard group's documents of the BCE (or squared hinge) summed over all L labels.

        Every rank of the group returns the same value; the gradient of each rank's copy covers
        only its own labels, which is what DeepSpeed's replica-group averaging expects.
        """
        group = self.groups.shard_group
        feats, sizes = self._gather(features)
        idx, offsets = all_gather_csr(label_idx, label_offsets, group, sizes)
        check_label_ids(idx, self.num_labels)  # the group's documents: every rank of the shard group refuses alike
        if self.loss_mode == "materialized":
            y = dense_targets(idx, offsets, self.weight.shape[0], self.label_start)
            local = multilabel_loss_reference(F.linear(feats, self.weight, self.bias).float(), y, self.criterion)
        else:
            local = ops.fused_linear_bce(feats, self.weight, self.bias, idx, offsets, label_offset=self.label_start,
                                         chunk_size=self.chunk_size, criterion=self.criterion)
        total = local.detach().clone()
        if self.groups.num_shards > 1:
            dist.all_reduce(total, group=group)
        # Other shards' sums enter the value but not the gradient: each owns its own backward.
        return (local + (total - local.detach())) / sum(sizes)

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmoid scores [B, k], global label ids [B, k]) of this rank's documents, as OutputLayer.topk."""
        k = min(k, self.num_labels)
        feats, sizes = self._gather(features)
        local_k = min(k, self.weight.shape[0])
        scores, ids = ops.linear_topk(feats, self.weight, self.bias, local_k,
                                      label_offset=self.label_start, chunk_size=self.chunk_size)
        if local_k < k:  # a shard with fewer than k labels pads with candidates that sort last
            pad = k - local_k
            scores = torch.cat([scores, scores.new_full((scores.shape[0], pad), float("-inf"))], dim=1)
            ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), self.num_labels)], dim=1)
        n = self.groups.num_shards
        if n > 1:
            all_scores = scores.new_empty((n * scores.shape[0], k))
            all_ids = ids.new_empty((n * ids.shape[0], k))
            all_gather_flat(all_scores, scores.contiguous(), group=self.groups.shard_group)
            all_gather_flat(all_ids, ids.contiguous(), group=self.groups.shard_group)
            all_scores, all_ids = all_scores.view(n, -1, k), all_ids.view(n, -1, k)
        else:
            all_scores, all_ids = scores[None], ids[None]
        me = self.groups.shard_rank
        rows = slice(sum(sizes[:me]), sum(sizes[: me + 1]))
        # Shard order is label order and each shard's list is sorted with ties toward lower ids,
        # so a stable sort of the concatenation breaks ties toward lower ids globally.
        cand_scores = all_scores[:, rows].permute(1, 0, 2).reshape(sizes[me], n * k)
        cand_ids = all_ids[:, rows].permute(1, 0, 2).reshape(sizes[me], n * k)
        order = cand_scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        return torch.sigmoid(cand_scores.gather(1, order).float()), cand_ids.gather(1, order)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_labels={self.num_labels}, "
                f"labels=[{self.label_start}, {self.label_stop}), shard={self.groups.shard_rank}/"
                f"{self.groups.num_shards}, loss={self.loss_mode}")


class LabelShardPlan(ParallelPlan):
    """Label-sharded XML-CNN: DeepSpeed sees a model-parallel group (the shard group) via `mpu`."""

    def __init__(self, model: nn.Module, dist_info: DistInfo, groups: LabelShardGroups, num_labels: int,
                 sharded_names: tuple[str, ...] = SHARDED_NAMES):
        super().__init__(model, dist_info.rank, dist_info.world_size, mpu=groups)
        self.groups, self.num_labels, self.sharded_names = groups, num_labels, sharded_names
        self.is_main = dist_info.is_main
        # Rule 2 of xmtc.parallel.groups: replicated gradients are summed over the shard group.
        self.grad_hooks = sum_grads_over_shard_group(model.parameters(), groups)

    def deepspeed_config(self, ds: dict) -> dict:
        # For DeepSpeed a data-parallel rank is a shard group, which reads N micro-batches per micro-step.
        ds = dict(ds)
        ds["train_micro_batch_size_per_gpu"] = int(ds["train_micro_batch_size_per_gpu"]) * self.groups.num_shards
        ds["train_batch_size"] = (ds["train_micro_batch_size_per_gpu"] * int(ds.get("gradient_accumulation_steps", 1))
                                  * self.groups.num_replicas)
        return ds

    def layout(self, engine) -> dict:
        """What `label_shards.json` records: enough to re-shard without building the model."""
        ranges = [self.groups.label_range(self.num_labels, s) for s in range(self.groups.num_shards)]
        return {"num_shards": self.groups.num_shards, "num_labels": self.num_labels, "label_ranges": ranges,
                "sharded": list(self.sharded_names), "zero_stage": engine.zero_optimization_stage(),
                "world_size": self.groups.world_size, "optimizer_params": optimizer_param_names(engine)}

    def save_checkpoint(self, engine, ckpt_dir: Path, tag: str) -> None:
        # DeepSpeed wrote mp_rank_{s:02d}_model_states.pt once per shard (replica rank 0): record the layout.
        if self.is_main:
            atomic_write_text(Path(ckpt_dir) / tag / SHARDS_FILE, json.dumps(self.layout(engine), indent=2) + "\n")
        dist.barrier()



def shard_labels(model: nn.Module, cfg: Config, dist_info: DistInfo) -> ParallelPlan:
    """Replace the output layer of `model` by this rank's label slice; returns the plan."""
    n = cfg.parallel.label_shards
    stage = int(cfg.deepspeed.get("zero_optimization", {}).get("stage", 0))
    if stage == 3:
        raise ConfigError(
            f"config key 'parallel.label_shards' is {n} but deepspeed.zero_optimization.stage is 3; "
            "ZeRO-3 already spreads the unsharded output layer: use label_shards 1 with stage 3, or stage 0-2 with label sharding"
        )
    if dist_info.world_size % n:
        raise ConfigError(
            f"config key 'parallel.label_shards' is {n}, which does not divide the world size "
            f"{dist_info.world_size}; use a divisor of {dist_info.world_size}"
        )
    groups = LabelShardGroups(n, dist_info)
    if cfg.model.name == "sgm":
        from xmtc.parallel.sgm_shards import shard_sgm

        return shard_sgm(model, cfg, dist_info, groups)
    if not isinstance(getattr(model, "output", None), OutputLayer):
        raise ConfigError(f"config key 'parallel.label_shards' is {n} but model '{cfg.model.name}' has no OutputLayer to shard")
    num_labels = model.output.num_labels
    if num_labels < n:
        raise ConfigError(f"config key 'parallel.label_shards' is {n}, more than the {num_labels} labels; use at most {num_labels}")
    model.output = LabelShardedOutputLayer.from_layer(model.output, groups)
    return LabelShardPlan(model, dist_info, groups, num_labels)
