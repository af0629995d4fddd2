"""Process groups of label sharding, and the collectives a label-sharded layer is built from.

With `parallel.label_shards = N` on W ranks, the ranks are cut into W / N shard groups of N
consecutive ranks: group g = [g*N, (g+1)*N) splits the labels of one output layer, rank g*N + s
holding label slice s. The ranks holding the same slice s (s, s + N, s + 2N, ...) form its replica
group and keep that slice identical by averaging its gradients.

`LabelShardGroups` is also DeepSpeed's `mpu` (its model-parallel unit): the shard group is the
model-parallel group and the replica group the data-parallel one. DeepSpeed then averages every
gradient over the replica group only, sums the gradient norm of parameters marked by
`mark_label_sharded` over the shard group (counting the others once), and writes one
`mp_rank_{s:02d}_model_states.pt` per shard. Two rules keep the update equal to plain data
parallelism over W ranks:
  1. the loss a rank backpropagates is the mean over its shard group's batch (N x B documents);
  2. gradients of replicated parameters (the encoder, which sees only this rank's B documents) are
     summed over the shard group before DeepSpeed's reduction: `sum_grads_over_shard_group`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from xmtc.distributed import DistInfo

# torch 2.13 renamed the flat-tensor collectives; keep the old names for older torch.
all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class LabelShardGroups:
    """Shard and replica groups of `num_shards` consecutive ranks; DeepSpeed's mpu interface."""

    def __init__(self, num_shards: int, dist_info: DistInfo):
        world, rank = dist_info.world_size, dist_info.rank
        if num_shards < 1 or world % num_shards:
            raise ValueError(f"label shards {num_shards} must divide the world size {world}")
        self.num_shards = num_shards
        self.world_size = world
        self.rank = rank
        self.num_replicas = world // num_shards
        self.shard_rank = rank % num_shards
        """Which label slice this rank holds (its rank in the shard group)."""
        self.replica_rank = rank // num_shards
        """Which shard group this rank is in (its rank in the replica group)."""
        self.shard_ranks = list(range(self.replica_rank * num_shards, (self.replica_rank + 1) * num_shards))
        self.replica_ranks = list(range(self.shard_rank, world, num_shards))
        self.shard_group = self.replica_group = None
        # new_group is collective: every rank creates every group, in the same order.
        for g in range(self.num_replicas):
            group = dist.new_group(list(range(g * num_shards, (g + 1) * num_shards)))
            if g == self.replica_rank:
                self.shard_group = group
        for s in range(num_shards):
            group = dist.new_group(list(range(s, world, num_shards)))
            if s == self.shard_rank:
                self.replica_group = group

    def label_range(self, num_labels: int, shard: int | None = None) -> tuple[int, int]:
        """[start, stop) of this rank's (or `shard`'s) labels: contiguous, sizes differ by at most 1."""
        return label_range(num_labels, self.num_shards, self.shard_rank if shard is None else shard)

    # DeepSpeed's mpu interface (deepspeed/utils/groups.py, runtime/utils.py, zero/stage_1_and_2.py).
    def get_model_parallel_rank(self) -> int:
        return self.shard_rank

    def get_model_parallel_world_size(self) -> int:
        return self.num_shards

    def get_model_parallel_group(self):
        return self.shard_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.replica_rank

    def get_data_parallel_world_size(self) -> int:
        return self.num_replicas

    def get_data_parallel_group(self):
        return self.replica_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.replica_ranks)

    def __repr__(self) -> str:
        return (f"LabelShardGroups(num_shards={self.num_shards}, shard_rank={self.shard_rank}, "
                f"shard_ranks={self.shard_ranks}, replica_ranks={self.replica_ranks})")


