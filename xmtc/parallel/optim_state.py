"""Optimizer state by parameter name: read out of any checkpoint the trainer writes, put back into any engine.

Re-sharding a checkpoint must carry Adam's moments, not only the weights, or a resumed run does
not continue the one it came from. DeepSpeed keeps them in one of two layouts:

- ZeRO-0 with a torch optimizer (fp32): the torch `state_dict()` in `mp_rank_{s:02d}_model_states.pt`,
  state by parameter index (`optimizer_params.json`, or `label_shards.json`, names the indices);
- ZeRO-1/2 (fp32 or bf16): a flat fp32 partition per data-parallel rank d, with the base
  optimizer's moments over it, in `[bf16_]zero_pp_rank_{d}_mp_rank_{s:02d}_optim_states.pt`. Its
  `param_slice_mappings` name, per parameter group, the (start, numel) of each parameter's
  fragment in that rank's partition. The partitions are consecutive pieces of one flat group, so
  the fragments of ranks 0, 1, ... of a parameter, concatenated, are the flattened parameter.

`read_named_state` turns either into a `NamedState`: {"params": {name: {"param": fp32 master
weight, "exp_avg": ..., "exp_avg_sq": ..., "step": scalar}}}, every per-element entry shaped like its
parameter. The re-sharding tool cuts those along labels like the weights and writes one
`named_optimizer_shard{s:02d}.pt` per new shard. `load_named_state` puts a `NamedState` into an
engine of any ZeRO stage 0-2, whatever its data-parallel size: into the torch optimizer's state at
ZeRO-0, into the flat partitions (master weights and moments, this rank's fragment of each
parameter) at ZeRO-1/2, fp32 or bf16. fp16/bf16 at ZeRO-0 run under DeepSpeed's FP16_UnfusedOptimizer,
whose state has a layout of its own: it is neither read (such a source re-shards to weights only) nor
written into (resuming into it is refused in one sentence).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from xmtc.config import UserError

OPTIMIZER_PARAMS_FILE = "optimizer_params.json"
"""[[names of param group 0], ...] of a ZeRO-0 torch optimizer: maps its state indices to parameters."""
NAMED_STATE_FILE = "named_optimizer_shard{shard:02d}.pt"
"""A re-sharded tag's optimizer state of shard s (a NamedState)."""

NamedState = dict


def named_state_file(tag_dir: Path, shard: int) -> Path:
    return Path(tag_dir) / NAMED_STATE_FILE.format(shard=shard)


def has_named_state(tag_dir: Path) -> bool:
    return named_state_file(tag_dir, 0).is_file()


def optimizer_param_names(engine) -> list[list[str]] | None:
    """Parameter names per group of a plain torch optimizer (ZeRO-0, fp32): maps its saved state to names."""
    opt = engine.optimizer
    if engine.zero_optimization_stage() or not isinstance(opt, torch.optim.Optimizer):
        return None
    names = {id(p): n for n, p in engine.module.named_parameters()}
    if any(id(p) not in names for g in opt.param_groups for p in g["params"]):
        return None
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]


def zero_optim_files(tag_dir: Path, shard: int) -> list[Path]:
    """The ZeRO partition files of one model-parallel shard, in data-parallel rank order ([] if none)."""
    pattern = re.compile(rf"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_{shard:02d}_optim_states\.pt")
    found = {}
    for path in Path(tag_dir).glob(f"*zero_pp_rank_*_mp_rank_{shard:02d}_optim_states.pt"):
        m = pattern.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = path
    if found and sorted(found) != list(range(len(found))):
        raise UserError(f"{tag_dir} holds ZeRO partitions {sorted(found)} of shard {shard}; some are missing, the tag is incomplete")
    return [found[d] for d in range(len(found))]


def _group_states(base: dict | list, num_groups: int) -> list[dict]:
    """Per parameter group, the base optimizer's state of its one flat partition."""
    if isinstance(base, list):  # zero_optimization.elastic_checkpoint: one dict per group
        return [dict(g) for g in base]
    return [base["state"].get(i, {}) for i in range(num_groups)]


