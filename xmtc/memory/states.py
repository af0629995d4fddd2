"""Model states per rank under DeepSpeed 0.19 (weights, gradients, optimizer state, its buffers).

Read from DeepSpeed's source (runtime/engine.py, fp16/unfused_optimizer.py, zero/stage_1_and_2.py,
zero/stage3.py, zero/partition_parameters.py) and checked against `LiveTensorTracker`:

  ZeRO 0, fp32   the torch optimizer runs on the model: weights 4P, Adam moments 8P. The backward's
                 all-reduce flattens the gradients into buckets of up to 5e8 elements (a copy).
  ZeRO 0, bf16   FP16_UnfusedOptimizer: bf16 weights 2P, fp32 master 4P, moments 8P; its step
                 casts every gradient to fp32 (4P) before the optimizer runs.
  ZeRO 1/2       DeepSpeedZeroOptimizer: the weights live in one flat buffer per parameter group
                 (b P), each rank keeps an fp32 master partition (a clone even in fp32) and the
                 moments of its partition (12 P/D). Gradients pass through a reduce bucket of
                 `reduce_bucket_size` elements (allocated whole at the first backward) into
                 `grads_in_partition`, which holds the WHOLE gradient of every parameter that
                 overlaps this rank's partition: the 343M-row output layer overlaps every rank's.
                 ZeRO 1 keeps every gradient until the end of the backward; ZeRO 2 moves them into
                 the bucket as they come. The step takes the gradient norm slice by slice in fp64,
                 then casts each group's partition to fp32 and runs the optimizer on it.
  ZeRO 3         each parameter is split (ceil(n/D) elements per rank) into flat buffers, with
                 fp32 master, moments and gradient partitions beside them; parameters of at most
                 `stage3_param_persistence_threshold` elements stay whole; gathered parameters stay
                 whole from the forward through the reduction (max_reuse_distance), so up to
                 `stage3_max_live_parameters` the whole model is gathered while they run (else the
                 largest module, a leaf module with its children); the reduce bucket is kept.

P is the parameter count of this rank's model (the output layer cut to ceil(L/K) rows under
label sharding), D the data-parallel degree DeepSpeed sees (world size / label shards), b the
bytes per weight (4 fp32, 2 bf16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xmtc.config import ConfigError
from xmtc.optim import fused_adam_supported

BUCKET_DEFAULT = 500_000_000
"""DeepSpeed's reduce_bucket_size and stage-0 all-reduce bucket (elements)."""
PERSISTENCE_DEFAULT = 100_000
"""DeepSpeed's stage3_param_persistence_threshold (elements)."""
LIVE_DEFAULT = 1_000_000_000
"""DeepSpeed's stage3_max_live_parameters (elements)."""
MOMENT_BYTES = {"adam": 8, "adamw": 8, "lamb": 8, "onebitadam": 8, "sgd": 4, "adagrad": 4}
"""Optimizer state per parameter, fp32 (exp_avg + exp_avg_sq for Adam)."""


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    ndim: int
    module: str
    """The module that owns it (ZeRO-3 gathers a module's parameters together)."""


@dataclass
class Item:
    """One line of a prediction: `nbytes` of `component`, live in `phase` ("persistent" = always)."""

    component: str
    what: str
    nbytes: int
    phase: str
    formula: str


def optimizer_groups(params: list[Param], client_optimizer: bool) -> list[list[Param]]:
    """The parameter groups the trainer hands DeepSpeed (xmtc.trainer.build_optimizer)."""
    if not client_optimizer:
        return [params]
    decay = [p for p in params if p.ndim > 1 and "embedding" not in p.name]
    rest = [p for p in params if not (p.ndim > 1 and "embedding" not in p.name)]
    return [g for g in (decay, rest) if g]


def zero12_layout(groups: list[list[Param]], dp: int) -> tuple[list[int], list[int], int]:
    """(flat numel per group, partition numel per group, worst rank's grads_in_partition numel).

    Flat groups are padded to a multiple of 2 x dp (nccl_start_alignment_factor); rank r owns
    [r s, (r+1) s) of each and keeps the whole gradient of every parameter overlapping it.
    """
    flats, parts = [], []
    changes: dict[int, int] = {}  # rank -> change of the overlap there: ranks first..last of each parameter
    for group in groups:
        numel = sum(p.numel for p in group)
        flat = math.ceil(numel / (2 * dp)) * 2 * dp
        part = flat // dp
        flats.append(flat)
        parts.append(part)
        start = 0
        for p in group:
            if p.numel:
                first, last = start // part, min(dp - 1, (start + p.numel - 1) // part)
                changes[first] = changes.get(first, 0) + p.numel
                changes[last + 1] = changes.get(last + 1, 0) - p.numel
            start += p.numel
    overlap = worst = 0  # swept rank by rank where it changes: no list of dp ranks (--world-size 1e9)
    for r in sorted(changes):
        overlap += changes[r]
        worst = max(worst, overlap)
    return flats, parts, worst


