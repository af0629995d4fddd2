"""Evaluation over a test split, each rank scoring its own contiguous slice of documents.

Every rank runs the same number of forward passes (ranks with fewer documents score a padding batch
and discard it) because ZeRO-3 parameter gathers and label-sharded all-gathers are collectives.
Metric sums are all-reduced, so each document counts exactly once (ranks that score the same documents
together, as a label-sharded SGM group does, add their sums once).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from xmtc.config import Config
from xmtc.data import collate, eval_range
from xmtc.distributed import all_reduce_sum
from xmtc.metrics import MetricSums, propensity


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def progress_bar(total: int, desc: str):
    """A tqdm bar over documents on stderr (documents/s, ETA), shown only when stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", file=sys.stderr, disable=None, dynamic_ncols=True, mininterval=1.0)


@torch.no_grad()
def evaluate(model, dataset, cfg: Config, data_rank: int, data_world_size: int, device: torch.device,
             label_counts: np.ndarray, num_train_docs: int, counts: bool = True, progress: bool = False) -> dict:
    """Metrics of `model` on `dataset` (a split of the corpus); `model` may be a DeepSpeed engine.

    `counts`: false on the ranks whose documents another rank also scores (ParallelPlan.counts_metrics);
    they run the same forward passes but add nothing to the all-reduced sums. `progress`: a tqdm bar on
    stderr (documents, documents/s, ETA), shown only on a terminal (xmtc.evaluate)."""
    module = getattr(model, "module", model)
    was_training = module.training
    model.eval()
    num_labels = len(label_counts)
    ks = tuple(cfg.eval.ks)
    depth = min(max(max(ks), cfg.eval.max_predictions), num_labels)
    if getattr(module, "predicts_sets", False):
        # The whole emitted set: without sgm.mask labels repeat, so a set of <= num_labels labels can span
        # more decoding steps than num_labels (repeats count once, at their first place: MetricSums.add).
        depth = max(depth, module.max_set_size)
    inv_p = 1.0 / propensity(label_counts, num_train_docs, cfg.eval.psp_a, cfg.eval.psp_b)
    sums = MetricSums(ks, num_labels)
    mine = eval_range(len(dataset), data_rank, data_world_size)
    bs = cfg.eval.batch_size
    most = math.ceil(len(dataset) / data_world_size)
    bar = progress_bar(len(mine), "evaluate") if progress else None
    for start in range(0, max(most, 1), bs):
        lo, hi = mine.start + start, min(mine.start + start + bs, mine.stop)
        real = hi > lo
        batch = move(collate(dataset[lo:hi] if real else dataset[0:1], cfg.data.max_len), device)
        scores, ranked = model(batch["input_ids"], lengths=batch["lengths"], topk=depth)
        if not real:
            continue
        ranked = ranked.cpu().numpy()
        if getattr(module, "predicts_sets", False):
            predicted = ranked >= 0
        else:
            predicted = scores.float().cpu().numpy() >= cfg.eval.threshold
        sums.add(ranked, predicted, batch["label_idx"].cpu().numpy(), batch["label_offsets"].cpu().numpy(), inv_p)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    vector = sums.vector() if counts else np.zeros_like(sums.vector())
    total = all_reduce_sum(torch.from_numpy(vector))
    if was_training:
        model.train()
    return MetricSums.from_vector(ks, num_labels, total.numpy()).result()
