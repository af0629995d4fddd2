"""Worker processes of the label-sharding tests: gloo ranks on the CPU, started by `spawn`.

Each worker trains a tiny model (linear encoder + OutputLayer over L labels) through DeepSpeed with
the output layer label-sharded, and holds every number to a single-process unsharded reference
computed in the same worker on the same global batch. A failed assertion raises in the worker,
which `torch.multiprocessing.spawn` re-raises in the test.
"""

from __future__ import annotations

import os
import socket
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from xmtc.models.output_layer import OutputLayer, dense_targets
from xmtc.ops_reference import multilabel_loss_reference

D_IN, H, L, B = 8, 16, 37, 3  # L is prime: no shard count divides it
LR, CLIP, STEPS = 0.05, 0.5, 3  # CLIP below the gradient norm: clipping acts on every step
EPS = 1e-4  # Adam's 1/eps bounds how much a rounding-level gradient difference can move a parameter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world_size: int, *args) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


def _entry(rank, fn, world_size, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from xmtc.config import ParallelConfig
    from xmtc.distributed import setup, teardown

    try:
        fn(setup(ParallelConfig(dist_backend="gloo"), "cpu"), *args)
    finally:
        teardown()


class TinyXML(nn.Module):
    """XML-CNN's shape in miniature: encoder -> features -> OutputLayer (what shard_labels replaces)."""

    def __init__(self, loss: str = "fused", chunk_size: int = 8, criterion: str = "bce"):
        super().__init__()
        self.encoder = nn.Linear(D_IN, H)
        self.output = OutputLayer(H, L, loss=loss, chunk_size=chunk_size, criterion=criterion)
        self.feature_grad = None

    def encode(self, x):
        return torch.tanh(self.encoder(x))

    def forward(self, x, label_idx=None, label_offsets=None, topk: int = 0):
        features = self.encode(x)
        if topk:
            return self.output.topk(features, topk)
        if features.requires_grad:
            features.register_hook(lambda g: setattr(self, "feature_grad", g.detach().clone()))
        return self.output.loss(features, label_idx, label_offsets)


def global_batch(step: int, docs: int):
    """Inputs and CSR labels of `docs` documents (0-4 labels each, duplicates included)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(docs, D_IN, generator=g)
    counts = torch.randint(0, 5, (docs,), generator=g)
    idx = torch.randint(0, L, (int(counts.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return x, idx, offsets


def rows(batch, lo: int, hi: int):
    x, idx, offsets = batch
    return x[lo:hi], idx[offsets[lo] : offsets[hi]], offsets[lo : hi + 1] - offsets[lo]


def reference_loss(model: TinyXML, features, idx, offsets):
    """Plain materialized mean over documents of the BCE (or the layer's criterion) summed over labels."""
    y = dense_targets(idx, offsets, L)
    return multilabel_loss_reference(model.output.logits(features), y, model.output.criterion) / features.shape[0]


def make_optimizer(params):
    return torch.optim.AdamW(params, lr=LR, eps=EPS, weight_decay=0.01)


def reference_run(world_size: int, num_shards: int, criterion: str = "bce"):
    """Single process, unsharded: what DeepSpeed data parallelism over `world_size` ranks computes."""
    torch.manual_seed(0)
    model = TinyXML(criterion=criterion)
    opt = make_optimizer(model.parameters())
    record = []
    for step in range(STEPS):
        batch = global_batch(step, world_size * B)
        x, idx, offsets = batch
        features = model.encode(x)
        loss = reference_loss(model, features, idx, offsets)
        # Per shard group g: its loss (mean over its N*B documents) and its features' gradient.
        group_docs = num_shards * B
        group_losses, feature_grads, logits = [], [], []
        for g in range(world_size // num_shards):
            gx, gidx, goff = rows(batch, g * group_docs, (g + 1) * group_docs)
            f = model.encode(gx).detach().requires_grad_()
            gl = reference_loss(model, f, gidx, goff)
            gl.backward()
            group_losses.append(gl.item())
            feature_grads.append(f.grad)
            logits.append(model.output.logits(f).detach())
        model.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        assert norm > 2 * CLIP, f"clipping must act for the test to check the global norm: {norm}"
        opt.step()
        opt.zero_grad()
        record.append({"loss": loss.item(), "group_losses": group_losses, "feature_grads": feature_grads,
                       "logits": logits, "grads": grads, "norm": norm.item(),
                       "params": {n: p.detach().clone() for n, p in model.named_parameters()}})
    return model, record


def shard_config(num_shards: int, stage: int):
    from xmtc.config import config_from_dict

    return config_from_dict({"parallel": {"label_shards": num_shards},
                             "deepspeed": {"zero_optimization": {"stage": stage}}})


def build_engine(dist_info, num_shards: int, stage: int, model: nn.Module | None = None, criterion: str = "bce"):
    import deepspeed
    from deepspeed.utils import groups as ds_groups

    from xmtc.parallel import parallelize

    cfg = shard_config(num_shards, stage)
    if model is None:
        torch.manual_seed(0)
        model = TinyXML(criterion=criterion)
    plan = parallelize(model, cfg, dist_info)
    ds_groups.mpu = None  # DeepSpeed keeps the last engine's mpu in a module global
    ds = {"train_micro_batch_size_per_gpu": B, "train_batch_size": B * dist_info.world_size,
          "gradient_accumulation_steps": 1, "gradient_clipping": CLIP, "zero_optimization": {"stage": stage},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(
        model=plan.model, optimizer=make_optimizer(plan.param_groups([{"params": list(plan.model.parameters())}])),
        config=plan.deepspeed_config(ds), mpu=plan.mpu, dist_init_required=False)
    return engine, plan


def full_grad(param):
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)


def check_close(what: str, got, want, rtol=1e-5, atol=1e-6):
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
        diff = (got - want).abs().max().item() if got.shape == want.shape else "shape"
        raise AssertionError(f"rank {torch.distributed.get_rank()}: {what} differs (max abs diff {diff}): {got} vs {want}")


def collectives_check(dist_info):
    """all_gather_rows / all_gather_csr with a different row count on every rank, and the backward."""
    from xmtc.parallel.groups import all_gather_csr, all_gather_rows

    world, rank = dist_info.world_size, dist_info.rank
    sizes = [r % 3 + 1 for r in range(world)]  # 1, 2, 3, 1, ...
    everyone = [torch.arange(s * 2, dtype=torch.float32).view(s, 2) + 100 * r for r, s in enumerate(sizes)]
    x = everyone[rank].clone().requires_grad_()
    gathered = all_gather_rows(x, torch.distributed.group.WORLD)
    check_close("all_gather_rows", gathered, torch.cat(everyone))
    weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
    (gathered * weights).sum().backward()  # every rank's loss uses every row with the same weights
    lo = sum(sizes[:rank])
    check_close("all_gather_rows backward", x.grad, world * weights[lo : lo + sizes[rank]])
    labels = [list(range(r, r + i)) for r in range(world) for i in range(sizes[r])]  # row i of rank r: i labels
    mine = labels[lo : lo + sizes[rank]]
    idx = torch.tensor([l for row in mine for l in row], dtype=torch.long)
    offsets = torch.tensor([0] + [len(row) for row in mine]).cumsum(0)
    all_idx, all_offsets = all_gather_csr(idx, offsets, torch.distributed.group.WORLD)
    assert all_idx.tolist() == [l for row in labels for l in row], all_idx
    assert all_offsets.tolist() == [0] + torch.tensor([len(row) for row in labels]).cumsum(0).tolist()


def equivalence_worker(dist_info, cases, ckpt_root: str):
    """For each (num_shards, zero_stage[, criterion]): STEPS optimizer steps held to the reference, a
    checkpoint after step 2 that a fresh engine resumes from for step 3, then top-k."""
    from xmtc.parallel.reshard import load_unsharded_state, model_file

    collectives_check(dist_info)
    for num_shards, stage, *rest in cases:
        criterion = rest[0] if rest else "bce"
        ref_model, record = reference_run(dist_info.world_size, num_shards, criterion)
        engine, plan = build_engine(dist_info, num_shards, stage, criterion=criterion)
        tag = f"N={num_shards} W={dist_info.world_size} ZeRO-{stage} {criterion}"
        ckpt_dir = Path(ckpt_root) / f"N{num_shards}_zero{stage}"
        for step, ref in enumerate(record):
            if step == STEPS - 1:
                engine.save_checkpoint(str(ckpt_dir), tag="mid", client_state={"step": step})
                plan.save_checkpoint(engine, ckpt_dir, "mid")
                files = sorted(p.name for p in (ckpt_dir / "mid").glob("mp_rank_*"))
                assert files == [model_file(".", s).name for s in range(num_shards)], files
                check_close(f"{tag} saved output.weight", load_unsharded_state(ckpt_dir / "mid")["output.weight"],
                            record[step - 1]["params"]["output.weight"])
                torch.manual_seed(123)  # a different initialization: only the checkpoint can make it right
                engine, plan = build_engine(dist_info, num_shards, stage, TinyXML(criterion=criterion))
                _, client = engine.load_checkpoint(str(ckpt_dir), tag="mid")
                plan.load_checkpoint(engine, ckpt_dir, "mid")
                assert client["step"] == step
            run_step(engine, step, ref, dist_info, num_shards, stage, tag)
        check_topk(engine, ref_model, dist_info, tag)
        if dist_info.rank == 0:
            print(f"{tag}: {STEPS} steps, checkpoint round trip and top-k match the unsharded reference", flush=True)


def reshard_resume_worker(dist_info, cases, ckpt_root: str):
    """For each (from_shards, from_stage, to_shards, to_stage): 2 steps held to the reference, a
    checkpoint, re-sharded by xmtc.parallel.reshard on rank 0, resumed by a fresh engine of the new
    layout (another shard count, ZeRO stage and data-parallel size) through the trainer's
    load_checkpoint, and step 3 held to the reference: only the carried Adam state (moments and
    step) makes the third step right."""
    from xmtc.parallel import load_checkpoint
    from xmtc.parallel.reshard import reshard_tag

    for from_shards, from_stage, to_shards, to_stage in cases:
        tag = f"W={dist_info.world_size} N={from_shards} ZeRO-{from_stage} -> N={to_shards} ZeRO-{to_stage}"
        ckpt_dir = Path(ckpt_root) / f"N{from_shards}_zero{from_stage}_to_N{to_shards}_zero{to_stage}"
        _, before = reference_run(dist_info.world_size, from_shards)
        _, after = reference_run(dist_info.world_size, to_shards)
        engine, plan = build_engine(dist_info, from_shards, from_stage)
        for step in range(STEPS - 1):
            run_step(engine, step, before[step], dist_info, from_shards, from_stage, tag)
        engine.save_checkpoint(str(ckpt_dir), tag="mid", client_state={"step": STEPS - 1})
        plan.save_checkpoint(engine, ckpt_dir, "mid")
        torch.distributed.barrier()
        if dist_info.rank == 0:
            assert reshard_tag(ckpt_dir, "mid", to_shards) == f"mid-shards{to_shards}"
            assert not (ckpt_dir / f"mid-shards{to_shards}" / "WEIGHTS_ONLY").exists()
        torch.distributed.barrier()
        torch.manual_seed(123)  # a different initialization: only the checkpoint can make it right
        engine, plan = build_engine(dist_info, to_shards, to_stage, TinyXML())
        _, client = load_checkpoint(engine, plan, ckpt_dir, f"mid-shards{to_shards}")
        assert client["step"] == STEPS - 1
        start, stop = output_rows(engine)
        for name, p in engine.module.named_parameters():
            want = before[STEPS - 2]["params"][name]
            check_close(f"{tag} resumed {name}", p.detach(), want[start:stop] if name.startswith("output.") else want)
        run_step(engine, STEPS - 1, after[STEPS - 1], dist_info, to_shards, to_stage, tag)
        if dist_info.rank == 0:
            print(f"{tag}: re-sharded mid-run, step {STEPS} matches the unsharded reference", flush=True)


def output_rows(engine) -> tuple[int, int]:
    layer = engine.module.output
    return getattr(layer, "label_start", 0), getattr(layer, "label_stop", L)


def run_step(engine, step, ref, dist_info, num_shards, stage, tag):
    layer = engine.module.output
    start, stop = output_rows(engine)
    group, me = dist_info.rank // num_shards, dist_info.rank % num_shards
    batch = global_batch(step, dist_info.world_size * B)
    x, idx, offsets = rows(batch, dist_info.rank * B, (dist_info.rank + 1) * B)
    with torch.no_grad():
        logits = (layer.local_logits if num_shards > 1 else layer.logits)(engine.module.encode(x))
    check_close(f"{tag} step {step} logits", logits, ref["logits"][group][:, start:stop])
    loss = engine(x, idx, offsets)
    check_close(f"{tag} step {step} loss", loss.item(), ref["group_losses"][group])
    engine.backward(loss)
    check_close(f"{tag} step {step} feature grad", engine.module.feature_grad,
                ref["feature_grads"][group][me * B : (me + 1) * B])
    # Gradients after DeepSpeed's reduction, before clipping: the reference's full-batch gradients.
    for name, p in engine.module.named_parameters():
        want = ref["grads"][name][start:stop] if name.startswith("output.") else ref["grads"][name]
        check_close(f"{tag} step {step} {name} grad", full_grad(p), want)
    engine.step()
    if engine.get_global_grad_norm() is not None:  # ZeRO-0 fp32 does not keep it
        check_close(f"{tag} step {step} grad norm", float(engine.get_global_grad_norm()), ref["norm"])
    for name, p in engine.module.named_parameters():
        want = ref["params"][name][start:stop] if name.startswith("output.") else ref["params"][name]
        check_close(f"{tag} step {step} {name}", p.detach(), want)


def check_topk(engine, ref_model, dist_info, tag):
    engine.eval()
    # Uneven batches per rank, as evaluation's padding batch makes them; k beyond a shard's labels too.
    docs = [B + (r % 2) for r in range(dist_info.world_size)]
    x = global_batch(99, sum(docs))[0]
    lo = sum(docs[: dist_info.rank])
    mine = x[lo : lo + docs[dist_info.rank]]
    for k in (1, 5, L // engine.module.output.groups.num_shards + 2, L):
        scores, ids = engine(mine, topk=k)
        with torch.no_grad():
            want_scores, want_ids = ref_model.output.logits(ref_model.encode(mine)).topk(k, dim=1)
        if not torch.equal(ids, want_ids):
            raise AssertionError(f"rank {dist_info.rank}: {tag} top-{k} ids {ids.tolist()} vs {want_ids.tolist()}")
        check_close(f"{tag} top-{k} scores", scores, torch.sigmoid(want_scores))
    # All scores tied: the merge must order labels like one top-k over all labels, lower ids first.
    with torch.no_grad():
        layer = engine.module.output
        saved = layer.weight.clone(), layer.bias.clone()
        layer.weight.zero_()
        layer.bias.zero_()
        _, ids = layer.topk(torch.randn(2, H), L)
        layer.weight.copy_(saved[0])
        layer.bias.copy_(saved[1])
    if ids.tolist() != [list(range(L))] * 2:
        raise AssertionError(f"rank {dist_info.rank}: {tag} tied top-k {ids.tolist()}")
    engine.train()


class PeakTensorBytes(TorchDispatchMode):
    """Tensor storages created inside the mode: `largest` is exact; `peak` counts a storage only while
    Python holds a tensor on it (autograd's C++-held buffers drop out early), so it is a lower bound."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak, self.largest = {}, 0, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
            if key in inputs or key in self.live or size == 0:
                continue
            self.live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            self.largest = max(self.largest, size)
            weakref.finalize(t, self._free, key)
        return out




def memory_worker(dist_info, num_labels: int, batch: int, hidden: int, chunk: int, out_file: str):
    """Per rank and loss mode: the growth of peak RSS over the loss + backward (tensors this large
    are mmapped, so RSS follows them), and the largest single tensor allocated meanwhile."""
    from xmtc.memory.rss import peak_rss_bytes, reset_peak_rss, rss_bytes

    from xmtc.parallel.groups import LabelShardGroups
    from xmtc.parallel.label_shards import LabelShardedOutputLayer

    groups = LabelShardGroups(dist_info.world_size, dist_info)
    torch.manual_seed(0)
    idx = torch.randint(0, num_labels, (batch * 5,))
    offsets = torch.arange(0, batch * 5 + 1, 5)

    def loss_and_backward(mode, labels=num_labels):
        layer = LabelShardedOutputLayer(hidden, labels, groups, loss=mode, chunk_size=chunk)
        with torch.no_grad():
            layer.weight.normal_(0, 0.1)
            layer.bias.zero_()
        features = torch.randn(batch, hidden, requires_grad=True)
        return lambda: layer.loss(features, idx % labels, offsets).backward()  # the warm-up's fewer labels: ids in range

    for mode in ("fused", "materialized"):  # first calls pay one-time costs (GEMM workspaces, heap arenas)
        loss_and_backward(mode, 8 * chunk)()
    result = {}
    for mode in ("fused", "materialized"):
        step = loss_and_backward(mode)
        assert reset_peak_rss(), "cannot reset the peak RSS (/proc/self/clear_refs)"
        before = rss_bytes()
        step()
        result[mode] = {"peak_growth": peak_rss_bytes() - before}
    for mode in ("fused", "materialized"):  # the tracker's own bookkeeping stays out of the RSS above
        step = loss_and_backward(mode)
        with PeakTensorBytes() as tracker:
            step()
        result[mode]["largest"] = tracker.largest
    gathered = [None] * dist_info.world_size
    torch.distributed.all_gather_object(gathered, result)
    if dist_info.rank == 0:
        torch.save(gathered, out_file)
