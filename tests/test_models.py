"""XML-CNN shapes and the reference parameter budget of Amazon-670K, layer by layer."""

import pytest
import torch

from xmtc.config import load_config
from xmtc.models import build_model


def meta_model(name, *overrides):
    cfg = load_config(name, list(overrides))
    with torch.device("meta"):
        return cfg, build_model(cfg, cfg.synthetic.num_labels, cfg.data.vocab_size)


def test_xml_cnn_670k_matches_the_seed_budget():
    _, m = meta_model("xml_cnn_670k")
    assert m.embedding.weight.numel() == 30_000 * 300 == 9_000_000
    assert sum(c.weight.numel() for c in m.convs) == 500 * 32 * (2 + 4 + 8) == 224_000
    assert m.bottleneck.weight.numel() == (128 * 32 * 3) * 512 == 6_291_456
    assert m.output.weight.numel() == 512 * 670_091 == 343_086_592
    biases = sum(c.bias.numel() for c in m.convs) + m.bottleneck.bias.numel() + m.output.bias.numel()
    assert biases == 96 + 512 + 670_091
    total = sum(p.numel() for p in m.parameters())
    assert total == 359_272_747
    # The seed's 358.51M is 9M + 0.224M + 6.29M + 343M with the output layer rounded down; biases add 0.67M.
    assert total * 4 / 2**30 == pytest.approx(1.338, abs=0.001)


def test_kim_cnn_is_xml_cnn_with_global_pooling_and_no_bottleneck():
    cfg, m = meta_model("kim_cnn_reuters")
    assert m.bottleneck is None and m.chunks == 1
    assert m.output.in_features == cfg.xml_cnn.num_filters * len(cfg.xml_cnn.filter_widths)


@pytest.mark.parametrize("conv_over", ["sequence", "embedding"])
def test_forward_shapes_loss_and_topk(conv_over):
    cfg = load_config("debug_xml_cnn", ["--xml_cnn.conv_over", conv_over, "--model.embed_dim", "16"])
    torch.manual_seed(0)
    m = build_model(cfg, 50, 100)
    ids = torch.randint(1, 100, (3, cfg.data.max_len))
    label_idx, offsets = torch.tensor([0, 5, 7, 49]), torch.tensor([0, 2, 3, 4])
    loss = m(ids, label_idx, offsets)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    with torch.no_grad():
        scores, idx = m(ids, topk=5)
        full = torch.sigmoid(m.output.logits(m.encode(ids)))
    assert idx.shape == (3, 5)
    torch.testing.assert_close(scores, full.topk(5).values)


@pytest.mark.parametrize("loss", ["fused", "materialized"])
@pytest.mark.parametrize("bad", [50, 73, -1])
def test_a_label_id_outside_the_labels_is_refused_not_dropped(loss, bad):
    # Both losses count only ids in [0, L) (a label shard counts its own): an id past the labels vanished from the
    # loss without a word (id 50 of 50 labels: the loss of the batch without it).
    cfg = load_config("debug_xml_cnn", ["--model.embed_dim", "16", "--xml_cnn.loss", loss])
    m = build_model(cfg, 50, 100)
    ids = torch.randint(1, 100, (2, cfg.data.max_len))
    assert torch.isfinite(m(ids, torch.tensor([0, 49, 7]), torch.tensor([0, 2, 3])))
    with pytest.raises(ValueError, match=rf"label_idx holds label id {bad}, outside this model's 50 labels \(ids 0..49\)"):
        m(ids, torch.tensor([0, bad, 7]), torch.tensor([0, 2, 3]))


@pytest.mark.parametrize("criterion", ["bce", "squared_hinge"])
def test_fused_and_materialized_losses_agree(criterion):
    cfg = load_config("debug_xml_cnn", ["--model.dropout", "0", "--xml_cnn.loss_chunk_size", "7", "--xml_cnn.criterion", criterion])
    torch.manual_seed(0)
    fused = build_model(cfg, 50, 100)
    cfg_m = load_config("debug_xml_cnn", ["--model.dropout", "0", "--xml_cnn.loss", "materialized", "--xml_cnn.criterion", criterion])
    plain = build_model(cfg_m, 50, 100)
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(1, 100, (4, cfg.data.max_len))
    label_idx, offsets = torch.tensor([0, 5, 7, 49, 1]), torch.tensor([0, 2, 3, 3, 5])
    a, b = fused(ids, label_idx, offsets), plain(ids, label_idx, offsets)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(fused.output.weight.grad, plain.output.weight.grad)
    torch.testing.assert_close(fused.embedding.weight.grad, plain.embedding.weight.grad)


@pytest.mark.parametrize("name", ["debug_xml_cnn", "debug_sgm"])
def test_embed_init_std_scales_the_word_vectors_and_keeps_padding_zero(name):
    def embedding(*overrides):
        cfg = load_config(name, ["--model.embed_dim", "64", *overrides])
        torch.manual_seed(0)
        m = build_model(cfg, 20, 2000)
        return (m.embedding if hasattr(m, "embedding") else m.encoder.embedding).weight.detach()

    default, small = embedding(), embedding("--model.embed_init_std", "0.1")
    torch.manual_seed(0)
    assert torch.equal(default, torch.nn.Embedding(2000, 64, padding_idx=0).weight.detach())  # 1.0 = torch's init
    assert small[1:].std().item() == pytest.approx(0.1, rel=0.02)
    assert default[1:].std().item() == pytest.approx(1.0, rel=0.02)
    assert not small[0].any() and not default[0].any()
