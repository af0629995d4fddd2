"""Will it fit? Per-rank memory of a run, predicted before it (meta device) and measured during it.

    python -m xmtc.memory --config xml_cnn_670k                        # parameter table + 1 rank
    python -m xmtc.memory --config xml_cnn_670k --world-size 1,2,4,8 --zero-stage 0,1,2,3 \
        --dtype bf16 --batch 128 --json 670k.json --plot 670k.png       # one row per layout
    python -m xmtc.memory --config xml_cnn_670k --max-memory-gb 40      # the smallest layout that fits
    python -m xmtc.memory --config debug_xml_cnn --measure              # 3 real steps vs the prediction
    torchrun --nproc_per_node 2 -m xmtc.memory --config debug_xml_cnn --zero-stage 2 --measure

Modules: `params` (the layer table and the seed's budget), `states` (weights, gradients, optimizer
state and DeepSpeed's buffers per ZeRO stage), `activations` (XML-CNN and SGM), `plan` (peaks and
the fitting search), `tracker` and `measure` (live tensor bytes during real steps), `report`
(table, JSON, PNG). The formulas are written out in docs/memory.md.
"""

from __future__ import annotations

from xmtc.config import Config
from xmtc.memory.params import build_meta_model, count_parameters, layer_rows
from xmtc.memory.plan import Layout, ModelShape, Prediction, predict, smallest_fit


def model_shape(cfg: Config, num_labels: int | None = None, vocab_size: int | None = None,
                target_len: int = 0) -> ModelShape:
    """The meta-device model of `cfg` (labels from `synthetic.num_labels`, vocabulary from `data.vocab_size`
    unless given: a real corpus decides both)."""
    labels = num_labels or cfg.synthetic.num_labels
    model = build_meta_model(cfg, labels, vocab_size or cfg.data.vocab_size)
    return ModelShape(cfg, model, labels, target_len)


__all__ = ["Layout", "ModelShape", "Prediction", "build_meta_model", "count_parameters", "layer_rows",
           "model_shape", "predict", "smallest_fit"]
