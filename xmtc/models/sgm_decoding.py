"""Greedy and beam-search decoding for SGM, both honouring the mask of emitted labels.

Both functions take the `Decoder` of xmtc.models.sgm, the encoder memory and the initial decoder
state, and return (labels [B, max_len] in emission order padded with -1, probabilities [B, max_len]
padded with 0): the probability of each emitted label given the ones before it.

Documents that have finished leave every tensor, so a batch of mostly one-label documents costs
about two steps instead of max_len. Every decision is taken from values that are identical on
the ranks of a label-shard group (all-reduced), so those ranks stay in lockstep.

Beam search scores a hypothesis by the sum of its log-probabilities (no length normalisation,
as in the paper's code); a finished hypothesis (one that emitted EOS) is final for its document
once no live hypothesis scores higher, since log-probabilities only add negative terms.
"""

from __future__ import annotations

import torch

NO_LABEL = -1


@torch.no_grad()
def greedy_decode(decoder, memory, state, beam_size: int, max_len: int):
    """Emit the most probable label at each step until EOS or `max_len` labels (`beam_size` is unused)."""
    batch, device = memory.values.shape[0], memory.values.device
    labels = torch.full((batch, max_len), NO_LABEL, dtype=torch.long, device=device)
    probs = torch.zeros(batch, max_len, device=device)
    active = torch.arange(batch, device=device)  # original document of each row
    emitted = decoder.no_mask(batch, device)
    x = decoder.bos.expand(batch, -1)
    for t in range(max_len):
        readout, state = decoder.step(x, state, memory)
        prefix = emitted if decoder.mask else emitted[:, :1]
        out = decoder.label_head.step(readout, prefix, want_e_bar=decoder.uses_e_bar and t + 1 < max_len, k=1)
        choice, logp = out.top_ids[:, 0], out.top_logp[:, 0]
        going = choice != decoder.eos_id
        labels[active[going], t] = choice[going]
        probs[active[going], t] = logp[going].exp().float()
        if t + 1 == max_len or not bool(going.any()):
            break
        keep = going.nonzero().squeeze(1)
        e_bar = out.e_bar
        if keep.numel() < active.numel():
            active, memory, state, emitted, choice = active[keep], memory.select(keep), state.select(keep), emitted[keep], choice[keep]
            e_bar = None if e_bar is None else e_bar[keep]
        emitted = torch.cat([emitted, choice[:, None]], dim=1)
        x = decoder.next_input(choice, e_bar)
    return labels, probs


@torch.no_grad()
def beam_search(decoder, memory, state, beam_size: int, max_len: int):
    """Keep the `beam_size` best label sequences per document; return the best finished one."""
    batch, device, beam = memory.values.shape[0], memory.values.device, beam_size
    eos, neg_inf = decoder.eos_id, float("-inf")
    out_labels = torch.full((batch, max_len), NO_LABEL, dtype=torch.long, device=device)
    out_logp = torch.full((batch, max_len), neg_inf, device=device)
    active = torch.arange(batch, device=device)
    state = state.select(torch.arange(batch, device=device).repeat_interleave(beam))  # row = document * beam + hypothesis
    # One live hypothesis at first, so the beam does not fill with copies of the same prefix.
    score = torch.full((batch, beam), neg_inf, device=device)
    score[:, 0] = 0.0
    hyp_labels = torch.full((batch, beam, max_len), NO_LABEL, dtype=torch.long, device=device)
    hyp_logp = torch.full((batch, beam, max_len), neg_inf, device=device)
    best_score = torch.full((batch,), neg_inf, device=device)
    best_labels = torch.full((batch, max_len), NO_LABEL, dtype=torch.long, device=device)
    best_logp = torch.full((batch, max_len), neg_inf, device=device)
    x = decoder.bos.expand(batch * beam, -1)
    for t in range(max_len):
        docs = active.numel()
        readout, state = decoder.step(x, state, memory)
        emitted = decoder.no_mask(docs * beam, device)
        if decoder.mask and t:
            emitted = torch.cat([emitted, hyp_labels[:, :, :t].reshape(docs * beam, t)], dim=1)
        out = decoder.label_head.step(readout, emitted, want_e_bar=decoder.uses_e_bar and t + 1 < max_len, k=beam)
        width = out.top_ids.shape[1]
        candidates = (score[:, :, None] + out.top_logp.view(docs, beam, width).float()).view(docs, beam * width)
        top, pos = candidates.topk(beam, dim=1)
        origin = torch.div(pos, width, rounding_mode="floor")
        chosen = out.top_ids.view(docs, beam * width).gather(1, pos)
        chosen_logp = out.top_logp.view(docs, beam * width).gather(1, pos).float()
        ended = (chosen == eos) & torch.isfinite(top)
        # The best candidate ending here is the first ended one (top is sorted).
        first = ended.int().argmax(dim=1, keepdim=True)
        end_score = torch.where(ended.any(dim=1), top.gather(1, first).squeeze(1), torch.full_like(best_score, neg_inf))
        better = end_score > best_score
        if bool(better.any()):
            src = origin.gather(1, first).squeeze(1)
            rows = better.nonzero().squeeze(1)
            best_score[rows] = end_score[rows]
            best_labels[rows] = hyp_labels[rows, src[rows]]
            best_logp[rows] = hyp_logp[rows, src[rows]]
        gather = origin[:, :, None].expand(-1, -1, max_len)
        hyp_labels = hyp_labels.gather(1, gather)
        hyp_logp = hyp_logp.gather(1, gather)
        hyp_labels[:, :, t] = torch.where(ended, torch.full_like(chosen, NO_LABEL), chosen)
        hyp_logp[:, :, t] = chosen_logp
        score = torch.where(ended, torch.full_like(top, neg_inf), top)
        live_best, live_at = score.max(dim=1)
        last = t + 1 == max_len
        if last:
            # Hypotheses still live at max_len end there without EOS.
            take = live_best > best_score
            rows = take.nonzero().squeeze(1)
            best_score[rows] = live_best[rows]
            best_labels[rows] = hyp_labels[rows, live_at[rows]]
            best_logp[rows] = hyp_logp[rows, live_at[rows]]
        done = torch.ones_like(best_score, dtype=torch.bool) if last else best_score >= live_best
        if bool(done.any()):
            out_labels[active[done]] = best_labels[done]
            out_logp[active[done]] = best_logp[done]
        if last or bool(done.all()):
            break
        rows = (torch.arange(docs, device=device)[:, None] * beam + origin).view(-1)
        e_bar = None if out.e_bar is None else out.e_bar.index_select(0, rows)
        state = state.select(rows)
        chosen = chosen.view(-1)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            keep_rows = (keep[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            active, memory = active[keep], memory.select(keep)
            score, hyp_labels, hyp_logp = score[keep], hyp_labels[keep], hyp_logp[keep]
            best_score, best_labels, best_logp = best_score[keep], best_labels[keep], best_logp[keep]
            state, chosen = state.select(keep_rows), chosen[keep_rows]
            e_bar = None if e_bar is None else e_bar[keep_rows]
        x = decoder.next_input(chosen, e_bar)
    probs = torch.where(out_labels >= 0, out_logp.exp(), torch.zeros_like(out_logp))
    return out_labels, probs
