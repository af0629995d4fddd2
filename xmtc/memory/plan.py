"""Per-rank memory of a configuration: model states (xmtc.memory.states) + activations
(xmtc.memory.activations), combined phase by phase, and the search for a layout that fits.

The peak is the persistent bytes plus the largest phase: forward, backward (autograd), reduce
(DeepSpeed's gradient reduction that ends engine.backward) or step. Activations are gone by the
reduction, and the step's scratch is gone by the next forward. A phase may have moments
("forward:dropout", "forward:loss"; "backward:loss", "backward:early", "backward:late"): items
of the bare phase are live at each of them, and the phase's peak is its largest moment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from xmtc.config import Config, ConfigError
from xmtc.memory import activations, states
from xmtc.memory.tracker import COMPONENTS

PHASES = ("forward", "backward", "reduce", "step")
SHARDED = {"xml_cnn": ("output.weight", "output.bias"),
           "sgm": ("decoder.label_head.weight", "decoder.label_head.bias", "decoder.label_head.embedding")}


@dataclass(frozen=True)
class Layout:
    world_size: int
    zero_stage: int
    label_shards: int
    dtype: str
    micro_batch: int
    device: str = "cuda"

    def describe(self) -> str:
        shards = f", {self.label_shards} label shards" if self.label_shards > 1 else ""
        return f"{self.world_size} rank{'s' if self.world_size > 1 else ''}, ZeRO-{self.zero_stage}{shards}, {self.dtype}, batch {self.micro_batch}"

    def check(self, num_labels: int) -> None:
        """ConfigError when DeepSpeed or xmtc would refuse this layout."""
        if self.world_size < 1 or self.micro_batch < 1 or self.label_shards < 1:
            raise ConfigError(f"world size, batch and label shards must be at least 1; got {self.describe()}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"ZeRO stage must be 0, 1, 2 or 3; got {self.zero_stage}")
        if self.dtype not in ("fp32", "bf16"):
            raise ConfigError(f"dtype must be \"fp32\" or \"bf16\"; got \"{self.dtype}\"")
        if self.world_size % self.label_shards:
            raise ConfigError(f"label shards {self.label_shards} must divide the world size {self.world_size}")
        if self.label_shards > 1 and self.zero_stage == 3:
            raise ConfigError("label sharding runs with ZeRO 0-2 only (xmtc.parallel.label_shards refuses ZeRO-3)")
        if self.label_shards > num_labels:
            raise ConfigError(f"label shards {self.label_shards} exceed the {num_labels} labels")


@dataclass
class Prediction:
    layout: Layout
    items: list[states.Item]
    params_per_rank: int
    deepspeed_estimate: dict | None = None

    def _moments(self, phase: str) -> list[str]:
        """A phase's moments ("backward:early", "backward:late", ...): its peak is the largest of them."""
        return sorted({i.phase for i in self.items if i.phase.startswith(phase + ":")}) or [phase]

    def _live(self, moment: str) -> list[states.Item]:
        phase = moment.split(":")[0]
        return [i for i in self.items if i.phase in ("persistent", phase, moment)]

    def _moment(self, phase: str) -> str:
        return max(self._moments(phase), key=lambda m: sum(i.nbytes for i in self._live(m)))

    def phase_total(self, phase: str) -> int:
        return sum(i.nbytes for i in self._live(self._moment(phase)))

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_total)

    @property
    def peak(self) -> int:
        return self.phase_total(self.peak_phase)

    def parts(self, phase: str | None = None) -> dict[str, int]:
        """Bytes per component live at the peak of `phase` (default: the peak phase)."""
        out = dict.fromkeys(COMPONENTS, 0)
        for i in self._live(self._moment(phase or self.peak_phase)):
            out[i.component] += i.nbytes
        return out

    @property
    def model_states(self) -> int:
        """Weights + gradients + optimizer state at the optimizer step (what DeepSpeed's estimators count)."""
        p = self.parts("step")
        return p["weights"] + p["grads"] + p["optimizer"]

    def to_dict(self) -> dict:
        return {"layout": asdict(self.layout), "params_per_rank": self.params_per_rank,
                "peak_bytes": self.peak, "peak_phase": self.peak_phase, "components": self.parts(),
                "phase_totals": {p: self.phase_total(p) for p in PHASES}, "model_states_bytes": self.model_states,
                "deepspeed_estimate": self.deepspeed_estimate, "items": [asdict(i) for i in self.items]}


