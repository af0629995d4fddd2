"""Activation bytes of one micro-batch per rank, for the torch paths of `xmtc.ops` (CPU, and CUDA
with `model.kernels = "torch"`); the Triton kernels save less, so this is an upper bound there.

XML-CNN (B documents, S tokens, D embedding, C = D or S the convolved axis, F filters of widths
w, p pooling chunks, H features, G = K x B rows scored per shard, L_k = ceil(L / K) labels per
shard, c = min(chunk, L_k), a = activation bytes, m = dropout-mask bytes: 1 on CUDA, a on CPU):
  saved by the forward  ids 8BS; dropped embeddings and mask (a + m)BSD (no dropout: aBSD); per
                        width relu(conv) aBF(C-w+1); arg-max indices 8BFp|w|; pooled features
                        aBFp|w|; tf-idf channel (xml_cnn.tfidf) at most 36BS + aBH; bottleneck relu
                        aBH; feature dropout (a + m)BH
  forward:embed         ids, the embeddings, the dropout's mask and output: (2a + m)BSD
  forward:loss          saved + fused: feature gradient 4GH and one chunk of logits with its
                        softplus 8Gc, never G x L (bf16: + fp32 features and weight chunk 4GH + 4cH,
                        and dz^T x features 4cH: max(8Gc, 4Gc + 4cH)); materialized: MATERIALIZED_LOGITS x 4GL_k
  backward:loss         materialized only: saved + logits, targets, sigmoid, difference, gradient 5 x 4GL_k
  backward:early        saved + the convolutions' input gradients while they add up 3aBSD + one
                        width's pool and relu gradients 2aBF(C-w+1)
  backward:late         ids + the embeddings' gradient aBSD (the weight gradients are all there)

SGM (S tokens, E embedding, H_e encoder hidden, H_d = 2H_e decoder hidden and attention width,
T decoder steps = longest label list + 1, V_k = ceil((L + 1) / K) outputs per shard):
  encoder               ids 8BS; embeddings (2-3)aBSE; LSTM_SAVED aBSH_e per direction and layer;
                        states and attention keys aBS(2H_e + H_d)
  decoder               SGM_LABEL_BYTES BV_kT for the masked softmax over the outputs; cells,
                        readout and gate aBT(LSTM_SAVED H_d layers + 4H_d + 4D); additive attention
                        tanh(keys + query) and its input 2aBSH_dT
  backward              the same, plus one step's logits gradient 8BV_k; late: the embeddings' gradient
"""

from __future__ import annotations

import math

from xmtc.config import Config
from xmtc.memory.states import Item

MATERIALIZED_LOGITS = 5
"""fp32 G x L tensors live at the materialized loss's peak: logits, targets, and BCE's three
temporaries (log_sigmoid, its buffer, (1 - y) x logits); +1 bf16 logits tensor in bf16."""
SGM_LABEL_BYTES = 18
"""Bytes per output, row and decoder step that the torch masked softmax keeps for the backward
(two bool masks, exp of the shifted logits for the statistics and for the weighted sum, the
probabilities: 14) plus the last step's fp32 logits in flight, measured with LiveTensorTracker
on debug_sgm at 4,000 and 16,000 labels (torch 2.13 CPU: 17.8)."""
LSTM_SAVED = 10
"""Values saved per hidden unit, token, layer and direction by the native LSTM (gates, activations, c, tanh c)."""


def _item(what: str, nbytes: float, phase: str, formula: str) -> Item:
    return Item("activations", what, int(nbytes), phase, formula)


