"""SGM on one process: targets, masked softmax, global embedding, loss, decoding, overfitting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from sgm_helpers import csr, tiny_config, tiny_model, token_batch

from xmtc.config import ConfigError
from xmtc.models import build_model
from xmtc.models.sgm import LabelHead, target_sequences
from xmtc.models.sgm_decoding import beam_search, greedy_decode

EOS = 12  # tiny_model has 12 labels, so end-of-sequence is output 12


def test_targets_are_sorted_by_frequency_then_end_of_sequence(label_rows):
    idx, offsets = csr(label_rows[:3])  # [4], [6, 2], [8, 3, 5]
    labels, targets, valid = target_sequences(idx, offsets, sort_labels=True, eos_id=EOS)
    # Label ids are ranked by training frequency, so ascending ids = most frequent first.
    assert labels.tolist() == [[4, -1, -1], [2, 6, -1], [3, 5, 8]]
    assert targets.tolist() == [[4, EOS, EOS, EOS], [2, 6, EOS, EOS], [3, 5, 8, EOS]]
    assert valid.tolist() == [[True, True, False, False], [True, True, True, False], [True] * 4]
    labels, targets, _ = target_sequences(idx, offsets, sort_labels=False, eos_id=EOS)
    assert labels.tolist() == [[4, -1, -1], [6, 2, -1], [8, 3, 5]]
    assert targets[2].tolist() == [8, 3, 5, EOS]


def test_masked_softmax_gives_emitted_labels_exactly_zero_probability():
    torch.manual_seed(0)
    head = LabelHead(8, 11, 4)  # 10 labels + EOS (id 10)
    feats = torch.randn(3, 8)
    emitted = torch.tensor([[-1, 3, 7], [-1, -1, -1], [-1, 0, 9]])
    out = head.step(feats, emitted, want_e_bar=True, k=11)
    probs = torch.zeros(3, 11).scatter_(1, out.top_ids, out.top_logp.exp())
    assert probs[0, 3].item() == 0.0 and probs[0, 7].item() == 0.0
    assert probs[2, 0].item() == 0.0 and probs[2, 9].item() == 0.0
    assert (probs[1] > 0).all()
    mask = torch.zeros(3, 11, dtype=torch.bool)
    mask[0, [3, 7]] = mask[2, [0, 9]] = True
    reference = torch.softmax(F.linear(feats, head.weight, head.bias).masked_fill(mask, -math.inf), dim=1)
    torch.testing.assert_close(probs, reference)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(out.e_bar, reference @ head.embedding)
    target = torch.tensor([10, 5, 4])
    logp = head.step(feats, emitted, target=target).target_logp
    torch.testing.assert_close(logp, reference.log()[torch.arange(3), target])


def test_end_of_sequence_is_never_masked():
    torch.manual_seed(0)
    head = LabelHead(8, 11, 4)
    everything = torch.arange(10)[None, :].expand(2, -1)  # all 10 labels emitted
    out = head.step(torch.randn(2, 8), everything, k=1)
    assert out.top_ids[:, 0].tolist() == [10, 10]
    torch.testing.assert_close(out.top_logp, torch.zeros(2, 1))


def test_cross_entropy_gradient_matches_plain_log_softmax():
    torch.manual_seed(0)
    head = LabelHead(8, 11, 4)
    feats = torch.randn(4, 8, requires_grad=True)
    emitted = torch.tensor([[-1, 2], [-1, -1], [-1, 5], [-1, 1]])
    target = torch.tensor([3, 10, 0, 9])
    out = head.step(feats, emitted, target=target, want_e_bar=True)
    (out.target_logp.sum() + out.e_bar.square().sum()).backward()
    mine = [t.grad.clone() for t in (feats, head.weight, head.embedding)]
    for t in (feats, head.weight, head.embedding):
        t.grad = None
    mask = torch.zeros(4, 11, dtype=torch.bool)
    mask[[0, 2, 3], [2, 5, 1]] = True
    z = F.linear(feats, head.weight, head.bias).masked_fill(mask, -math.inf)
    ref_logp = torch.log_softmax(z, 1)[torch.arange(4), target]
    ref_e_bar = torch.softmax(z, 1) @ head.embedding
    (ref_logp.sum() + ref_e_bar.square().sum()).backward()
    for got, want in zip(mine, (feats.grad, head.weight.grad, head.embedding.grad)):
        torch.testing.assert_close(got, want)


def test_global_embedding_gate_matches_hand_computation():
    _, model = tiny_model(4, 10, "--sgm.label_embed_dim", "2")
    dec = model.decoder
    with torch.no_grad():
        dec.gate_label.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # W1
        dec.gate_global.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # W2
    e, e_bar = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 0.5]])
    # W1 e + W2 e_bar = [1.5, -0.5]; H = [sigmoid(1.5), sigmoid(-0.5)] = [0.8175745, 0.3775407]
    # g = (1 - H) e + H e_bar = [0.1824255 + 0.4087872, -0.6224593 + 0.1887703]
    torch.testing.assert_close(dec.global_embedding(e, e_bar), torch.tensor([[0.5912128, -0.4336890]]))
    dec.mode, dec.fixed_lambda = "fixed", 0.25
    torch.testing.assert_close(dec.global_embedding(e, e_bar), torch.tensor([[0.875, -0.625]]))
    dec.mode = "none"
    torch.testing.assert_close(dec.global_embedding(e, e_bar), e)


@pytest.mark.parametrize("mode", ["adaptive", "fixed", "none"])
def test_loss_is_the_mean_over_documents_of_the_summed_step_cross_entropy(label_rows, mode):
    """Against a step-by-step recomputation: masked log-softmax, gold prefix, g(y) input, EOS last."""
    cfg, model = tiny_model(12, 40, "--sgm.global_embedding", mode, "--sgm.global_lambda", "0.3")
    ids, lengths = token_batch(len(label_rows), 10, 40)
    idx, offsets = csr(label_rows)
    dec, head = model.decoder, model.decoder.label_head
    per_doc = []
    for b, row in enumerate(label_rows):
        states, final = model.encoder(ids[b : b + 1], lengths[b : b + 1])
        memory, state = dec.memory(states, lengths[b : b + 1]), dec.initial_state(final)
        x, total, emitted = dec.bos[None], 0.0, []
        for target in sorted(row) + [EOS]:
            readout, state = dec.step(x, state, memory)
            z = F.linear(readout, head.weight, head.bias)[0].clone()
            z[emitted] = -math.inf
            total = total - torch.log_softmax(z, 0)[target]
            e, e_bar = head.embedding[target], torch.softmax(z, 0) @ head.embedding
            if mode == "adaptive":
                gate = torch.sigmoid(dec.gate_label.weight @ e + dec.gate_global.weight @ e_bar)
                x = ((1 - gate) * e + gate * e_bar)[None]
            else:
                x = ((0.7 * e + 0.3 * e_bar) if mode == "fixed" else e)[None]
            emitted.append(target)
        per_doc.append(total)
        torch.testing.assert_close(model(ids[b : b + 1], *csr([row]), lengths[b : b + 1]), total)
    torch.testing.assert_close(model(ids, idx, offsets, lengths), torch.stack(per_doc).mean())


def decode_both(model, ids, lengths, beam):
    with torch.no_grad():
        dec = model.decoder
        states, final = model.encoder(ids, lengths)
        memory, state = dec.memory(states, lengths), dec.initial_state(final)
        greedy = greedy_decode(dec, memory, state, 1, dec.max_decode_len)
        beamed = beam_search(dec, memory, state, beam, dec.max_decode_len)
    return greedy, beamed


@pytest.fixture(scope="module")
def trained():
    """A tiny SGM fitted to 8 documents (60 Adam steps), and its data."""
    cfg, model = tiny_model(12, 40, "--sgm.max_decode_len", "6")
    rows = [[4], [6, 2], [8, 3, 5], [9], [9, 6], [7, 5, 6, 0], [4], [10, 4]]
    ids, lengths = token_batch(len(rows), 12, 40, seed=1)
    idx, offsets = csr(rows)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(60):
        loss = model(ids, idx, offsets, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return model, rows, ids, lengths, losses


def test_tiny_sgm_overfits_and_decodes_its_targets(trained):
    model, rows, ids, lengths, losses = trained
    assert losses[0] > 5.0  # ~ (labels + 1) x log(13) = 6.7 per document at initialisation
    assert losses[-1] < 0.05
    with torch.no_grad():
        probs, decoded = model(ids, lengths=lengths, topk=5)
    assert decoded.shape == probs.shape == (8, 5)
    # Emitted in target order (most frequent first), padded with -1 and probability 0.
    assert [[x for x in r if x >= 0] for r in decoded.tolist()] == [sorted(r) for r in rows]
    assert ((probs > 0.9) == (decoded >= 0)).all() and (probs[decoded < 0] == 0).all()


@pytest.mark.parametrize("overrides", [[], ["--sgm.global_embedding", "none"], ["--sgm.mask", "false"]])
def test_beam_search_with_beam_one_equals_greedy(trained, overrides):
    model, _, ids, lengths, _ = trained
    if overrides:
        # Same weights, another decoding configuration.
        cfg = tiny_config("--sgm.max_decode_len", "6", *overrides)
        other = build_model(cfg, 12, 40)
        other.load_state_dict(model.state_dict(), strict=False)
        model = other.eval()
    (g_labels, g_probs), (b_labels, b_probs) = decode_both(model, ids, lengths, beam=1)
    assert torch.equal(g_labels, b_labels)
    torch.testing.assert_close(g_probs, b_probs)


def test_wide_beam_search_finds_the_most_likely_sequence():
    """3 labels: 16 possible sequences, at most 6 live prefixes, so a beam of 6 is an exact search."""
    _, model = tiny_model(3, 40, "--sgm.max_decode_len", "4", "--sgm.sort_labels", "false", seed=4)
    with torch.no_grad():
        model.decoder.label_head.bias[3] -= 1.0  # EOS later, so that the best sequences are not empty
    model.eval()
    ids, lengths = token_batch(6, 10, 40, seed=4)
    (greedy, _), (labels, probs) = decode_both(model, ids, lengths, beam=6)
    sequences = [list(p) for n in range(4) for s in itertools.combinations(range(3), n) for p in itertools.permutations(s)]
    assert len(sequences) == 16
    for b in range(6):
        with torch.no_grad():  # log p(sequence, EOS) = -(its teacher-forced loss)
            scores = [-model(ids[b : b + 1], *csr([seq]), lengths[b : b + 1]).item() for seq in sequences]
        best = max(range(16), key=scores.__getitem__)
        found = [x for x in labels[b].tolist() if x >= 0]
        assert found == sequences[best], (found, sequences[best], sorted(scores)[-3:])
        # The returned probabilities are the sequence's own; EOS after them carries the rest.
        assert probs[b, : len(found)].log().sum().item() >= scores[best] - 1e-5
    # Greedy misses the best sequence of some documents, so the search above did real work.
    assert not torch.equal(labels, greedy)


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_never_repeats_a_label_when_masking_is_on(beam):
    ids, lengths = token_batch(16, 10, 40, seed=4)
    decoded = {}
    for mask in ("true", "false"):
        _, model = tiny_model(12, 40, "--sgm.max_decode_len", "13", "--sgm.mask", mask, "--sgm.beam_size", str(beam), seed=5)
        model.eval()
        with torch.no_grad():
            decoded[mask] = model(ids, lengths=lengths, topk=13)[1]
    for row in decoded["true"].tolist():
        kept = [x for x in row if x >= 0]
        assert len(kept) == len(set(kept)) and all(0 <= x < 12 for x in kept)
    # The same weights without the mask do repeat labels, so the check above can fail.
    assert any(len([x for x in r if x >= 0]) > len({x for x in r if x >= 0}) for r in decoded["false"].tolist())


def test_decoded_output_is_padded_to_topk_and_marks_sets():
    _, model = tiny_model(12, 40, "--sgm.max_decode_len", "3")
    model.eval()
    ids, lengths = token_batch(5, 10, 40)
    with torch.no_grad():
        probs, labels = model(ids, lengths=lengths, topk=7)
    assert type(model).predicts_sets is True
    assert labels.shape == (5, 7) and labels.dtype == torch.long and probs.dtype == torch.float32
    assert (labels[:, 3:] == -1).all() and (probs[:, 3:] == 0).all()
    assert ((probs[labels >= 0] > 0) & (probs[labels >= 0] <= 1)).all()
    with torch.no_grad():
        _, two = model(ids, lengths=lengths, topk=2)
    assert torch.equal(two, labels[:, :2])


@pytest.mark.parametrize("key, value, message", [
    ("sgm.global_lambda", "1.5", "config key 'sgm.global_lambda' must be in \\[0, 1\\]"),
    ("sgm.beam_size", "0", "config key 'sgm.beam_size' must be at least 1"),
])
def test_bad_sgm_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_model(12, 40, f"--{key}", value)


@pytest.mark.parametrize("name, labels, vocab, embed, label_embed, decoder_layers, beam", [
    ("sgm_rcv1", 103, 50_000, 512, 512, 2, 5),  # paper: embeddings 512, encoder 2 x 256, decoder 2 x 512, beam 5
    ("sgm_aapd", 54, 30_000, 256, 256, 1, 9),  # paper: embeddings 256, encoder 2 x 256, decoder 1 x 512, beam 9
])
def test_paper_configs_build_the_papers_sizes(name, labels, vocab, embed, label_embed, decoder_layers, beam):
    from xmtc.config import load_config

    cfg = load_config(name)
    with torch.device("meta"):
        model = build_model(cfg, labels, vocab)
    enc, dec = model.encoder, model.decoder
    assert enc.embedding.weight.shape == (vocab, embed)
    assert len(enc.forward_lstms) == len(enc.backward_lstms) == 2
    assert enc.forward_lstms[0].weight_hh_l0.shape == (4 * 256, 256) and enc.forward_lstms[1].input_size == 512
    assert len(dec.cells) == decoder_layers and dec.cells[0].hidden_size == 512
    assert dec.cells[0].input_size == label_embed + 512  # [g(y_{t-1}); c_{t-1}]
    assert dec.label_head.weight.shape == (labels + 1, 512) and dec.label_head.embedding.shape == (labels + 1, label_embed)
    assert dec.beam_size == beam and cfg.model.dropout == 0.5 and cfg.deepspeed["gradient_clipping"] == 10.0
    assert (cfg.train.lr, cfg.train.betas, cfg.data.max_len) == (0.001, [0.9, 0.999], 500)


def test_predict_prints_the_whole_emitted_set_whatever_k():
    import types

    from xmtc.predict import predict_lines

    _, model = tiny_model(12, 40, "--sgm.max_decode_len", "10", "--sgm.beam_size", "1", seed=4)
    model.eval()
    with torch.no_grad():
        model.decoder.label_head.bias[12] -= 3.0  # EOS late: sets longer than k
        ids, lengths = token_batch(3, 10, 40, seed=2)
        _, emitted = model(ids, lengths=lengths, topk=10)
    sizes = (emitted >= 0).sum(dim=1).tolist()
    assert max(sizes) > 3
    tokenizer = types.SimpleNamespace(encode_batch=lambda texts: [[int(w) for w in t.split()] for t in texts], vocab_size=40)
    corpus = types.SimpleNamespace(tokenizer=tokenizer, label_names=[f"L{i}" for i in range(12)])
    texts = [" ".join(str(x) for x in row[:n].tolist()) for row, n in zip(ids, lengths.tolist())]
    lines = predict_lines(model, corpus, texts, k=3, max_len=10)
    assert [[pair.split(":")[0] for pair in line.split()] for line in lines] == [
        [f"L{i}" for i in row if i >= 0] for row in emitted.tolist()]


def test_unmasked_decoding_is_scored_on_its_whole_emitted_set():
    # Without the mask SGM repeats labels; with fewer labels (3) than decoding steps (8) the evaluation depth
    # min(max k, max_predictions, labels) = 3 cut the emitted sequence, and a label first emitted at step 4+
    # fell out of the predicted set. The set metrics must see every emitted label.
    import datasets
    import numpy as np

    from xmtc.evaluation import evaluate
    from xmtc.metrics import MetricSums, propensity

    cfg, model = tiny_model(3, 40, "--sgm.mask", "false", "--sgm.max_decode_len", "8", "--sgm.beam_size", "1", seed=1)
    model.eval()
    ids, lengths = token_batch(16, 10, 40, seed=1)
    with torch.no_grad():
        _, emitted = model(ids, lengths=lengths, topk=8)
    emitted = emitted.numpy()
    late = [row for row in emitted if {x for x in row[3:] if x >= 0} - set(row[:3])]
    assert late, "no document emits a new label after step 3: the case under test does not occur"
    true = [[0], [1, 2], [2], [0, 1]] * 4
    rows = {"input_ids": [r[: int(n)].tolist() for r, n in zip(ids, lengths)], "labels": true}
    counts = np.array([5, 4, 3])
    got = evaluate(model, datasets.Dataset.from_dict(rows), cfg, 0, 1, torch.device("cpu"), counts, 16)
    sums = MetricSums(tuple(cfg.eval.ks), 3)
    offsets = np.cumsum([0] + [len(t) for t in true])
    sums.add(emitted, emitted >= 0, np.array([x for t in true for x in t]), offsets,
             1.0 / propensity(counts, 16, cfg.eval.psp_a, cfg.eval.psp_b))
    want = sums.result()
    for key in ("micro_precision", "micro_recall", "micro_f1", "hamming_loss", "P@1", "P@3"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("labels, lengths, message", [
    (None, None, "needs label_idx and label_offsets"),
    ([[4], [12], [1]], None, "label id 12, outside this SGM's 12 labels"),  # 12 is end-of-sequence, not a label
    ([[4], [-1], [1]], None, "label id -1, outside this SGM's 12 labels"),
    ([[4], [3, 7, 3], [1]], None, "document 1 of the batch lists label 3 twice"),
    ([[4], [3]], None, "label_offsets must hold 4 offsets for 3 documents"),
    ([[4], [3], [1]], [10, 0, 4], "lengths must be in \\[1, 10\\]"),
    ([[4], [3], [1]], [10, 11, 4], "lengths must be in \\[1, 10\\]"),
])
def test_a_bad_training_batch_is_refused_in_one_sentence(labels, lengths, message):
    """A label id out of range, a repeated label or a zero length gave a finite (wrong) loss or NaN, silently."""
    _, model = tiny_model(12, 40)
    ids, _ = token_batch(3, 10, 40)
    lens = torch.tensor(lengths) if lengths else None
    with pytest.raises(ValueError, match=message):
        model(ids, lengths=lens) if labels is None else model(ids, *csr(labels), lens)


def test_an_empty_batch_is_refused_in_one_sentence():
    _, model = tiny_model(12, 40)
    model.eval()
    with pytest.raises(ValueError, match="input_ids holds no document"), torch.no_grad():
        model(torch.zeros(0, 10, dtype=torch.long), topk=3)