def label_range(num_labels: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Shard `shard` of `num_shards` holds [start, stop); the first num_labels % num_shards get one more."""
    base, extra = divmod(num_labels, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def mark_label_sharded(param: nn.Parameter, groups: LabelShardGroups) -> nn.Parameter:
    """Tell DeepSpeed that `param` differs across the shard group (a slice of a larger tensor).

    DeepSpeed reads `model_parallel`/`tensor_model_parallel` to sum this parameter's gradient
    norm over the model-parallel (shard) group; the rest is for our checkpoints and tools.
    """
    param.model_parallel = True
    param.tensor_model_parallel = True
    param.partition_dim = 0  # sliced along labels, the first dimension
    param.label_shards = groups.num_shards
    return param


def is_label_sharded(param: torch.Tensor) -> bool:
    return bool(getattr(param, "label_shards", 0))


def sum_grads_over_shard_group(params: Iterable[nn.Parameter], groups: LabelShardGroups) -> list:
    """Make the gradient of each replicated parameter the sum over its shard group (rule 2 above).

    A tensor hook runs before the gradient is accumulated into .grad, hence before any DeepSpeed
    hook or reduction at every ZeRO stage. Returns the hook handles.
    """
    if groups.num_shards == 1:
        return []

    def reduce(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()  # autograd may hand the same buffer to other consumers
        dist.all_reduce(grad, group=groups.shard_group)
        return grad

    return [p.register_hook(reduce) for p in params if p.requires_grad and not is_label_sharded(p)]


# ------------------------------------------------------------------------ collectives


def gather_sizes(n: int, group, device: torch.device) -> list[int]:
    """Every rank's `n`, in group-rank order."""
    world = dist.get_world_size(group)
    if world == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = torch.empty(world, dtype=torch.int64, device=device)
    all_gather_flat(out, mine, group=group)
    return out.tolist()


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """all_gather of rows with uneven counts: pad to the largest, gather, drop the padding."""
    most = max(sizes)
    if most == 0:
        return x.new_empty((0, *x.shape[1:]))
    padded = x.new_zeros((most, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = x.new_empty((len(sizes) * most, *x.shape[1:]))
    all_gather_flat(out, padded.contiguous(), group=group)
    if all(s == most for s in sizes):
        return out
    return torch.cat([out[i * most : i * most + s] for i, s in enumerate(sizes)])


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes):
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        # Each rank's rows were used by every rank: sum their gradients and keep our own rows.
        sizes, most = ctx.sizes, max(ctx.sizes)
        stacked = grad.new_zeros((len(sizes), most, *grad.shape[1:]))
        start = 0
        for i, s in enumerate(sizes):
            stacked[i, :s] = grad[start : start + s]
            start += s
        out = grad.new_empty((most, *grad.shape[1:]))
        reduce_scatter_flat(out, stacked.flatten(0, 1), group=ctx.group)
        return out[: sizes[ctx.rank]], None, None


def all_gather_rows(x: torch.Tensor, group, sizes: list[int] | None = None) -> torch.Tensor:
    """Rows of `x` from every rank of `group`, concatenated in rank order (row counts may differ).

    Backward: each rank receives the gradient of its own rows summed over the group (a
    reduce-scatter). `sizes` (every rank's row count) saves a small collective when known.
    """
    if group is None or dist.get_world_size(group) == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], group, x.device)
    return _AllGatherRows.apply(x, group, sizes)


@torch.no_grad()
def all_gather_csr(label_idx: torch.Tensor, label_offsets: torch.Tensor, group,
                   sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR targets of every rank's rows, concatenated in rank order (the rows of all_gather_rows)."""
    if group is None or dist.get_world_size(group) == 1:
        return label_idx, label_offsets
    counts = torch.diff(label_offsets)
    if sizes is None:
        sizes = gather_sizes(counts.numel(), group, counts.device)
    nnz = gather_sizes(label_idx.numel(), group, label_idx.device)
    all_counts = _gather_padded(counts, sizes, group)
    all_idx = _gather_padded(label_idx, nnz, group)
    offsets = torch.zeros(all_counts.numel() + 1, dtype=label_offsets.dtype, device=label_offsets.device)
    torch.cumsum(all_counts, 0, out=offsets[1:])
    return all_idx, offsets
