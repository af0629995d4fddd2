"""Batches: padding and CSR labels, the sharded resumable training order, evaluation shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmtc.config import ConfigError
from xmtc.data import TrainBatchSampler, collate, eval_range

ROWS = [
    {"input_ids": [5, 6, 7, 8], "labels": [3, 0]},
    {"input_ids": [9], "labels": []},
    {"input_ids": [], "labels": [7]},
]


def test_collate_pads_truncates_and_keeps_labels_sparse():
    batch = collate(ROWS, max_len=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [0, 0, 0]]
    assert batch["lengths"].tolist() == [3, 1, 1]  # truncated to 3; an empty row counts as length 1
    assert batch["label_idx"].tolist() == [3, 0, 7] and batch["label_offsets"].tolist() == [0, 2, 2, 3]
    assert all(t.dtype == torch.int64 for t in batch.values())


def test_collate_accepts_the_column_dict_a_dataset_returns():
    columns = {"input_ids": [r["input_ids"] for r in ROWS], "labels": [r["labels"] for r in ROWS]}
    by_rows, by_columns = collate(ROWS, 6), collate(columns, 6)
    assert all(torch.equal(by_rows[k], by_columns[k]) for k in by_rows)
    assert by_rows["input_ids"].shape == (3, 6) and by_rows["input_ids"][0].tolist() == [5, 6, 7, 8, 0, 0]


@pytest.mark.parametrize("world, accum, micro, n", [(1, 1, 4, 10), (3, 2, 4, 100), (4, 3, 5, 61)])
def test_sampler_shards_each_global_batch(world, accum, micro, n):
    samplers = [TrainBatchSampler(n, micro, r, world, seed=3, grad_accum=accum) for r in range(world)]
    global_batch = micro * accum * world
    steps = n // global_batch
    assert all(s.steps_per_epoch == steps and s.micro_batches_per_epoch == steps * accum for s in samplers)
    for epoch in (0, 1):
        perm = samplers[0].permutation(epoch)
        assert sorted(perm.tolist()) == list(range(n))
        per_rank = [list(s.micro_batches(epoch)) for s in samplers]
        assert all(len(batches) == steps * accum for batches in per_rank)
        for step in range(steps):
            taken = [i for batches in per_rank for b in batches[step * accum : (step + 1) * accum] for i in b]
            assert len(taken) == len(set(taken)) == global_batch  # disjoint shards ...
            assert sorted(taken) == sorted(perm[step * global_batch : (step + 1) * global_batch].tolist())  # ... of step's batch
        # Micro-step a of a step: rank r reads the r-th block of M in a consecutive slice of M x W.
        first = [batches[1 if accum > 1 else 0] for batches in per_rank]
        offset = micro * world if accum > 1 else 0
        assert [i for b in first for i in b] == perm[offset : offset + micro * world].tolist()
    assert samplers[0].permutation(0).tolist() != samplers[0].permutation(1).tolist()


def test_sampler_resume_equals_the_tail_of_an_uninterrupted_run():
    sampler = TrainBatchSampler(1000, 8, rank=1, world_size=2, seed=11, grad_accum=4)
    full = list(sampler.micro_batches(epoch=2))
    for k in (0, 1, 5, 17, len(full) - 1, len(full)):
        assert list(sampler.micro_batches(epoch=2, start_micro_batch=k)) == full[k:]
    again = TrainBatchSampler(1000, 8, rank=1, world_size=2, seed=11, grad_accum=4)
    assert list(again.micro_batches(epoch=2)) == full
    other_seed = TrainBatchSampler(1000, 8, rank=1, world_size=2, seed=12, grad_accum=4)
    assert list(other_seed.micro_batches(epoch=2)) != full


def test_resume_point_continues_across_epochs():
    sampler = TrainBatchSampler(100, 4, rank=0, world_size=2, seed=5, grad_accum=3)  # 4 steps of 12 micro-batches
    uninterrupted = [b for epoch in range(3) for b in sampler.micro_batches(epoch)]
    for completed in (0, 3, 4, 9):
        epoch, start = sampler.resume_point(completed)
        resumed = [b for e in range(epoch, 3) for b in sampler.micro_batches(e, start if e == epoch else 0)]
        assert resumed == uninterrupted[completed * 3 :]
    assert sampler.resume_point(9) == (2, 3)


def test_sampler_drops_the_tail_and_rejects_tiny_sets():
    sampler = TrainBatchSampler(23, 5, rank=0, world_size=2, seed=0)
    seen = [i for b in sampler.micro_batches(0) for i in b]
    assert sampler.steps_per_epoch == 2 and len(seen) == 10  # 2 steps x 5 for this rank; 3 dropped overall
    with pytest.raises(ConfigError, match="the training set has 7 documents, fewer than one global batch of 8"):
        TrainBatchSampler(7, 4, rank=0, world_size=2, seed=0)


@pytest.mark.parametrize("n", [0, 1, 7, 10, 11, 1000])
@pytest.mark.parametrize("world", [1, 3, 4])
def test_eval_range_covers_every_index_once(n, world):
    parts = [eval_range(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 1 and all(p.step == 1 for p in parts)