def zero_setting(zero: dict, key: str, default: int, low: int) -> int:
    """An element count of the zero_optimization block, checked as DeepSpeed's config does (a whole number >= low)."""
    value = zero.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value < low):
        raise ConfigError(f"config key 'deepspeed.zero_optimization.{key}' must be a whole number of elements "
                          f">= {low}, got {value!r}")
    return int(value)


def allreduce_bucket(params: list[Param], limit: int = BUCKET_DEFAULT) -> int:
    """Largest flat bucket of ZeRO-0's all-reduce: gradients in order, flushed once past `limit`."""
    largest = numel = 0
    for p in params:
        numel += p.numel
        if numel > limit:
            largest, numel = max(largest, numel), 0
    return max(largest, numel)


def adam_scratch(groups: list[list[int]], device: str) -> tuple[int, str]:
    """Bytes the for-loop/foreach torch.optim.Adam(W) allocates inside step(), given the fp32 tensor sizes of each group.

    CUDA (foreach): sqrt(exp_avg_sq) of a whole group at once. CPU (single tensor, one parameter
    after another): the sqrt and its quotient of one tensor, while the previous tensor's quotient
    (`denom`) is still referenced.
    """
    if device == "cuda":
        return 4 * max(sum(g) for g in groups), "4 x largest group (foreach sqrt)"
    worst = max(2 * n + (g[i - 1] if i else 0) for g in groups for i, n in enumerate(g))
    return 4 * worst, "4 x max(2 n_i + n_(i-1)) (sqrt, quotient, previous quotient)"


