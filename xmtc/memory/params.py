"""Parameter counts, layer by layer, from a model built on the meta device (no memory, instant).

XML-CNN rows sit next to the reference budget of Amazon-670K ("the seed"): it counts weight
matrices only and rounds them, so its 358.51M differs from the exact count by the output layer's
rounding (512 x 670,091 = 343.09M written as 343M) and by the biases (96 + 512 + 670,091).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xmtc.config import Config, ConfigError

SEED_670K = {
    # The seed's own figures for Amazon-670K (weights only, rounded as it printed them).
    "embedding": ("30K x 300", 9_000_000),
    "conv": ("500 x 32 x (2+4+8)", 224_000),
    "bottleneck": ("(128 x 32 x 3) x 512", 6_290_000),
    "output": ("512 x 670K", 343_000_000),
    "total": ("", 358_510_000),
}
SEED_670K_GB = 1.33
"""The seed's "about 1.33 GB in fp32" (GiB: 358.51M x 4 bytes / 2^30 = 1.336)."""

# Rows of the table: (row, parameter-name prefixes). Unmatched parameters get a row of their own.
ROWS = {
    "xml_cnn": [
        ("embedding", ("embedding.",)),
        ("conv", ("convs.",)),
        ("bottleneck", ("bottleneck.",)),
        ("output", ("output.",)),
        ("tf-idf map", ("tfidf.",)),
    ],
    "sgm": [
        ("embedding", ("encoder.embedding.",)),
        ("encoder LSTM", ("encoder.",)),
        ("decoder LSTM", ("decoder.cells.", "decoder.bos")),
        ("attention", ("decoder.attention.",)),
        ("readout", ("decoder.readout_",)),
        ("global-embedding gate", ("decoder.gate_",)),
        ("label embeddings", ("decoder.label_head.embedding",)),
        ("output projection", ("decoder.label_head.weight", "decoder.label_head.bias")),
    ],
}


@dataclass
class LayerRow:
    name: str
    weights: int
    """Elements of the weight matrices (everything but biases)."""
    biases: int
    shapes: list[str] = field(default_factory=list)
    seed_formula: str = ""
    seed_count: int | None = None

    @property
    def total(self) -> int:
        return self.weights + self.biases


def build_meta_model(cfg: Config, num_labels: int, vocab_size: int) -> nn.Module:
    """The model of `cfg` with meta tensors: shapes and counts only, nothing allocated."""
    from xmtc.models import build_model

    try:
        with torch.device("meta"):
            return build_model(cfg, num_labels, vocab_size)
    except ModuleNotFoundError as e:
        if cfg.model.name == "sgm" and "sgm" in str(e):
            raise ConfigError(
                f"config key 'model.name' is \"sgm\" but xmtc/models/sgm.py is not in this checkout ({e}); "
                "the memory planner builds the real model, so it needs that module"
            ) from None
        raise


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("bias")


def layer_rows(model: nn.Module, model_name: str) -> list[LayerRow]:
    """One row per layer group of ROWS[model_name], in that order; leftovers get their own rows."""
    rows: dict[str, LayerRow] = {name: LayerRow(name, 0, 0) for name, _ in ROWS.get(model_name, [])}
    for pname, p in model.named_parameters():
        row_name = next((r for r, prefixes in ROWS.get(model_name, []) if pname.startswith(prefixes)), pname)
        row = rows.setdefault(row_name, LayerRow(row_name, 0, 0))
        if _is_bias(pname):
            row.biases += p.numel()
        else:
            row.weights += p.numel()
        row.shapes.append("x".join(str(s) for s in p.shape))
    out = [r for r in rows.values() if r.total]
    if model_name == "xml_cnn":
        _attach_seed(out, model)
    return out


def _attach_seed(rows: list[LayerRow], model: nn.Module) -> None:
    """Seed formulas for XML-CNN; its rounded counts only where the layer has the seed's shape."""
    conv0 = model.convs[0]
    widths = [c.kernel_size[0] for c in model.convs]
    in_ch, filters = conv0.in_channels, conv0.out_channels
    formulas = {
        "embedding": (f"{model.embedding.num_embeddings} x {model.embedding.embedding_dim}", 9_000_000),
        "conv": (f"{in_ch} x {filters} x ({'+'.join(map(str, widths))})", 224_000),
        "output": (f"{model.output.in_features} x {model.output.num_labels}", 343_086_592),
    }
    if model.bottleneck is not None:
        formulas["bottleneck"] = (
            f"({model.chunks} x {filters} x {len(widths)}) x {model.bottleneck.out_features}", 6_291_456)
    for row in rows:
        if row.name in formulas:
            row.seed_formula, exact_670k = formulas[row.name]
            # The seed's rounded figure applies only to the layer of exactly the seed's shape.
            row.seed_count = SEED_670K[row.name][1] if row.weights == exact_670k else None


def seed_total(rows: list[LayerRow]) -> int | None:
    """The seed's total when every XML-CNN layer matches the seed's (else None)."""
    if len(rows) == 4 and all(r.seed_count is not None for r in rows):
        return SEED_670K["total"][1]
    return None


def seed_explanation(rows: list[LayerRow]) -> str:
    """One line: why the exact count differs from the seed's."""
    total = sum(r.total for r in rows)
    seed = seed_total(rows)
    if seed is None:
        return ""
    weights = sum(r.weights for r in rows)
    biases = sum(r.biases for r in rows)
    layers = sum(r.seed_count for r in rows)
    rounding = weights - layers
    total_rounding = layers - seed
    assert rounding + total_rounding + biases == total - seed
    return (f"exact {total:,} - seed {seed:,} = {total - seed:,}: the seed rounds the layers' weights down by {rounding:,} "
            f"(512 x 670,091 = 343,086,592 written 343M; 6,291,456 written 6.29M), its total by {total_rounding:,} more "
            f"({layers:,} written {seed / 1e6:.2f}M), and leaves out {biases:,} biases")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_layer_params(model: nn.Module, model_name: str) -> tuple[int, int]:
    """(label rows L, parameters per label row) of the label-indexed layers: what label sharding splits.

    XML-CNN: output weight + bias (H + 1 per label). SGM: projection weight + bias + label
    embedding (H + 1 + D per output, over L + 1 outputs including end-of-sequence).
    """
    if model_name == "sgm":
        head = model.decoder.label_head
        return head.num_outputs, head.in_features + 1 + head.embed_dim
    out = model.output
    return out.num_labels, out.in_features + 1
