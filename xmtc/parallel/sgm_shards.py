"""Label sharding of SGM: the decoder's output projection and label embeddings split by label.

Layout: the N ranks of a shard group decode the SAME documents (data_rank = rank // N), because
the decoder's next input depends on e_bar and on the argmax over all labels, so the group must
move in lockstep. Rank s of the group holds output rows [start_s, stop_s) of the V = L + 1
outputs (labels, then EOS) of `decoder.label_head`: projection weight, bias and label embeddings.

Collectives per decoder step, inside the shard group, none of a full-vocabulary tensor:
  softmax: max of the shard row maxima, then sum of their sums of exp rescaled to that max;
  cross-entropy: sum of the target logit (the owning shard contributes it, the others 0);
  e_bar: sum of the shards' partial sums exp(z - max) @ table, divided by the global sum of exp;
  label-embedding lookup: sum (the owner contributes the row);
  greedy argmax: max of the values, then min of the ids holding it (a max-with-index);
  beam search: all-gather of each shard's k best (value, id) pairs, merged.

Autograd: a tensor is either replicated (equal on the group's ranks, with equal gradients) or a
per-shard partial. An all-reduce turns partials into a replicated tensor and hands the gradient
back unchanged; the projection's replicated input sums its gradient over the group (Megatron's
"copy to tensor-parallel region"). So every rank ends the backward with the full gradient of
each replicated parameter and of its own label rows, and DeepSpeed averages over the replica
group only (same labels, other documents): `LabelShardGroups` is its mpu, the sharded rows are
marked so that gradient norms add up over the shards, and each shard is checkpointed once.
The equivalence with the unsharded model is tested in tests/sgm/test_sgm_sharded.py.

Dropout: the group's ranks must draw the same masks; a forward pre-hook copies the RNG state of
the group's first rank to the others before each training forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xmtc.config import Config, ConfigError
from xmtc.distributed import DistInfo
from xmtc.models.sgm import LabelHead
from xmtc.parallel import ParallelPlan
from xmtc.parallel.groups import LabelShardGroups, mark_label_sharded
from xmtc.parallel.label_shards import LabelShardPlan

SGM_SHARDED_NAMES = ("decoder.label_head.weight", "decoder.label_head.bias", "decoder.label_head.embedding")
"""State-dict entries of SGM split by output row (dimension 0); the rest are replicated."""


class _SumOverGroup(torch.autograd.Function):
    """Partials -> their sum on every rank; the gradient of the sum is each partial's gradient."""

    @staticmethod
    def forward(ctx, partial, group):
        total = partial.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToGroup(torch.autograd.Function):
    """A replicated input used by every shard: identity forward, gradients summed over shards."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ShardedLabelHead(LabelHead):
    """This rank's output rows of a `LabelHead`, with the collectives of the module docstring."""

    def __init__(self, full: LabelHead, groups: LabelShardGroups):
        start, stop = groups.label_range(full.num_outputs)
        # No random draws: the unsharded model's RNG stream (dropout) must stay the same.
        with torch.random.fork_rng(devices=[]):
            super().__init__(full.in_features, full.num_outputs, full.embed_dim, label_offset=start, num_local=stop - start)
        with torch.no_grad():
            for name in ("weight", "bias", "embedding"):
                getattr(self, name).copy_(getattr(full, name)[start:stop])
                mark_label_sharded(getattr(self, name), groups)
        self.groups = groups
        self.group = groups.shard_group

    def enter(self, features: torch.Tensor) -> torch.Tensor:
        return _CopyToGroup.apply(features, self.group)

    def reduce_sum(self, partial: torch.Tensor) -> torch.Tensor:
        return _SumOverGroup.apply(partial, self.group)

    def reduce_max(self, partial: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(partial, op=dist.ReduceOp.MAX, group=self.group)
        return partial

    def merge_topk(self, values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 1:
            best = values[:, 0].clone()  # all_reduce is in place; values[:, 0] would alias
            dist.all_reduce(best, op=dist.ReduceOp.MAX, group=self.group)
            # Among the shards holding the maximum, the lowest id wins (torch.max's choice unsharded).
            at = torch.where(values[:, 0] == best, ids[:, 0], torch.full_like(ids[:, 0], self.num_outputs))
            dist.all_reduce(at, op=dist.ReduceOp.MIN, group=self.group)
            return best[:, None], at[:, None]
        n, rows = self.groups.num_shards, values.shape[0]
        if values.shape[1] < k:  # a shard with fewer than k outputs pads with candidates that sort last
            pad = k - values.shape[1]
            values = torch.cat([values, values.new_full((rows, pad), float("-inf"))], dim=1)
            ids = torch.cat([ids, ids.new_full((rows, pad), self.num_outputs)], dim=1)
        all_values = values.new_empty((n * rows, k))
        all_ids = ids.new_empty((n * rows, k))
        dist.all_gather_into_tensor(all_values, values.contiguous(), group=self.group)
        dist.all_gather_into_tensor(all_ids, ids.contiguous(), group=self.group)
        cand_values = all_values.view(n, rows, k).permute(1, 0, 2).reshape(rows, n * k)
        cand_ids = all_ids.view(n, rows, k).permute(1, 0, 2).reshape(rows, n * k)
        # Ties (masked outputs at -inf, above all) go to the lower id, so a padding id never beats a real one.
        by_id = cand_ids.argsort(dim=1, stable=True)
        cand_values, cand_ids = cand_values.gather(1, by_id), cand_ids.gather(1, by_id)
        order = cand_values.argsort(dim=1, descending=True, stable=True)[:, :k]
        return cand_values.gather(1, order), cand_ids.gather(1, order)


class SGMShardPlan(LabelShardPlan):
    """Label-sharded SGM: a shard group is one data-parallel rank for the sampler and for DeepSpeed."""

    def __init__(self, model: nn.Module, dist_info: DistInfo, groups: LabelShardGroups, num_outputs: int):
        ParallelPlan.__init__(self, model, groups.replica_rank, groups.num_replicas, mpu=groups)
        self.groups, self.num_labels, self.sharded_names = groups, num_outputs, SGM_SHARDED_NAMES
        self.is_main = dist_info.is_main
        self.device = dist_info.device
        self.rng_hook = model.register_forward_pre_hook(self._align_rng)

    def deepspeed_config(self, ds: dict) -> dict:
        # Each shard group reads one micro-batch per micro-step, like one data-parallel rank.
        return ds

    @property
    def counts_metrics(self) -> bool:
        return self.shard_rank == 0  # the group's ranks decode the same documents

    def _align_rng(self, module: nn.Module, args) -> None:
        if not module.training or self.groups.num_shards == 1:
            return
        src = self.groups.shard_ranks[0]
        on_cuda = self.device.type == "cuda"
        cpu_state = torch.get_rng_state()
        # NCCL moves device tensors only.
        state = cpu_state.to(self.device) if on_cuda else cpu_state
        dist.broadcast(state, src=src, group=self.groups.shard_group)
        torch.set_rng_state(state.cpu())
        if on_cuda:
            cuda_state = torch.cuda.get_rng_state(self.device).to(self.device)
            dist.broadcast(cuda_state, src=src, group=self.groups.shard_group)
            torch.cuda.set_rng_state(cuda_state.cpu(), self.device)


def shard_sgm(model: nn.Module, cfg: Config, dist_info: DistInfo, groups: LabelShardGroups) -> ParallelPlan:
    """Replace `model.decoder.label_head` by this rank's rows; returns the plan."""
    head = getattr(getattr(model, "decoder", None), "label_head", None)
    if not isinstance(head, LabelHead):
        raise ConfigError("config key 'model.name' is \"sgm\" but the model has no decoder.label_head to shard")
    n = groups.num_shards
    if head.num_outputs < n:
        raise ConfigError(
            f"config key 'parallel.label_shards' is {n}, more than the {head.num_outputs} outputs "
            f"({head.num_outputs - 1} labels + end-of-sequence); use at most {head.num_outputs}"
        )
    model.decoder.label_head = ShardedLabelHead(head, groups)
    return SGMShardPlan(model, dist_info, groups, head.num_outputs)
