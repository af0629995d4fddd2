"""Pieces both models use."""

from __future__ import annotations

import torch
from torch import nn


def init_embedding(embedding: nn.Embedding, std: float) -> None:
    """N(0, std^2) word vectors; the padding row stays zero. nn.Embedding already drew N(0, 1), so
    std 1.0 leaves it (and the random stream every later initialisation reads) untouched."""
    if std == 1.0:
        return
    with torch.no_grad():
        embedding.weight.normal_(0.0, std)
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()
