"""The label-sharded SGM head's top-k merge on 2 gloo ranks: a shard with fewer outputs than k pads
with an id that must never be chosen over a real output, even a masked one (-inf)."""

from __future__ import annotations

import os
import types

import pytest
import torch
import torch.distributed as dist

from sgm_helpers import gather_from_two_ranks
from xmtc.parallel.sgm_shards import ShardedLabelHead

pytestmark = pytest.mark.slow

NUM_OUTPUTS = 5  # shard 0: ids 0-2, shard 1: ids 3-4 (EOS is 4)


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        head = types.SimpleNamespace(groups=types.SimpleNamespace(num_shards=2), group=None, num_outputs=NUM_OUTPUTS)
        inf = float("-inf")
        if rank == 0:  # 3 outputs, best first; row 1 has two masked
            values, ids = torch.tensor([[2.0, 1.0, 0.5], [0.75, inf, inf]]), torch.tensor([[1, 0, 2], [0, 1, 2]])
        else:  # 2 outputs: padded to k = 4 with id NUM_OUTPUTS at -inf
            values, ids = torch.tensor([[1.5, 0.1], [inf, inf]]), torch.tensor([[3, 4], [3, 4]])
        top, top_ids = ShardedLabelHead.merge_topk(head, values, ids, 4)
        queue.put((rank, top.tolist(), top_ids.tolist()))
    finally:
        dist.destroy_process_group()


def test_padding_never_outranks_a_masked_output():
    results = sorted(gather_from_two_ranks(_rank))
    inf = float("-inf")
    for _, top, top_ids in results:  # both ranks agree
        assert top == [[2.0, 1.5, 1.0, 0.5], [0.75, inf, inf, inf]]
        assert top_ids == [[1, 3, 0, 2], [0, 1, 2, 3]]  # ties at -inf: the lowest real ids, never the pad id 5
