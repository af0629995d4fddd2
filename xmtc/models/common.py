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


def word_embedding(model: nn.Module, vocab_size: int) -> nn.Embedding:
    """The model's word-embedding table: its nn.Embedding with `vocab_size` rows."""
    found = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size]
    if len(found) != 1:
        raise ValueError(f"expected one word embedding of {vocab_size} rows in {type(model).__name__}, found {len(found)}")
    return found[0]


def load_word_vectors(model: nn.Module, vectors) -> None:
    """Copy `vectors` [vocab_size, D] (numpy or torch) into the model's word embedding; padding stays zero."""
    table = word_embedding(model, len(vectors))
    with torch.no_grad():
        table.weight.copy_(torch.as_tensor(vectors, dtype=table.weight.dtype))
        if table.padding_idx is not None:
            table.weight[table.padding_idx].zero_()
