"""Label-sharded SGM on 2 gloo ranks against the unsharded model (see sharded_worker.py).

Loss and gradients of the first step, parameters after 3 DeepSpeed steps with clipping engaged,
and greedy and beam-search decodings must agree; dropout is on, with different seeds per rank.
"""

from __future__ import annotations

import pytest
import torch.multiprocessing as mp
from sharded_worker import run_rank

from xmtc.distributed import free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("overrides", [
    [],
    ["--sgm.attention", "luong", "--sgm.global_embedding", "fixed", "--sgm.mask", "false", "--sgm.decoder_layers", "2",
     "--sgm.encoder_layers", "2"],
], ids=["paper", "ablations"])
def test_two_rank_label_sharded_sgm_matches_unsharded(overrides):
    mp.start_processes(run_rank, args=(2, free_port(), overrides), nprocs=2, join=True, start_method="spawn")
