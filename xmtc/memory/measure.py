"""`--measure`: a few real training steps, the trainer's way, with memory read per phase.

Set-up is the trainer's own (`setup`, `load_corpus`, `build_model`, `parallelize`, `build_optimizer`,
`resolve_deepspeed_config`, `deepspeed.initialize`); each step is forward, backward, step as in
`xmtc.trainer.train`. Every rank measures; rank 0 reports the rank with the highest peak.

  CPU:  live tensor bytes per component (`LiveTensorTracker`), peak resident memory (VmHWM, reset
        before the steps) minus the resident memory before the model was built.
  CUDA: the same tracker, plus the allocator's peak allocated/reserved bytes per phase and, with
        `snapshot`, a `torch.cuda.memory._dump_snapshot` pickle (open it at pytorch.org/memory_viz).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from xmtc.memory.rss import peak_rss_bytes, reset_peak_rss, rss_bytes
from xmtc.memory.tracker import COMPONENTS, LiveTensorTracker, classify, watch_gradients

PHASES = ("forward", "backward", "reduce", "step")
"""reduce: DeepSpeed's gradient reduction at the end of engine.backward (engine.allreduce_gradients)."""


@dataclass
class Measurement:
    device: str
    world_size: int
    rank: int
    steps: int
    num_labels: int
    vocab_size: int
    micro_batch: int
    tracked_peak: int
    """Largest sum of live tensor storages over the measured steps (bytes)."""
    tracked_phase: str
    tracked_parts: dict[str, int]
    """Bytes per component live at that peak."""
    phase_peaks: dict[str, int]
    """Peak live tensor bytes per phase (forward, backward, reduce, step), over all measured steps."""
    phase_parts: dict[str, dict[str, int]]
    """Bytes per component at each phase's peak."""
    rss_peak: int | None = None
    """CPU: peak resident memory during the steps minus the resident memory before the model was built."""
    cuda_peak_allocated: int | None = None
    cuda_peak_reserved: int | None = None
    cuda_phase_peaks: dict[str, int] = field(default_factory=dict)
    snapshot: str | None = None
    max_target_len: int = 0
    """Longest target sequence (labels + end-of-sequence) of the measured batches: SGM's decoder steps."""

    def to_dict(self) -> dict:
        return asdict(self)


def measure(cfg, steps: int = 3, snapshot: str | os.PathLike | None = None,
            local_rank_arg: int | None = None) -> Measurement:
    """Run `steps` training steps of `cfg` on this process's rank; returns the worst rank's numbers."""
    import torch.distributed as dist

    from xmtc import ops
    from xmtc.data import TrainBatchSampler, collate, load_corpus
    from xmtc.distributed import setup
    from xmtc.evaluation import move
    from xmtc.models import build_model
    from xmtc.parallel import parallelize
    from xmtc.optim import build_optimizer, lr_lambda
    from xmtc.trainer import initialize_deepspeed, resolve_deepspeed_config

    ops.set_kernel_backend_from_config(cfg.model.kernels)
    info = setup(cfg.parallel, cfg.train.device, local_rank_arg)
    cfg.check_batch(info.world_size)
    corpus = load_corpus(cfg.data, cfg.synthetic, log=lambda _: None)
    cuda = info.device.type == "cuda"
    rss_before = None if cuda else rss_bytes()

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, corpus.num_labels, corpus.vocab_size)
    plan = parallelize(model, cfg, info)
    model = plan.model.to(info.device)
    optimizer = None if "optimizer" in cfg.deepspeed else build_optimizer(cfg, model, plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps)) if optimizer else None
    engine = initialize_deepspeed(
        plan.deepspeed_config(resolve_deepspeed_config(cfg, plan.data_world_size, info.device.type)),
        model=model, optimizer=optimizer,
        model_parameters=None if optimizer else plan.param_groups([{"params": list(model.parameters())}]),
        lr_scheduler=scheduler, mpu=plan.mpu,
    )
    sampler = TrainBatchSampler(len(corpus.train), cfg.micro_batch_size, plan.data_rank, plan.data_world_size,
                                cfg.train.seed, cfg.grad_accum)
    batches = sampler.micro_batches(0)

    tracker = LiveTensorTracker()
    hooks = watch_gradients(tracker, engine.module)
    reduce_gradients = engine.allreduce_gradients

    def allreduce_gradients(*args, **kwargs):  # the engine calls it at the end of its backward
        tracker.phase = "reduce"
        return reduce_gradients(*args, **kwargs)

    engine.allreduce_gradients = allreduce_gradients
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(info.device)
        if snapshot:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
    elif not reset_peak_rss():
        rss_before = None  # peak RSS since process start would include the set-up: report none
    cuda_phase: dict[str, int] = {}
    reserved = longest = 0
    engine.train()
    for _ in range(steps):
        for _ in range(cfg.grad_accum):
            batch = move(collate(corpus.train[next(batches)], cfg.data.max_len), info.device)
            longest = max(longest, int(batch["label_offsets"].diff().max()) + 1)
            classify(tracker, engine.module, engine.optimizer)
            for t in batch.values():
                tracker.identify(t, "activations")
            tracker.purge()
            with tracker:
                for phase in ("forward", "backward", "step"):
                    tracker.phase = phase
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(info.device)
                    if phase == "forward":
                        loss = engine(batch["input_ids"], batch["label_idx"], batch["label_offsets"], batch["lengths"])
                    elif phase == "backward":
                        engine.backward(loss)
                        classify(tracker, engine.module, engine.optimizer)  # buckets and partitioned grads, while live
                    else:
                        engine.step()
                        classify(tracker, engine.module, engine.optimizer)
                    if cuda:  # the allocator has no phase of its own for the reduction: it counts in backward
                        torch.cuda.synchronize()
                        cuda_phase[phase] = max(cuda_phase.get(phase, 0), torch.cuda.max_memory_allocated(info.device))
                        reserved = max(reserved, torch.cuda.max_memory_reserved(info.device))
                del loss
    for h in hooks:
        h.remove()
    del engine.allreduce_gradients

    phase = max(tracker.peaks, key=tracker.peaks.get)
    result = Measurement(
        device=info.device.type, world_size=info.world_size, rank=info.rank, steps=steps,
        num_labels=corpus.num_labels, vocab_size=corpus.vocab_size, micro_batch=cfg.micro_batch_size,
        tracked_peak=tracker.peaks[phase], tracked_phase=phase, tracked_parts=tracker.peak_parts(phase),
        phase_peaks={p: tracker.peaks.get(p, 0) for p in PHASES},
        phase_parts={p: tracker.peak_parts(p) for p in PHASES}, max_target_len=longest,
    )
    if cuda:
        result.cuda_phase_peaks = cuda_phase
        result.cuda_peak_allocated = max(cuda_phase.values())
        result.cuda_peak_reserved = reserved
        if snapshot:
            path = Path(snapshot).with_suffix(f".rank{info.rank}.pickle") if info.world_size > 1 else Path(snapshot)
            torch.cuda.memory._dump_snapshot(str(path))
            torch.cuda.memory._record_memory_history(enabled=None)
            result.snapshot = str(path)
    elif rss_before is not None:
        result.rss_peak = peak_rss_bytes() - rss_before
    if info.world_size > 1:
        every: list = [None] * info.world_size
        dist.all_gather_object(every, result.to_dict())
        worst = max(every, key=lambda m: m["tracked_peak"])
        result = Measurement(**worst)
    assert set(result.tracked_parts) == set(COMPONENTS)
    return result