def model_state_items(params: list[Param], *, stage: int, dtype: str, dp: int, device: str,
                      zero: dict, optimizer: str, client_optimizer: bool, output_numel: int,
                      fused: bool, first_layer: int, grad_accum: int = 1) -> list[Item]:
    """Line items of weights, gradients, optimizer state and DeepSpeed's buffers on the worst rank.

    Phases (xmtc.memory.plan): "persistent"; "forward" (its "forward:loss" moment holds what the
    loss allocates); "backward" with moments "backward:early" (every gradient but the input
    embedding's, as the autograd reaches the first layers) and "backward:late" (all of them);
    "reduce" (DeepSpeed's reduction that ends engine.backward); "step". `output_numel`: elements
    of the output layer on this rank, whose gradient the fused loss writes during the forward
    (`fused`) or the backward makes first ("backward:loss"). `first_layer`: elements of the input
    embedding, whose gradient the backward makes last. `grad_accum` > 1: what the step's earlier
    micro-batches leave for the next one (`accumulated`, below).
    """
    b = 2 if dtype == "bf16" else 4
    P = sum(p.numel for p in params)
    moments = MOMENT_BYTES.get(optimizer.lower(), 8)
    bucket = zero_setting(zero, "reduce_bucket_size", BUCKET_DEFAULT, 1)
    threshold = zero_setting(zero, "stage3_param_persistence_threshold", PERSISTENCE_DEFAULT, 0)
    live = zero_setting(zero, "stage3_max_live_parameters", LIVE_DEFAULT, 0)
    groups = optimizer_groups(params, client_optimizer)
    # torch's fused Adam(W) (xmtc.optim) and DeepSpeed's own optimizers step in place, without scratch.
    fused_step = not client_optimizer or fused_adam_supported(device)

    def step_scratch(sizes: list[list[int]]) -> tuple[int, str]:
        return (0, "0 (fused optimizer)") if fused_step else adam_scratch(sizes, device)

    largest = max(p.numel for p in params)
    first = output_numel or max(p.numel for p in params if p.numel != first_layer)
    items: list[Item] = []

    def add(component, what, nbytes, phases, formula):
        for phase in phases.split():
            items.append(Item(component, what, int(nbytes), phase, formula))

    def accumulated(stage: int, overlap: int) -> None:
        """gradient_accumulation_steps > 1: a micro-batch after the step's first meets the gradients of the earlier ones
        (measured with debug_xml_cnn, fp32, 1 and 2 CPU ranks, 2 micro-batches, docs/memory.md): ZeRO-0/1 keep every
        gradient (and ZeRO-1 its reduce bucket) into the next forward, and the embedding's is there before the backward
        makes it; ZeRO-2 keeps grads_in_partition through forward and backward, and its reduction then holds a buffer
        of that size more (measured as a temporary); ZeRO-3's gradient partitions are persistent already."""
        if grad_accum <= 1 or stage == 3:
            return
        if stage in (0, 1):
            add("grads", "gradients of the step's earlier micro-batches", b * P, "forward", f"{b} P")
            add("grads", "input embedding's gradient (of the earlier micro-batches)", b * first_layer, "backward:early", f"{b} n_emb")
            if stage == 1:
                add("temporaries", "reduce bucket (kept from the earlier micro-batches)", b * bucket, "forward", f"{b} reduce_bucket_size")
        else:
            add("grads", "grads_in_partition (of the earlier micro-batches)", b * overlap, "forward backward",
                f"{b} x params overlapping the partition")
            add("temporaries", "a grads_in_partition-sized buffer as the reduction adds this micro-batch in", b * overlap,
                "reduce", f"{b} x params overlapping the partition")

    if output_numel:
        add("grads", "output-layer gradient" + (" (written by the fused loss)" if fused else ""), b * output_numel,
            "forward:loss" if fused else "backward:loss", f"{b} L_k (H + 1)")
    if stage == 0:
        add("weights", "weights", b * P, "persistent", f"{b} P")
        if dtype == "bf16":
            add("optimizer", "fp32 master weights", 4 * P, "persistent", "4 P")
        add("optimizer", "optimizer moments", moments * P, "persistent", f"{moments} P")
        add("grads", "gradients of every layer but the embedding", b * (P - first_layer), "backward:early", f"{b} (P - n_emb)")
        add("grads", "gradients", b * P, "backward:late reduce step", f"{b} P")
        add("temporaries", "all-reduce flat bucket", b * allreduce_bucket(params), "reduce", f"{b} min(P, 5e8 + last)")
        if dtype == "bf16":
            add("temporaries", "fp32 copies of the gradients", 4 * P, "step", "4 P")
        scratch, formula = step_scratch([[p.numel for p in g] for g in groups])
        add("temporaries", "optimizer step scratch", scratch, "step", formula)
        accumulated(0, 0)
        return items

    if stage in (1, 2):
        flats, parts, overlap = zero12_layout(groups, dp)
        part, big = sum(parts), max(parts)
        accumulated(stage, overlap)
        add("weights", "flat weights", b * sum(flats), "persistent", f"{b} P (padded to 2D)")
        add("optimizer", "fp32 master partition", 4 * part, "persistent", "4 P / D")
        add("optimizer", "optimizer moments (partition)", moments * part, "persistent", f"{moments} P / D")
        add("temporaries", "reduce bucket", b * bucket, "backward reduce", f"{b} reduce_bucket_size")
        if stage == 1:  # every gradient waits for the reduction
            add("grads", "gradients of every layer but the embedding", b * (P - first_layer), "backward:early", f"{b} (P - n_emb)")
            add("grads", "gradients (kept until the reduction)", b * P, "backward:late", f"{b} P")
        else:  # each gradient is copied into the bucket as it comes; one is in flight
            add("grads", "gradient in flight (the output layer's)", b * first, "backward:early", f"{b} L_k (H + 1)")
            add("grads", "gradient in flight (largest parameter)", b * largest, "backward:late", f"{b} max n")
            if bucket < P:
                # A full bucket is reduced inside the backward: grads_in_partition is allocated (whole) at the
                # first such reduction, and on several ranks allreduce_bucket flattens the bucket's gradients
                # into one more buffer of up to the bucket's size (measured on 2 CPU ranks: docs/memory.md).
                add("grads", "grads_in_partition (reduced inside the backward)", b * overlap, "backward:late",
                    f"{b} x params overlapping the partition (reduce_bucket_size < P)")
                if dp > 1:
                    add("temporaries", "flat copy of the bucket (allreduce_bucket)", b * bucket, "backward:late",
                        f"{b} reduce_bucket_size")
                # The last bucket, reduced when the backward ends, still holds the input embedding's gradient.
                add("grads", "input embedding's gradient (in the last bucket)", b * first_layer, "reduce", f"{b} n_emb")
        if stage == 1:  # every gradient waits for the reduction, then moves into the bucket
            add("grads", "gradients, then grads_in_partition", b * max(P, overlap), "reduce", f"{b} P")
        else:
            add("grads", "grads_in_partition", b * overlap, "reduce", f"{b} x params overlapping the partition")
        # The step first takes the gradient norm, each partition slice cast to fp64 in turn; then the
        # groups step one after another: a group's fp32 gradient partition and the optimizer's scratch
        # (the bf16 flat partition it was cast from is freed before the optimizer runs).
        # grads_in_partition dies when the last group frees its gradients, before that group's update.
        add("grads", "grads_in_partition", b * overlap, "step:norm", f"{b} x params overlapping the partition")
        add("temporaries", "fp64 copy of the largest gradient slice (norm)", 8 * min(largest, big), "step:norm",
            "8 min(max n, P_g / D)")

        def update(i: int) -> int:
            scratch = max(step_scratch([[parts[i]]])[0], b * parts[i] if b != 4 else 0)
            return 4 * parts[i] + scratch + (b * overlap if i < len(parts) - 1 else 0)

        i = max(range(len(parts)), key=update)
        if i < len(parts) - 1:
            add("grads", "grads_in_partition", b * overlap, "step:update", f"{b} x params overlapping the partition")
        add("temporaries", "fp32 gradient partition", 4 * parts[i], "step:update", "4 P_g / D")
        scratch, formula = step_scratch([[parts[i]]])
        if b * parts[i] > scratch:
            scratch, formula = b * parts[i], f"{b} P_g / D (the flat partition cast to fp32)"
        add("temporaries", "optimizer step scratch", scratch, "step:update", formula.replace("largest group", "P_g / D"))
        return items

    # ZeRO 3
    part = sum(math.ceil(p.numel / dp) for p in params)
    small = sum(p.numel for p in params if p.numel <= threshold)
    modules: dict[str, int] = {}
    for p in params:
        if p.numel > threshold:
            modules[p.module] = modules.get(p.module, 0) + p.numel
    # Parameters stay gathered until `stage3_max_reuse_distance` (1e9) other elements were fetched:
    # the forward's are kept for the backward, so up to `stage3_max_live_parameters` (1e9) the whole
    # model is gathered while forward and backward run; past it, at least the largest module.
    whole = sum(modules.values())
    gathered, what = (whole, "every parameter gathered whole") if whole <= live else (max(modules.values()), "largest module gathered whole")
    add("weights", "weight partitions", b * part, "persistent", f"{b} ceil(n / D) per parameter")
    add("weights", "persistent small parameters (whole)", b * small, "persistent", f"{b} x params <= {threshold}")
    add("optimizer", "fp32 master partition", 4 * part, "persistent", "4 P / D")
    add("optimizer", "optimizer moments (partition)", moments * part, "persistent", f"{moments} P / D")
    add("grads", "gradient partitions", b * part, "persistent", f"{b} P / D")
    add("temporaries", "reduce bucket", b * bucket, "persistent", f"{b} reduce_bucket_size")
    if dp > 1:  # on one rank a partition is the whole parameter: nothing is gathered
        add("weights", what, b * gathered, "forward backward reduce", f"{b} x params > {threshold} (up to max_live_parameters)")
    add("grads", "gradient in flight (the output layer's)", b * first, "backward:early", f"{b} L_k (H + 1)")
    add("grads", "gradient in flight (largest parameter)", b * largest, "backward:late", f"{b} max n")
    add("temporaries", "reduce-scatter input and its split", 2 * b * min(P, bucket), "reduce", f"2 x {b} min(P, bucket)")
    add("temporaries", "fp64 copy of the largest gradient partition (norm)", 8 * max(math.ceil(p.numel / dp) for p in params),
        "step:norm", "8 ceil(max n / D)")
    group_parts = [sum(math.ceil(p.numel / dp) for p in g) for g in groups]  # stepped one group at a time
    add("temporaries", "fp32 gradient partition", 4 * max(group_parts), "step:update", "4 P_g / D")
    scratch, formula = step_scratch([[n] for n in group_parts])
    add("temporaries", "optimizer step scratch", scratch, "step:update", formula)
    return items


# ------------------------------------------------------------------------ DeepSpeed's estimators


def deepspeed_estimates(total_params: int, largest_layer: int, stage: int, world_size: int) -> dict | None:
    """DeepSpeed's own model-state estimate for ZeRO 2 or 3 on `world_size` GPUs of one node (bytes).

    Its formulas (estimate_zero{2,3}_model_states_mem_needs): ZeRO 2 per GPU 2P + 18P/N (fp16 params
    whole; fp16 and fp32 grads, fp32 params and moments partitioned); ZeRO 3 per GPU 4 x largest layer
    + 18P/N. They assume fp16/bf16 training and count no reduce bucket, activations or scratch.
    """
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(total_params, num_gpus_per_node=world_size, cpu_offload=False)
        return {"function": "estimate_zero2_model_states_mem_needs", "per_gpu": gpu,
                "formula": "2P + 18P/N (its comment: 2 fp16 params + 2 fp16 grads + 4 fp32 grads + 4 fp32 params + 8 moments)"}
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer, num_gpus_per_node=world_size,
                                                          cpu_offload=False, cpu_offload_params=False)
        return {"function": "estimate_zero3_model_states_mem_needs", "per_gpu": gpu,
                "formula": "4 x largest layer + 18P/N"}
    return None