def xml_cnn_items(cfg: Config, batch: int, num_labels: int, shards: int, dtype: str, device: str) -> list[Item]:
    m, x = cfg.model, cfg.xml_cnn
    a = 2 if dtype == "bf16" else 4
    mask = 1 if device == "cuda" else a  # dropout keeps a bool mask on CUDA, a scaled copy of the noise on CPU
    B, S, D, F, p = batch, cfg.data.max_len, m.embed_dim, x.num_filters, x.pooling_chunks
    C = D if x.conv_over == "embedding" else S
    widths = x.filter_widths
    pooled = F * p * len(widths)
    H = x.bottleneck if x.bottleneck > 0 else pooled
    G, L_k = shards * B, math.ceil(num_labels / shards)
    c = min(x.loss_chunk_size, L_k)
    BSD = B * S * D

    if m.embed_dropout > 0:
        embedded = _item("embeddings after dropout, and the dropout mask", (a + mask) * BSD, "", f"(a + {mask}) BSD")
    else:
        embedded = _item("embeddings", a * BSD, "", "aBSD")
    saved = [
        _item("token ids", 8 * B * S, "", "8BS"),
        embedded,
        _item("relu(conv) per width", sum(a * B * F * (C - w + 1) for w in widths), "", "sum_w aBF(C-w+1)"),
        _item("pooling arg-max indices", 8 * B * pooled, "", "8BFp|w|"),
        _item("pooled features", a * B * pooled, "", "aBFp|w|"),
    ]
    if x.tfidf:  # at most B*S distinct (document, token) pairs: keys, counts, rows, ids, weights
        saved.append(_item("tf-idf channel: sparse batch weights and output", 36 * B * S + a * B * H, "", "36BS + aBH"))
    if x.bottleneck > 0:
        saved.append(_item("bottleneck relu", a * B * H, "", "aBH"))
    if m.dropout > 0:
        saved.append(_item("feature dropout output and mask", (a + mask) * B * H, "", f"(a + {mask}) BH"))

    def at(moment: str, chosen: list[Item]) -> list[Item]:
        return [Item(i.component, i.what, i.nbytes, moment, i.formula) for i in chosen]

    items = at("forward:embed", [saved[0], _item("embeddings", a * BSD, "", "aBSD")]
               + ([_item("dropout mask and output", (a + mask) * BSD, "", f"(a + {mask}) BSD")] if m.embed_dropout > 0 else []))
    loss = []
    if shards > 1:
        loss.append(_item("all-gathered features (+ padded copy)", a * (G + B) * H, "", "a(K+1)BH"))
    if x.loss == "fused":
        loss.append(_item("fused loss: feature gradient", 4 * G * H, "", "4GH"))
        if a == 4:  # the weight gradient is written in place (mm out=)
            loss.append(_item("fused loss: one chunk of logits and its softplus", 8 * G * c, "", "8Gc"))
        else:  # fp32 copies of the features and the weight chunk; dz^T x features is cast into the slice
            loss.append(_item("fused loss: fp32 features and weight chunk", 4 * G * H + 4 * c * H, "", "4GH + 4cH"))
            loss.append(_item("fused loss: chunk logits, softplus or dz^T x features", max(8 * G * c, 4 * G * c + 4 * c * H),
                              "", "max(8Gc, 4Gc + 4cH)"))
    else:
        extra = a * G * L_k if a != 4 else 0
        loss.append(_item("materialized logits, targets, BCE temporaries", MATERIALIZED_LOGITS * 4 * G * L_k + extra, "",
                          f"{MATERIALIZED_LOGITS} x 4 G L_k" + (" + a G L_k" if extra else "")))
    items += at("forward:loss", saved + loss)
    if x.loss == "materialized":  # BCE's backward: sigmoid, difference, scaled gradient beside logits and targets
        items += at("backward:loss", saved + [_item("logits, targets and the BCE gradient", 5 * 4 * G * L_k, "", "5 x 4 G L_k")])
    wide = max(C - w + 1 for w in widths)
    items += at("backward:early", saved + [
        _item("input gradients of the convolutions (accumulated, new, sum)", 3 * a * BSD, "", "3aBSD"),
        _item("pool and relu gradients of one width", 2 * a * B * F * wide, "", "2aBF(C-w+1)")])
    # Last, only the embeddings' gradient is left, while the embedding's weight gradient is built.
    items += at("backward:late", [saved[0], _item("gradient of the embeddings", a * BSD, "", "aBSD")])
    return items


def sgm_items(cfg: Config, batch: int, num_labels: int, shards: int, dtype: str, device: str,
              target_len: int) -> list[Item]:
    m, s = cfg.model, cfg.sgm
    a = 2 if dtype == "bf16" else 4
    B, S, E = batch, cfg.data.max_len, m.embed_dim
    He, Hd, De = s.hidden_size, 2 * s.hidden_size, s.label_embed_dim
    T, V_k = target_len, math.ceil((num_labels + 1) / shards)
    attn = Hd  # the additive attention's width is the decoder's
    encoder = [
        _item("token ids", 8 * B * S, "forward", "8BS"),
        _item("embeddings (+ dropout, packed copy)", (3 if m.embed_dropout > 0 else 2) * a * B * S * E, "forward", "2-3 aBSE"),
        _item("encoder LSTM saved state", LSTM_SAVED * a * B * S * He * 2 * s.encoder_layers, "forward",
              f"{LSTM_SAVED} a B S H_e x 2 directions x layers"),
        _item("encoder states and attention keys", a * B * S * (2 * He + attn), "forward", "aBS(2H_e + A)"),
    ]
    per_step = [
        _item("masked softmax over the labels", SGM_LABEL_BYTES * B * V_k * T, "forward",
              f"{SGM_LABEL_BYTES} B V_k T"),
        _item("decoder cells, readout, global embedding", a * B * T * (LSTM_SAVED * Hd * s.decoder_layers + 4 * Hd + 4 * De),
              "forward", f"aBT({LSTM_SAVED} H_d layers + 4H_d + 4D)"),
    ]
    if s.attention == "bahdanau":
        per_step.append(_item("attention tanh(keys + query)", 2 * a * B * S * attn * T, "forward", "2aBSAT"))
    else:
        per_step.append(_item("attention scores and weights", 2 * 4 * B * S * T, "forward", "8BST"))
    items = encoder + per_step
    items += [Item(i.component, i.what, i.nbytes, "backward:early", i.formula) for i in encoder + per_step]
    items.append(_item("logits gradient of one step", 2 * 4 * B * V_k, "backward:early", "8 B V_k"))
    items.append(_item("token ids", 8 * B * S, "backward:late", "8BS"))
    items.append(_item("gradient of the embeddings", a * B * S * E, "backward:late", "aBSE"))
    return items