@dataclass
class ModelShape:
    """What the planner needs of a model: its parameters, the label-indexed ones, the config."""

    cfg: Config
    model: nn.Module
    num_labels: int
    target_len: int = 0
    params: list[states.Param] = field(default_factory=list)

    def __post_init__(self):
        # ZeRO-3 gathers a module's own parameters together, and a leaf module's (SGM's decoder,
        # `zero3_leaf_modules`) all at once.
        leaf_types = tuple(getattr(self.model, "zero3_leaf_modules", ()))
        leaves = [name for name, m in self.model.named_modules() if leaf_types and isinstance(m, leaf_types)]
        for name, p in self.model.named_parameters():
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            owner = next((leaf for leaf in leaves if owner == leaf or owner.startswith(leaf + ".")), owner)
            self.params.append(states.Param(name, p.numel(), p.dim(), owner))

    def rank_params(self, shards: int) -> list[states.Param]:
        """This rank's parameters: label-indexed rows cut to ceil(rows / shards) (shard 0, the largest)."""
        sharded = SHARDED.get(self.cfg.model.name, ())
        out = []
        for p, (name, t) in zip(self.params, self.model.named_parameters()):
            if shards > 1 and name in sharded:
                rows = math.ceil(t.shape[0] / shards)
                out.append(states.Param(p.name, p.numel // t.shape[0] * rows, p.ndim, p.module))
            else:
                out.append(p)
        return out


def predict(shape: ModelShape, layout: Layout) -> Prediction:
    cfg = shape.cfg
    layout.check(shape.num_labels)
    params = shape.rank_params(layout.label_shards)
    dp = layout.world_size // layout.label_shards
    client = "optimizer" not in cfg.deepspeed
    optimizer = cfg.train.optimizer if client else str(cfg.deepspeed["optimizer"].get("type", "adam"))
    output = sum(p.numel for p in params if p.name in SHARDED["xml_cnn"]) if cfg.model.name == "xml_cnn" else 0
    items = states.model_state_items(
        params, stage=layout.zero_stage, dtype=layout.dtype, dp=dp, device=layout.device,
        zero=dict(cfg.deepspeed.get("zero_optimization", {})), optimizer=optimizer, client_optimizer=client,
        output_numel=output, fused=cfg.model.name == "xml_cnn" and cfg.xml_cnn.loss == "fused",
        first_layer=params[0].numel, grad_accum=cfg.grad_accum)
    if cfg.model.name == "sgm":
        items += activations.sgm_items(cfg, layout.micro_batch, shape.num_labels, layout.label_shards,
                                       layout.dtype, layout.device, shape.target_len or cfg.sgm.max_decode_len + 1)
    else:
        items += activations.xml_cnn_items(cfg, layout.micro_batch, shape.num_labels, layout.label_shards,
                                           layout.dtype, layout.device)
    prediction = Prediction(layout, items, sum(p.numel for p in params))
    if layout.label_shards == 1 and layout.zero_stage in (2, 3):
        layers: dict[str, int] = {}  # DeepSpeed's "layer": a module's own parameters (recurse=False)
        for p in shape.params:
            owner = p.name.rsplit(".", 1)[0] if "." in p.name else ""
            layers[owner] = layers.get(owner, 0) + p.numel
        prediction.deepspeed_estimate = states.deepspeed_estimates(
            sum(p.numel for p in shape.params), max(layers.values()), layout.zero_stage, layout.world_size)
    return prediction


# ------------------------------------------------------------------------------ fitting


def candidate_layouts(base: Layout, num_labels: int, world_size: int):
    """Every layout DeepSpeed and xmtc accept on `world_size` ranks: plain ZeRO first, then label shards."""
    k = 1
    while k <= world_size:
        for stage in range(4):
            layout = Layout(world_size, stage, k, base.dtype, base.micro_batch, base.device)
            try:
                layout.check(num_labels)
            except ConfigError:
                continue
            yield layout
        k *= 2


def fitting_layouts(shape: ModelShape, base: Layout, limit_bytes: int, max_ranks: int = 1024) -> list[Prediction]:
    """The layouts that fit `limit_bytes` per rank on the fewest ranks (powers of two from base.world_size),
    simplest first: no label shards before shards, a lower ZeRO stage before a higher one."""
    n = base.world_size
    while n <= max_ranks:
        fits = [p for p in (predict(shape, lay) for lay in candidate_layouts(base, shape.num_labels, n)) if p.peak <= limit_bytes]
        if fits:
            return fits
        n *= 2
    return []


def smallest_fit(shape: ModelShape, base: Layout, limit_bytes: int, max_ranks: int = 1024) -> Prediction | None:
    fits = fitting_layouts(shape, base, limit_bytes, max_ranks)
    return fits[0] if fits else None
