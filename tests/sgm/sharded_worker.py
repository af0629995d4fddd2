"""One rank of the 2-rank label-sharded SGM equivalence test (run by torch.multiprocessing).

Each rank trains the label-sharded model through DeepSpeed for 3 steps and, beside it, the
unsharded model from the same initial parameters with a plain torch optimizer and clipping, on
the same batch and dropout masks, then checks losses, gradients, parameters and decoded labels.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
CLIP = 0.5
LR = 1e-2


def close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 2e-6) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=atol, msg=lambda m: f"{what}: {m}")


def run_rank(rank: int, world: int, port: int, overrides: list[str]) -> None:
    from xmtc.distributed import teardown

    try:
        check_rank(rank, world, port, overrides)
    finally:
        teardown()


def check_rank(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    torch.set_num_threads(1)
    import deepspeed

    from sgm_helpers import csr, tiny_config, token_batch
    from xmtc.distributed import setup
    from xmtc.models import build_model
    from xmtc.parallel import parallelize
    from xmtc.parallel.sgm_shards import SGM_SHARDED_NAMES, ShardedLabelHead
    from xmtc.trainer import resolve_deepspeed_config

    cfg = tiny_config("--parallel.label_shards", str(world), "--parallel.dist_backend", "gloo",
                      "--model.dropout", "0.2", "--deepspeed.gradient_clipping", str(CLIP), *overrides)
    info = setup(cfg.parallel, "cpu")
    num_labels = 12  # 13 outputs with EOS: shards of 7 and 6 rows
    torch.manual_seed(0)
    model = build_model(cfg, num_labels, 40)
    reference = copy.deepcopy(model)
    plan = parallelize(model, cfg, info)
    head = plan.model.decoder.label_head
    assert isinstance(head, ShardedLabelHead) and (plan.data_rank, plan.data_world_size) == (0, 1)
    start, stop = head.label_offset, head.label_offset + head.num_local
    assert (start, stop) == ((0, 7) if rank == 0 else (7, 13))

    engine, _, _, _ = deepspeed.initialize(
        model=plan.model, optimizer=torch.optim.Adam(plan.model.parameters(), lr=LR),
        config=plan.deepspeed_config(resolve_deepspeed_config(cfg, plan.data_world_size, "cpu")),
        mpu=plan.mpu, dist_init_required=False,
    )
    ref_opt = torch.optim.Adam(reference.parameters(), lr=LR)
    ref_params = dict(reference.named_parameters())

    def shard_of(name: str, full: torch.Tensor) -> torch.Tensor:
        return full[start:stop] if name in SGM_SHARDED_NAMES else full

    rows = [[4], [6, 2], [8, 3, 5, 11], [9], [9, 6], [7, 5, 6, 0], [4, 10], [1]]
    ids, lengths = token_batch(len(rows), 14, 40, seed=3)
    idx, offsets = csr(rows)
    clipped = []
    for step in range(STEPS):
        # Different seeds per rank: the plan must align the group's dropout masks with rank 0's.
        torch.manual_seed(100 + step + 1000 * rank)
        loss = engine(ids, idx, offsets, lengths)
        engine.backward(loss)
        torch.manual_seed(100 + step)
        ref_loss = reference(ids, idx, offsets, lengths)
        ref_loss.backward()
        close(loss.detach(), ref_loss.detach(), f"loss at step {step}")
        if step == 0:
            for name, p in engine.module.named_parameters():
                close(p.grad, shard_of(name, ref_params[name].grad), f"gradient of {name}")
        engine.step()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
        clipped.append(float(norm) > CLIP)
        ref_opt.step()
        ref_opt.zero_grad()
    assert any(clipped), "clipping never engaged; the norm check would be vacuous"
    for name, p in engine.module.named_parameters():
        # Adam divides by sqrt(v): near-zero gradients turn rounding noise into updates of up to LR;
        # 3e-5 is 0.3% of one step, while a wrongly averaged gradient moves parameters by ~LR.
        close(p.detach(), shard_of(name, ref_params[name]).detach(), f"{name} after {STEPS} steps", atol=3e-5)

    engine.eval()
    reference.eval()
    with torch.no_grad():  # EOS later, so that the decoded sequences are not empty
        reference.decoder.label_head.bias[num_labels] -= 3.0
        if stop == num_labels + 1:
            head.bias[num_labels - start] -= 3.0
    test_ids, test_lengths = token_batch(10, 14, 40, seed=7)
    for beam in (3, 1):
        engine.module.decoder.beam_size = reference.decoder.beam_size = beam
        with torch.no_grad():
            probs, labels = engine(test_ids, lengths=test_lengths, topk=8)
            ref_probs, ref_labels = reference(test_ids, lengths=test_lengths, topk=8)
        assert torch.equal(labels, ref_labels), f"beam {beam}: {labels.tolist()} != {ref_labels.tolist()}"
        close(probs, ref_probs, f"probabilities of beam {beam}")
        assert (labels >= 0).sum() >= 10, labels.tolist()
