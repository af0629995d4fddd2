"""SGM: sequence generation for multi-label classification (Yang et al., COLING 2018).

Encoder: word embeddings -> BiLSTM over each document's true length; h_i = [forward; backward].
Decoder: an LSTM started from the encoder's final hidden states (each layer's two directions
concatenated, so its width is twice the encoder's; cell state 0), fed s_t = LSTM(s_{t-1}, [g(y_{t-1}); c_{t-1}]),
with attention over the encoder states ("bahdanau": v^T tanh(W s_t + U h_i), the paper's;
"luong": s_t^T W h_i), read out as o_t = W_o tanh(W_d s_t + V_d c_t) and
y_t = softmax(o_t + l_t) with l_t = -inf at the labels already emitted (`sgm.mask`).

Global embedding (`sgm.global_embedding`): the next input is g(y_{t-1}) = (1 - H) e + H e_bar, e the
embedding of the label chosen at t-1, e_bar = sum_i y_{t-1}^(i) e_i, and H = sigmoid(W1 e + W2 e_bar)
("adaptive") or the constant lambda ("fixed"); "none" feeds e alone.

Output vocabulary: the L labels (ids 0..L-1, most frequent first), then end-of-sequence (id L).
Beginning-of-sequence is a learned input vector, never predicted, so it takes no output row.
Everything that spans the output vocabulary (projection, masked softmax, cross-entropy, e_bar,
argmax / top-k, label-embedding lookups) lives in `LabelHead`; `xmtc.parallel.sgm_shards`
replaces it by a label-sharded one from outside. Greedy and beam search: `sgm_decoding`.

Training loss (teacher forcing): for each document, the sum over its target steps (its labels,
then EOS) of -log y_t(target), averaged over the documents of the batch. The mask is applied in
training too (the prefix is the gold labels), so the trained distribution is the decoded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xmtc import ops
from xmtc.config import Config
from xmtc.config_checks import check_sgm
from xmtc.models.common import init_embedding
from xmtc.models.sgm_decoding import beam_search, greedy_decode
from xmtc.ops_reference import emitted_mask

NO_LABEL = -1
"""Padding of label-id tensors (targets, emitted prefixes, predictions)."""


# --------------------------------------------------------------------------------- targets


def target_sequences(label_idx: torch.Tensor, label_offsets: torch.Tensor, sort_labels: bool, eos_id: int):
    """CSR labels -> (labels [B, n], targets [B, n + 1], valid [B, n + 1]); n = most labels in a row.

    labels: each row's label ids (ascending = most frequent first when `sort_labels`, else file
    order), padded with -1. targets: the labels followed by `eos_id`; positions past a row's EOS
    hold `eos_id` too and are excluded by `valid`. A label id outside [0, eos_id), or one that a row
    lists twice (the masked softmax gives it probability 0), is a ValueError.
    """
    counts = label_offsets.diff()
    batch = counts.numel()
    rows = torch.repeat_interleave(torch.arange(batch, device=label_idx.device), counts, output_size=label_idx.numel())
    values = label_idx.long()
    # Row-major keys keep each row's labels together while sorting them ascending.
    keys = rows * (eos_id + 1) + values
    order = torch.argsort(keys)
    longest = 0
    if values.numel():
        ranked = keys[order]
        repeats = ranked.diff() == 0
        longest, low, high, repeated = torch.stack([counts.max(), values.min(), values.max(), repeats.sum()]).tolist()
        if low < 0 or high >= eos_id:
            bad = low if low < 0 else high
            raise ValueError(f"label_idx holds label id {bad}, outside this SGM's {eos_id} labels (ids 0..{eos_id - 1})")
        if repeated:
            row, label = divmod(int(ranked[1:][repeats][0]), eos_id + 1)
            raise ValueError(f"document {row} of the batch lists label {label} twice; a document's labels must be distinct")
    if sort_labels:
        values = values[order]
    position = torch.arange(label_idx.numel(), device=label_idx.device) - label_offsets[:-1].repeat_interleave(counts)
    labels = torch.full((batch, longest), NO_LABEL, dtype=torch.long, device=label_idx.device)
    labels[rows, position] = values
    steps = torch.arange(longest + 1, device=label_idx.device)
    valid = steps[None, :] <= counts[:, None]
    padded = torch.cat([labels, labels.new_full((batch, 1), NO_LABEL)], dim=1)
    targets = torch.where(steps[None, :] < counts[:, None], padded, torch.full_like(padded, eos_id))
    return labels, targets, valid


# ------------------------------------------------------------------------------ label head


@dataclass
class HeadStep:
    """What one decoder step needs from the output distribution y_t (None when not asked for)."""

    target_logp: torch.Tensor | None = None
    """[N] log y_t(target)."""
    e_bar: torch.Tensor | None = None
    """[N, D] sum_i y_t^(i) e_i."""
    top_logp: torch.Tensor | None = None
    """[N, k] the k largest log-probabilities, best first."""
    top_ids: torch.Tensor | None = None
    """[N, k] their output ids."""


class LabelHead(nn.Module):
    """Output projection and label embeddings over the V = L + 1 outputs (labels, then EOS).

    Holds rows [label_offset, label_offset + num_local) of the output vocabulary; unsharded, that
    is all of it. The four collectives below are identities here; the label-sharded head
    (xmtc.parallel.sgm_shards) overrides them, so the math of `step` is shared by both.
    """

    def __init__(self, in_features: int, num_outputs: int, embed_dim: int, label_offset: int = 0, num_local: int | None = None):
        super().__init__()
        self.in_features, self.embed_dim, self.num_outputs = in_features, embed_dim, num_outputs
        self.label_offset = label_offset
        self.num_local = num_outputs if num_local is None else num_local
        self.weight = nn.Parameter(torch.empty(self.num_local, in_features))
        self.bias = nn.Parameter(torch.empty(self.num_local))
        self.embedding = nn.Parameter(torch.empty(self.num_local, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's init for the projection, nn.Embedding's for the label embeddings.
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        nn.init.uniform_(self.bias, -self.in_features**-0.5, self.in_features**-0.5)
        nn.init.normal_(self.embedding)

    # Collectives of the label-sharded head.
    def enter(self, features: torch.Tensor) -> torch.Tensor:
        """Replicated input of the projection (sharded: its gradient is summed over shards)."""
        return features

    def reduce_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of a per-shard partial over shards (sharded: gradient passes through unchanged)."""
        return partial

    def reduce_max(self, partial: torch.Tensor) -> torch.Tensor:
        """Elementwise max over shards (no gradient)."""
        return partial

    def merge_topk(self, values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best (value, global id) pairs over shards, from each shard's best, best first."""
        return values[:, :k], ids[:, :k]

    def _local(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = ids - self.label_offset
        inside = (local >= 0) & (local < self.num_local)
        return local.clamp(0, self.num_local - 1), inside

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Label embeddings [N, D] of output ids [N] (any id in [0, V))."""
        local, inside = self._local(ids)
        rows = F.embedding(local, self.embedding) * inside[:, None].to(self.embedding.dtype)
        return self.reduce_sum(rows)

    def step(self, features: torch.Tensor, emitted: torch.Tensor, target: torch.Tensor | None = None,
             want_e_bar: bool = False, k: int = 0) -> HeadStep:
        """y_t = masked softmax of the logits of `features` [N, H]; emitted [N, T] ids (-1 padded) are masked.

        Returns the log-probability of `target` [N], e_bar, and the top-k (k = 1: the argmax) as asked.
        """
        z = F.linear(self.enter(features), self.weight, self.bias)
        local_max, local_sumexp = ops.masked_softmax_stats(z, emitted, self.label_offset)
        row_max = self.reduce_max(local_max.detach().clone())
        shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        # The shard's sum of exp rescaled from its own max to the global one (0 for an all-masked shard).
        sumexp = self.reduce_sum(local_sumexp * torch.exp(local_max - shift))
        log_norm = shift + torch.log(sumexp)
        out = HeadStep()
        if target is not None:
            local, inside = self._local(target)
            # Targets are never in the emitted prefix (a document's labels are distinct), so the raw logit is the masked one.
            z_target = z.gather(1, local[:, None]).squeeze(1).float() * inside
            out.target_logp = self.reduce_sum(z_target) - log_norm
        if want_e_bar:
            # Unnormalised partial sums (row_sumexp = 1) keep every use of the global sum replicated.
            _, partial = ops.masked_softmax_weighted_sum(
                z, emitted, self.embedding, row_max=row_max, row_sumexp=torch.ones_like(sumexp),
                label_offset=self.label_offset, return_probs=False,
            )
            out.e_bar = (self.reduce_sum(partial.float()) / sumexp[:, None]).to(self.embedding.dtype)
        if k:
            masked = z.float().masked_fill(emitted_mask(emitted, self.num_local, self.label_offset), float("-inf"))
            logp = masked - log_norm[:, None]
            if k == 1:
                values, cols = logp.max(dim=1, keepdim=True)  # ties: the lowest id, as the sharded max-with-index
            else:
                values, cols = logp.topk(min(k, self.num_local), dim=1)
            out.top_logp, out.top_ids = self.merge_topk(values, cols + self.label_offset, k)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, outputs={self.label_offset}..{self.label_offset + self.num_local - 1} "
                f"of {self.num_outputs}, embed_dim={self.embed_dim}")


# ------------------------------------------------------------------------------- encoder


class Memory(NamedTuple):
    """What the decoder attends to, one row per document."""

    values: torch.Tensor
    """[N, S, C] encoder states h_i."""
    keys: torch.Tensor
    """[N, S, A] their projection for the attention score, computed once per document."""
    mask: torch.Tensor
    """[N, S] True at real (non-padding) positions."""

    def select(self, rows: torch.Tensor) -> "Memory":
        return Memory(*(t.index_select(0, rows) for t in self))


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, S, *] with each row's first lengths[b] steps reversed; padding stays at the end (self-inverse)."""
    pos = torch.arange(x.shape[1], device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


class Encoder(nn.Module):
    """Word embeddings -> BiLSTM; returns the states [B, S, 2 hidden] and each layer's final hidden
    states [layers, B, 2 hidden] (forward direction at the last token, backward at the first).

    Each direction is a one-layer nn.LSTM over the padded batch, the backward one reading every
    document reversed within its own length: on CPU, packed sequences make the LSTM backward
    quadratic in the length (a full-size copy per time step), ~10x slower at 200 tokens.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, layers: int, embed_dropout: float, dropout: float,
                 embed_init_std: float = 1.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        init_embedding(self.embedding, embed_init_std)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.dropout = nn.Dropout(dropout)
        widths = [embed_dim] + [2 * hidden_size] * (layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(w, hidden_size, batch_first=True) for w in widths)
        self.backward_lstms = nn.ModuleList(nn.LSTM(w, hidden_size, batch_first=True) for w in widths)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor):
        lengths = lengths.to(input_ids.device)
        docs, positions = input_ids.shape
        if docs == 0:
            raise ValueError("input_ids holds no document; SGM needs a batch of at least one")
        if lengths.shape != (docs,):
            raise ValueError(f"lengths must hold one length per row of input_ids ({docs}), got shape {list(lengths.shape)}")
        low, longest = torch.stack(torch.aminmax(lengths)).tolist()
        if low < 1 or longest > positions:
            bad = low if low < 1 else longest
            raise ValueError(f"lengths must be in [1, {positions}] (the positions of input_ids), got {bad}")
        x = self.embed_dropout(self.embedding(input_ids[:, :longest]))
        rows = torch.arange(x.shape[0], device=x.device)
        finals = []
        for i, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms)):
            if i:
                x = self.dropout(x)
            ahead, _ = fwd(x)
            behind = reverse_within_length(bwd(reverse_within_length(x, lengths))[0], lengths)
            # Outputs past a document's end are never read: attention and these finals mask them.
            finals.append(torch.cat([ahead[rows, lengths - 1], behind[:, 0]], dim=1))
            x = torch.cat([ahead, behind], dim=2)
        return x, torch.stack(finals)


# ----------------------------------------------------------------------------- attention


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (the paper's): score(s, h_i) = v^T tanh(W s + U h_i)."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int):
        super().__init__()
        self.query = nn.Linear(query_dim, attn_dim, bias=False)
        self.key = nn.Linear(memory_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.key(values)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query [N, Q, H], keys [N, S, A] -> [N, Q, S]."""
        return self.v(torch.tanh(keys[:, None] + self.query(query)[:, :, None])).squeeze(-1)


class BilinearAttention(nn.Module):
    """Luong et al. "general": score(s, h_i) = s^T W h_i."""

    def __init__(self, query_dim: int, memory_dim: int):
        super().__init__()
        self.key = nn.Linear(memory_dim, query_dim, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.key(values)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)


def attend(attention: nn.Module, query: torch.Tensor, memory: Memory) -> torch.Tensor:
    """Context vectors [N, Q, C] for Q queries per document (Q = beam width, 1 in training)."""
    scores = attention.scores(query, memory.keys).masked_fill(~memory.mask[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ memory.values


# ------------------------------------------------------------------------------- decoder


class DecoderState(NamedTuple):
    h: torch.Tensor
    """[layers, N, H]"""
    c: torch.Tensor
    """[layers, N, H]"""
    context: torch.Tensor
    """[N, C] c_{t-1}, fed back with the next input."""

    def select(self, rows: torch.Tensor) -> "DecoderState":
        return DecoderState(self.h.index_select(1, rows), self.c.index_select(1, rows), self.context.index_select(0, rows))


class Decoder(nn.Module):
    """The LSTM decoder, its attention, the global embedding and the label head.

    `forward` runs a whole teacher-forced pass (the loss) or a whole decoding, so every step of a
    batch happens inside one call of this module (see `SGM.zero3_leaf_modules`).
    """

    def __init__(self, cfg: Config, num_labels: int, memory_dim: int):
        super().__init__()
        s = cfg.sgm
        hidden, dim = memory_dim, s.label_embed_dim  # decoder width = the concatenated encoder directions
        self.num_labels, self.eos_id = num_labels, num_labels
        self.mask, self.sort_labels = s.mask, s.sort_labels
        self.mode, self.fixed_lambda = s.global_embedding, s.global_lambda
        self.beam_size, self.max_decode_len = s.beam_size, s.max_decode_len
        self.bos = nn.Parameter(torch.randn(dim))
        self.cells = nn.ModuleList(nn.LSTMCell(dim + memory_dim if i == 0 else hidden, hidden) for i in range(s.decoder_layers))
        if s.attention == "bahdanau":
            self.attention = AdditiveAttention(hidden, memory_dim, hidden)
        else:
            self.attention = BilinearAttention(hidden, memory_dim)
        self.readout_state = nn.Linear(hidden, hidden, bias=False)
        self.readout_context = nn.Linear(memory_dim, hidden)
        self.dropout = nn.Dropout(cfg.model.dropout)
        if self.mode == "adaptive":
            self.gate_label = nn.Linear(dim, dim, bias=False)  # W1
            self.gate_global = nn.Linear(dim, dim, bias=False)  # W2
        self.label_head = LabelHead(hidden, num_labels + 1, dim)

    @property
    def uses_e_bar(self) -> bool:
        return self.mode != "none"

    def memory(self, states: torch.Tensor, lengths: torch.Tensor) -> Memory:
        mask = torch.arange(states.shape[1], device=states.device)[None, :] < lengths.to(states.device)[:, None]
        return Memory(states, self.attention.keys(states), mask)

    def initial_state(self, final: torch.Tensor) -> DecoderState:
        """Decoder layer j starts from the final hidden states of encoder layer j + (encoder layers -
        decoder layers), or of the first; its cell state and c_0 start at zero."""
        layers = [max(0, final.shape[0] - len(self.cells) + j) for j in range(len(self.cells))]
        h = final.index_select(0, torch.tensor(layers, device=final.device))
        return DecoderState(h, torch.zeros_like(h), final.new_zeros(final.shape[1], final.shape[2]))

    def global_embedding(self, e: torch.Tensor, e_bar: torch.Tensor | None) -> torch.Tensor:
        """g(y_{t-1}) from e (embedding of the chosen label) and e_bar (the probability-weighted average)."""
        if self.mode == "none" or e_bar is None:
            return e
        if self.mode == "fixed":
            return (1.0 - self.fixed_lambda) * e + self.fixed_lambda * e_bar
        gate = torch.sigmoid(self.gate_label(e) + self.gate_global(e_bar))
        return (1.0 - gate) * e + gate * e_bar

    def next_input(self, chosen: torch.Tensor, e_bar: torch.Tensor | None) -> torch.Tensor:
        return self.global_embedding(self.label_head.lookup(chosen), e_bar)

    def step(self, x: torch.Tensor, state: DecoderState, memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        """One decoder step for N = documents x Q rows (Q hypotheses per document, consecutive)."""
        inp = torch.cat([x, state.context], dim=1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(inp, (state.h[i], state.c[i]))
            hs.append(h)
            cs.append(c)
            inp = self.dropout(h) if i + 1 < len(self.cells) else h
        docs = memory.values.shape[0]
        context = attend(self.attention, h.view(docs, -1, h.shape[1]), memory).reshape(h.shape[0], -1)
        readout = self.dropout(torch.tanh(self.readout_state(h) + self.readout_context(context)))
        return readout, DecoderState(torch.stack(hs), torch.stack(cs), context)

    def no_mask(self, rows: int, device) -> torch.Tensor:
        return torch.full((rows, 1), NO_LABEL, dtype=torch.long, device=device)

    def loss(self, memory: Memory, state: DecoderState, label_idx: torch.Tensor, label_offsets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: sum over target steps of -log y_t(target), mean over documents."""
        labels, targets, valid = target_sequences(label_idx, label_offsets, self.sort_labels, self.eos_id)
        batch, steps = targets.shape
        # Column 0 is an all -1 "nothing emitted yet", so step t masks emitted[:, :t + 1].
        emitted = torch.cat([self.no_mask(batch, labels.device), labels], dim=1)
        x = self.bos.expand(batch, -1)
        nll = memory.values.new_zeros(batch, dtype=torch.float32)
        for t in range(steps):
            readout, state = self.step(x, state, memory)
            prefix = emitted[:, : t + 1] if self.mask else emitted[:, :1]
            out = self.label_head.step(readout, prefix, target=targets[:, t], want_e_bar=self.uses_e_bar and t + 1 < steps)
            nll = nll + torch.where(valid[:, t], -out.target_logp, torch.zeros_like(out.target_logp))
            if t + 1 < steps:
                x = self.next_input(targets[:, t], out.e_bar)
        return nll.sum() / batch

    def forward(self, states: torch.Tensor, final: torch.Tensor, lengths: torch.Tensor, label_idx=None,
                label_offsets=None, topk: int = 0):
        """The loss (teacher forcing), or with topk > 0 the decoded (probabilities, labels) [B, topk]."""
        memory, state = self.memory(states, lengths), self.initial_state(final)
        if topk:
            search = greedy_decode if self.beam_size == 1 else beam_search
            labels, probs = search(self, memory, state, self.beam_size, self.max_decode_len)
            width = labels.shape[1]
            if width < topk:
                labels = F.pad(labels, (0, topk - width), value=NO_LABEL)
                probs = F.pad(probs, (0, topk - width), value=0.0)
            return probs[:, :topk], labels[:, :topk]
        if label_idx is None or label_offsets is None:
            raise ValueError("SGM.forward needs label_idx and label_offsets for the training loss, or topk > 0 to decode")
        if label_offsets.shape != (states.shape[0] + 1,):
            raise ValueError(f"label_offsets must hold {states.shape[0] + 1} offsets for {states.shape[0]} documents, "
                             f"got shape {list(label_offsets.shape)}")
        return self.loss(memory, state, label_idx, label_offsets)


# ----------------------------------------------------------------------------------- SGM


class SGM(nn.Module):
    """Encoder + decoder; the trainer's interface is `forward` (loss, or decoded labels with topk > 0)."""

    predicts_sets = True
    """The evaluation takes the emitted labels as the predicted set (no score threshold)."""

    def __init__(self, cfg: Config, num_labels: int, vocab_size: int):
        super().__init__()
        check_sgm(cfg)  # as when the config is read, for a Config built by hand
        s = cfg.sgm
        self.num_labels = num_labels
        self.encoder = Encoder(vocab_size, cfg.model.embed_dim, s.hidden_size, s.encoder_layers,
                               cfg.model.embed_dropout, cfg.model.dropout, cfg.model.embed_init_std)
        self.decoder = Decoder(cfg, num_labels, 2 * s.hidden_size)

    @property
    def max_set_size(self) -> int:
        """The most labels one decoding emits (sgm.max_decode_len)."""
        return self.decoder.max_decode_len

    @property
    def zero3_leaf_modules(self) -> list[type[nn.Module]]:
        """Modules ZeRO-3 must gather whole: the decoder runs a data-dependent number of steps
        (deepspeed.utils.set_z3_leaf_modules), which per-submodule gathers would desynchronise."""
        return [Decoder]

    def forward(self, input_ids, label_idx=None, label_offsets=None, lengths=None, topk: int = 0):
        """Training: the loss of the batch. With topk > 0: (probabilities [B, topk], label ids [B, topk])
        of the decoded sequence, in emission order, padded with 0 and -1.

        One forward for both so that ZeRO-3's parameter-gathering hooks run in evaluation too.
        """
        if lengths is None:
            lengths = (input_ids != 0).sum(dim=1).clamp(min=1)
        states, final = self.encoder(input_ids, lengths)
        return self.decoder(states, final, lengths, label_idx, label_offsets, topk)
