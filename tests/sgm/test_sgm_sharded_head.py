"""The label-sharded SGM head against the unsharded one on 2 gloo ranks, at the edges of the
combination of shard softmax statistics: uneven shards, a shard whose labels are all masked (its
max is -inf, its sum 0) and k larger than a shard. Values, e_bar, top-k and gradients must agree."""

from __future__ import annotations

import os
import types

import pytest
import torch
import torch.distributed as dist

from sgm_helpers import gather_from_two_ranks
from xmtc.models.sgm import LabelHead
from xmtc.parallel.groups import label_range
from xmtc.parallel.sgm_shards import ShardedLabelHead

pytestmark = pytest.mark.slow

NUM_OUTPUTS = 5  # shard 0: labels 0-2, shard 1: label 3 and EOS (4)
EMITTED = [[-1, 0, 1, 2], [-1, -1, -1, -1], [-1, 3, -1, -1], [-1, 2, 0, 3]]  # row 0 masks all of shard 0


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        full = LabelHead(6, NUM_OUTPUTS, 4)
        start, stop = label_range(NUM_OUTPUTS, 2, rank)
        groups = types.SimpleNamespace(label_range=lambda n: (start, stop), shard_group=None, num_shards=2)
        head = ShardedLabelHead(full, groups)
        feats = torch.randn(len(EMITTED), 6)
        emitted, target = torch.tensor(EMITTED), torch.tensor([4, 3, 0, 1])
        problems = []

        def check(what, got, want):
            if torch.isnan(got).any() or not torch.allclose(got, want, atol=1e-6):
                problems.append(f"rank {rank} {what}: {got.tolist()} != {want.tolist()}")

        for k in (1, 2, NUM_OUTPUTS + 2):
            with torch.no_grad():
                want = full.step(feats, emitted, target=target, want_e_bar=True, k=k)
                got = head.step(feats, emitted, target=target, want_e_bar=True, k=k)
            width = want.top_logp.shape[1]
            check(f"k={k} target_logp", got.target_logp, want.target_logp)
            check(f"k={k} e_bar", got.e_bar, want.e_bar)
            check(f"k={k} top_logp", got.top_logp[:, :width], want.top_logp)
            finite = torch.isfinite(want.top_logp)
            check(f"k={k} top_ids", got.top_ids[:, :width][finite], want.top_ids[finite])
        mine, ref = feats.clone().requires_grad_(), feats.clone().requires_grad_()
        for h, x in ((head, mine), (full, ref)):
            out = h.step(x, emitted, target=target, want_e_bar=True)
            (out.target_logp.sum() + out.e_bar.square().sum()).backward()
        check("features' gradient", mine.grad, ref.grad)
        for name in ("weight", "bias", "embedding"):
            check(f"{name} gradient", getattr(head, name).grad, getattr(full, name).grad[start:stop])
        queue.put(problems)
    finally:
        dist.destroy_process_group()


def test_sharded_head_matches_unsharded_with_an_all_masked_shard():
    problems = [p for found in gather_from_two_ranks(_rank) for p in found]
    assert not problems, "\n".join(problems)
