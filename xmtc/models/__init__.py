"""Plain nn.Modules; nothing here knows about ranks."""

from __future__ import annotations

from torch import nn

from xmtc.config import Config


def build_model(cfg: Config, num_labels: int, vocab_size: int) -> nn.Module:
    if cfg.model.name == "xml_cnn":
        from xmtc.models.xml_cnn import XMLCNN

        return XMLCNN(cfg, num_labels, vocab_size)
    if cfg.model.name == "sgm":
        from xmtc.models.sgm import SGM

        return SGM(cfg, num_labels, vocab_size)
    raise ValueError(f"unknown model {cfg.model.name}")