def read_zero_state(files: list[Path], module: dict[str, torch.Tensor]) -> NamedState:
    """NamedState of one shard from its ZeRO-1/2 (or bf16) partition files, ranks in order."""
    fragments: dict[str, dict[str, list[torch.Tensor]]] = {}
    scalars: dict[str, dict[str, torch.Tensor]] = {}
    for path in files:
        sd = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        written_by = sd.get("partition_count")  # the data-parallel ranks that saved the shard, per group
        written_by = max(written_by) if isinstance(written_by, (list, tuple)) and written_by else written_by
        if isinstance(written_by, int) and written_by != len(files):  # a missing last file: the names look complete
            shard = re.search(r"mp_rank_(\d+)", path.name).group(1)
            raise UserError(f"{path.parent} holds {len(files)} ZeRO partitions of shard {int(shard)}, written by {written_by} "
                            "ranks; the tag is incomplete")
        mappings = sd["param_slice_mappings"]
        fp32 = sd["single_partition_of_fp32_groups"]
        states = _group_states(sd["base_optimizer_state"], len(mappings))
        for g, mapping in enumerate(mappings):
            for name, address in mapping.items():
                start, numel = int(address.start), int(address.numel)
                parts = fragments.setdefault(name, {})
                parts.setdefault("param", []).append(fp32[g].narrow(0, start, numel))
                for key, value in states[g].items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        parts.setdefault(key, []).append(value.narrow(0, start, numel))
                    else:
                        scalars.setdefault(name, {})[key] = value
    params = {}
    for name, parts in fragments.items():
        if name not in module:
            raise UserError(f"{files[0].parent}: ZeRO partition names parameter {name!r}, which the model states lack")
        shape = module[name].shape
        entry = {}
        for key, pieces in parts.items():
            flat = torch.cat(pieces)
            if flat.numel() != module[name].numel():
                raise UserError(f"{files[0].parent}: the ZeRO partitions hold {flat.numel()} values of {name!r} "
                                f"({key}) but the parameter has {module[name].numel()}; the tag is incomplete")
            entry[key] = flat.float().view(shape).clone()
        entry.update(scalars.get(name, {}))
        params[name] = entry
    return {"params": params}


def read_torch_state(optimizer: dict, names: list[list[str]], module: dict[str, torch.Tensor]) -> NamedState:
    """NamedState from a torch optimizer state_dict whose param groups hold the parameters `names`."""
    flat_names = [n for group in names for n in group]
    params = {}
    for idx, name in enumerate(flat_names):
        entry = {"param": module[name].float().clone()}
        for key, value in optimizer["state"].get(idx, {}).items():
            entry[key] = value.clone() if torch.is_tensor(value) else value
        params[name] = entry
    return {"params": params}


def read_optimizer_names(tag_dir: Path, layout: dict) -> list[list[str]] | None:
    names = layout.get("optimizer_params")
    path = Path(tag_dir) / OPTIMIZER_PARAMS_FILE
    if not names and path.is_file():
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # cut short, not JSON, not UTF-8
            raise UserError(f"{path} is damaged ({e}); it names the parameters of the tag's optimizer state: use another "
                            "checkpoint tag") from None
        if not (isinstance(names, list) and all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in names)):
            raise UserError(f"{path} is damaged (not a list of parameter-name lists); it names the parameters of the tag's "
                            "optimizer state: use another checkpoint tag")
    return names or None


def read_named_state(tag_dir: Path, shard: int, layout: dict, states: dict) -> NamedState | None:
    """The optimizer state of shard `shard` of a tag (`states`: its model-states dict), or None if it has none."""
    tag_dir = Path(tag_dir)
    if has_named_state(tag_dir):
        return torch.load(named_state_file(tag_dir, shard), map_location="cpu", weights_only=False)
    module = states["module"]
    files = zero_optim_files(tag_dir, shard)
    if files:
        return read_zero_state(files, module)
    optimizer = states.get("optimizer")
    names = read_optimizer_names(tag_dir, layout)
    if isinstance(optimizer, dict) and "state" in optimizer and names:
        return read_torch_state(optimizer, names, module)
    return None


def split_named_state(states: list[NamedState], sharded: set[str], cut, num_shards: int) -> list[NamedState]:
    """Merge the NamedStates of the source shards (in shard order) and cut them into `num_shards` new
    ones: per-element entries of `sharded` parameters by `cut(full) -> [piece per shard]`, the rest copied."""
    out: list[NamedState] = [{"params": {}} for _ in range(num_shards)]
    for name, entry in states[0]["params"].items():
        for key, value in entry.items():
            if name in sharded and torch.is_tensor(value) and value.dim() > 0:
                pieces = cut(torch.cat([s["params"][name][key] for s in states]))
            else:
                pieces = [value] * num_shards
            for t in range(num_shards):
                out[t]["params"].setdefault(name, {})[key] = pieces[t]
    return out


