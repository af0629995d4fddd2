"""Batches: padded token tensors with sparse (CSR) labels, a resumable sharded training order, eval shards."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xmtc.config import ConfigError

PAD_ID = 0


def collate(rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]], max_len: int) -> dict[str, torch.Tensor]:
    """Rows with `input_ids` and `labels` -> tensors; the labels stay sparse.

    `rows` is a list of row dicts or the column dict `Dataset.__getitem__(list_of_indices)` returns.
    Returns input_ids [B, max_len] (right-padded with 0, truncated to max_len), lengths [B] (at
    least 1), and labels as CSR: row b's label ids are label_idx[label_offsets[b]:label_offsets[b + 1]],
    in the row's stored order (label_offsets has B + 1 entries).
    """
    if isinstance(rows, Mapping):
        ids_rows, label_rows = rows["input_ids"], rows["labels"]
    else:
        ids_rows, label_rows = [r["input_ids"] for r in rows], [r["labels"] for r in rows]
    batch = len(ids_rows)
    lengths = np.fromiter((min(len(r), max_len) for r in ids_rows), dtype=np.int64, count=batch)
    flat = np.fromiter((t for r in ids_rows for t in r[:max_len]), dtype=np.int64, count=int(lengths.sum()))
    input_ids = np.full((batch, max_len), PAD_ID, dtype=np.int64)
    input_ids[np.arange(max_len) < lengths[:, None]] = flat  # row-major mask order = concatenation order
    counts = np.fromiter((len(r) for r in label_rows), dtype=np.int64, count=batch)
    label_idx = np.fromiter((x for r in label_rows for x in r), dtype=np.int64, count=int(counts.sum()))
    return {
        "input_ids": torch.from_numpy(input_ids),
        "lengths": torch.from_numpy(np.maximum(lengths, 1)),  # an empty row is all padding of length 1
        "label_idx": torch.from_numpy(label_idx),
        "label_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])),
    }


class TrainBatchSampler:
    """Deterministic, resumable, sharded training order.

    Epoch e visits a permutation drawn from (seed, e). Optimizer step s takes the consecutive global
    batch perm[s*G : (s+1)*G] with G = micro_batch_size x grad_accum x world_size; its accumulation
    micro-step a is the slice perm[s*G + a*M*W : s*G + (a+1)*M*W] (M micro batch, W world size), of
    which rank r reads the r-th block of M. The tail that does not fill a global batch is dropped, so
    every rank runs the same number of micro-batches. This rank's micro-batch m of an epoch is
    therefore step m // grad_accum, micro-step m % grad_accum.
    """

    def __init__(self, num_examples: int, micro_batch_size: int, rank: int, world_size: int, seed: int, grad_accum: int = 1):
        if not 0 <= rank < world_size or micro_batch_size < 1 or grad_accum < 1:
            raise ValueError(f"bad sampler arguments: rank {rank}, world {world_size}, micro {micro_batch_size}, accum {grad_accum}")
        self.num_examples = num_examples
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.grad_accum = grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size
        if num_examples < self.global_batch_size:
            raise ConfigError(
                f"the training set has {num_examples} documents, fewer than one global batch of "
                f"{self.global_batch_size} (micro batch {micro_batch_size} x accumulation {grad_accum} x "
                f"{world_size} ranks); lower deepspeed.train_micro_batch_size_per_gpu"
                + (" or deepspeed.gradient_accumulation_steps" if grad_accum > 1 else "")
                + (", or train on fewer ranks" if world_size > 1 else "")
            )

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (global batches) per epoch."""
        return self.num_examples // self.global_batch_size

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches this rank runs per epoch (the same on every rank)."""
        return self.steps_per_epoch * self.grad_accum

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def resume_point(self, completed_steps: int) -> tuple[int, int]:
        """(epoch, start_micro_batch) that continue a run after `completed_steps` optimizer steps."""
        epoch, step = divmod(completed_steps, self.steps_per_epoch)
        return epoch, step * self.grad_accum

    def micro_batches(self, epoch: int, start_micro_batch: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches (lists of example indices) of `epoch`, from `start_micro_batch` on."""
        perm = self.permutation(epoch)
        micro, world = self.micro_batch_size, self.world_size
        for m in range(start_micro_batch, self.micro_batches_per_epoch):
            step, a = divmod(m, self.grad_accum)
            start = step * self.global_batch_size + a * micro * world + self.rank * micro
            yield perm[start : start + micro].tolist()


def eval_range(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of [0, n): the first n % world_size ranks get one extra."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))
