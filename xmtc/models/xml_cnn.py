"""XML-CNN (Liu et al., SIGIR 2017) and Kim-CNN as a configuration of it.

embedding -> convolutions of several widths -> dynamic max pooling into p chunks per feature map
-> bottleneck (ReLU, dropout) -> output layer over L labels, trained with binary cross-entropy.

`conv_over="sequence"` slides filters over token positions (the paper, Kim-CNN). `"embedding"` is
the reference budget's variant: the S token positions are input channels and filters slide along
the embedding axis (S x F x width weights per width). Kim-CNN: p = 1 (global max), no bottleneck.
`xml_cnn.tfidf` adds a linear map of the document's TF-IDF vector to the bottleneck (xmtc.models.tfidf).
The model holds no distributed code; label sharding replaces `self.output` from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xmtc import ops
from xmtc.config import Config
from xmtc.models.common import init_embedding
from xmtc.models.output_layer import OutputLayer
from xmtc.models.tfidf import TfidfChannel


class XMLCNN(nn.Module):
    def __init__(self, cfg: Config, num_labels: int, vocab_size: int):
        super().__init__()
        m, x = cfg.model, cfg.xml_cnn
        self.seq_len, self.conv_over, self.chunks = cfg.data.max_len, x.conv_over, x.pooling_chunks
        self.embedding = nn.Embedding(vocab_size, m.embed_dim, padding_idx=0)
        init_embedding(self.embedding, m.embed_init_std)
        in_channels = self.seq_len if x.conv_over == "embedding" else m.embed_dim
        self.convs = nn.ModuleList(nn.Conv1d(in_channels, x.num_filters, w) for w in x.filter_widths)
        pooled = x.num_filters * x.pooling_chunks * len(x.filter_widths)
        self.embed_dropout = nn.Dropout(m.embed_dropout)
        self.dropout = nn.Dropout(m.dropout)
        self.bottleneck = nn.Linear(pooled, x.bottleneck) if x.bottleneck > 0 else None
        features = x.bottleneck if x.bottleneck > 0 else pooled
        self.output = OutputLayer(features, num_labels, loss=x.loss, chunk_size=x.loss_chunk_size, criterion=x.criterion)
        # Built last, so every other layer draws the same initial values with or without it.
        self.tfidf = TfidfChannel(vocab_size, x.bottleneck, x.tfidf_sublinear) if x.tfidf else None

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] -> features [B, H] fed to the output layer."""
        if input_ids.shape[1] != self.seq_len:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions; this model expects data.max_len={self.seq_len}")
        h = self.embed_dropout(self.embedding(input_ids))  # [B, S, D]
        h = h if self.conv_over == "embedding" else h.transpose(1, 2)  # channels first
        # Conv without bias: the bias and ReLU are fused into the pooling op.
        pooled = [ops.dynamic_max_pool(F.conv1d(h, conv.weight), conv.bias, self.chunks) for conv in self.convs]
        z = torch.cat([p.flatten(1) for p in pooled], dim=1)
        if self.bottleneck is not None:
            z = self.bottleneck(z)
            if self.tfidf is not None:
                z = z + self.tfidf(input_ids)
            z = F.relu(z)
        return self.dropout(z)

    def forward(self, input_ids, label_idx=None, label_offsets=None, lengths=None, topk: int = 0):
        """Training: the loss of the batch. With topk > 0: (scores, label ids) of the top labels.

        One forward for both so that ZeRO-3's parameter-gathering hooks run in evaluation too.
        """
        features = self.encode(input_ids)
        if topk:
            return self.output.topk(features, topk)
        return self.output.loss(features, label_idx, label_offsets)