# ------------------------------------------------------------------------------------------------
# Into an engine


def _step_tensor(value, like, group: dict, device: torch.device, optimizer) -> torch.Tensor | int:
    """A saved step count as `optimizer` keeps it: as `like` (its own step, where it has stepped); else a Python
    int for DeepSpeed's own optimizers (FusedAdam and CPU Adam count `step += 1` and hand it to their kernels as
    an integer), and a float tensor for torch's (on the device for fused/capturable ones)."""
    step = float(value.item() if torch.is_tensor(value) else value)
    if torch.is_tensor(like):
        return torch.tensor(step, dtype=like.dtype, device=like.device)
    if like is not None or type(optimizer).__module__.startswith("deepspeed.ops."):
        return int(step)
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(step, dtype=torch.float32, device=device if on_device else "cpu")


def _load_into_torch_optimizer(engine, state: NamedState) -> None:
    opt = engine.optimizer
    names = {id(p): n for n, p in engine.module.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            entry = state["params"].get(names.get(id(p)))
            if entry is None:
                raise UserError(f"the re-sharded optimizer state lacks parameter {names.get(id(p))!r}")
            with torch.no_grad():
                p.copy_(entry["param"].to(p.dtype))
            old = opt.state.get(p, {})
            new = {}
            for key, value in entry.items():
                if key == "param":
                    continue
                if key == "step":
                    new[key] = _step_tensor(value, old.get(key), group, p.device, opt)
                else:
                    new[key] = value.to(device=p.device, dtype=p.dtype).clone()
            opt.state[p] = new


def _load_into_flat_partitions(engine, state: NamedState) -> None:
    zero = engine.optimizer  # DeepSpeedZeroOptimizer (stage 1/2) or BF16_Optimizer
    base = zero.optimizer
    names = {id(p): n for n, p in engine.module.named_parameters()}
    lp_groups = getattr(zero, "bit16_groups", None) or getattr(zero, "bf16_groups")
    for group, lp_params in zip(base.param_groups, lp_groups):
        (flat,) = group["params"]  # the rank's fp32 partition of the group
        entries = [(p, state["params"].get(names.get(id(p)))) for p in lp_params]
        missing = [names.get(id(p)) for p, e in entries if e is None]
        if missing:
            raise UserError(f"the re-sharded optimizer state lacks parameters {missing}")
        keys = [k for k, v in entries[0][1].items() if k != "param"] if entries else []
        old = base.state.get(flat, {})
        new = {}
        for key in keys:
            if key == "step":
                new[key] = _step_tensor(entries[0][1][key], old.get(key), group, flat.device, base)
            else:
                new[key] = torch.zeros_like(flat)  # padding beyond the last fragment stays zero
        for p, entry in entries:
            mapping = getattr(p, "_hp_mapping", None)
            if mapping is None:
                continue  # no fragment of this parameter on this rank
            lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
            with torch.no_grad():
                flat.narrow(0, hp.start, hp.numel).copy_(entry["param"].flatten().narrow(0, lp.start, lp.numel))
                for key in keys:
                    if key != "step":
                        new[key].narrow(0, hp.start, hp.numel).copy_(entry[key].flatten().narrow(0, lp.start, lp.numel))
        base.state[flat] = new
    if hasattr(zero, "_link_all_hp_params"):
        zero._link_all_hp_params()  # the parameters' views of the moments now point at the new state
    zero.update_lp_params()  # the model's weights from the fp32 masters just written (and all-gathered)


def load_named_state(engine, state: NamedState) -> None:
    """Put `state` (this rank's shard) into the engine's optimizer: master weights, moments, step."""
    if engine.zero_optimization_stage() >= 3:
        raise UserError("a re-sharded optimizer state loads into ZeRO stages 0-2; label sharding excludes ZeRO-3")
    opt = engine.optimizer
    if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer"):
        _load_into_torch_optimizer(engine, state)
    elif hasattr(opt, "bit16_groups") or hasattr(opt, "bf16_groups"):
        _load_into_flat_partitions(engine, state)
    else:
        raise UserError(
            f"a re-sharded optimizer state cannot be loaded into DeepSpeed's {type(opt).__name__} (fp16/bf16 at "
            "ZeRO-0); resume with deepspeed.zero_optimization.stage 1 or 2, or in fp32"
        )
