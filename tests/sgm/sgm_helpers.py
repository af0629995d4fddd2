"""Tiny SGM models and batches shared by the SGM tests (fixtures are in conftest.py)."""

from __future__ import annotations

import torch

from xmtc.config import load_config
from xmtc.models import build_model

TINY = ["--model.dropout", "0", "--model.embed_dropout", "0", "--model.embed_dim", "16",
        "--sgm.hidden_size", "16", "--sgm.label_embed_dim", "16"]


def tiny_config(*overrides: str):
    return load_config("debug_sgm", [*TINY, *overrides])


def tiny_model(num_labels: int = 12, vocab: int = 40, *overrides: str, seed: int = 0):
    cfg = tiny_config(*overrides)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, num_labels, vocab)


def csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.tensor([x for r in rows for x in r], dtype=torch.long)
    offsets = torch.tensor([0] + [len(r) for r in rows], dtype=torch.long).cumsum(0)
    return idx, offsets


def token_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [batch, seq] and their lengths (one row at full length)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, seq), generator=g)
    lengths = torch.randint(3, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    ids[torch.arange(seq)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def gather_from_two_ranks(rank_fn) -> list:
    """Spawn `rank_fn(rank, port, queue)` on 2 gloo ranks; what each put on the queue, in arrival order."""
    import torch.multiprocessing as mp

    from xmtc.distributed import free_port

    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(rank_fn, args=(free_port(), queue), nprocs=2, join=True, start_method="spawn")
    return [queue.get() for _ in range(2)]
