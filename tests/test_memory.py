"""The memory planner: parameter tables, per-rank bytes under ZeRO, measurement, fitting, the CLI."""

import json
import sys

import pytest
import torch

from xmtc.config import CONFIG_DIR, ConfigError, load_config
from xmtc.memory import Layout, layer_rows, model_shape, predict
from xmtc.memory.__main__ import main
from xmtc.memory.params import seed_explanation, seed_total
from xmtc.memory.plan import fitting_layouts
from xmtc.memory.states import Param, zero12_layout
from xmtc.memory.tracker import LiveTensorTracker

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
P_670K = 359_272_747


@pytest.fixture(scope="module")
def shape_670k():
    return model_shape(load_config("xml_cnn_670k"))


@pytest.mark.parametrize("name", SHIPPED)
def test_parameter_table_of_every_shipped_config_sums_to_the_model(name):
    cfg = load_config(name)
    shape = model_shape(cfg)
    rows = layer_rows(shape.model, cfg.model.name)
    total = sum(p.numel() for p in shape.model.parameters())
    assert sum(r.total for r in rows) == total
    assert all(r.total > 0 for r in rows)
    assert predict(shape, Layout(1, 0, 1, "fp32", 2)).params_per_rank == total
    if total < 20_000_000:  # small enough to build for real: the meta model has the real model's counts
        from xmtc.models import build_model

        real = build_model(cfg, cfg.synthetic.num_labels, cfg.data.vocab_size)
        assert sum(p.numel() for p in real.parameters()) == total


def test_670k_table_matches_the_seed_budget(shape_670k):
    rows = {r.name: r for r in layer_rows(shape_670k.model, "xml_cnn")}
    assert (rows["embedding"].weights, rows["embedding"].seed_count) == (9_000_000, 9_000_000)
    assert (rows["conv"].weights, rows["conv"].biases, rows["conv"].seed_count) == (224_000, 96, 224_000)
    assert (rows["bottleneck"].weights, rows["bottleneck"].seed_count) == (6_291_456, 6_290_000)
    assert (rows["output"].weights, rows["output"].biases, rows["output"].seed_count) == (343_086_592, 670_091, 343_000_000)
    assert rows["output"].seed_formula == "512 x 670091"
    assert seed_total(list(rows.values())) == 358_510_000
    # 359,272,747 - 358,510,000 = 762,747 = 88,048 of rounding the layers (86,592 + 1,456)
    # + 4,000 of rounding their sum 358,514,000 to 358.51M + 670,699 biases.
    why = seed_explanation(list(rows.values()))
    assert "762,747" in why and "88,048" in why and "by 4,000 more (358,514,000 written 358.51M)" in why and "670,699" in why


SGM_PINNED = ["--synthetic.num_labels", "50", "--data.vocab_size", "3000", "--model.embed_dim", "32",
              "--sgm.hidden_size", "32", "--sgm.encoder_layers", "1", "--sgm.decoder_layers", "1",
              "--sgm.label_embed_dim", "32", "--sgm.attention", "bahdanau", "--sgm.global_embedding", "adaptive"]


def test_sgm_table_by_hand():
    shape = model_shape(load_config("debug_sgm", SGM_PINNED))
    rows = {r.name: r for r in layer_rows(shape.model, "sgm")}
    # vocab 3000 x embed 32; BiLSTM 32 -> 32: per direction 4H(in + H) weights + 8H biases.
    assert rows["embedding"].total == 96_000
    assert (rows["encoder LSTM"].weights, rows["encoder LSTM"].biases) == (2 * 128 * 64, 2 * 256)
    # Decoder cell: input label dim 32 + context 64, hidden 64 (= 2 x 32); plus the BOS vector (32).
    assert (rows["decoder LSTM"].weights, rows["decoder LSTM"].biases) == (256 * 96 + 256 * 64 + 32, 512)
    # 50 labels + end-of-sequence = 51 outputs: projection 51 x 64 + 51, embeddings 51 x 32.
    assert (rows["output projection"].weights, rows["output projection"].biases) == (51 * 64, 51)
    assert rows["label embeddings"].total == 51 * 32
    assert sum(r.total for r in rows.values()) == 177_971


def test_zero2_on_4_ranks_670k_bytes_by_hand(shape_670k):
    p = predict(shape_670k, Layout(4, 2, 1, "bf16", 128, "cuda"))
    got = {(i.phase, i.what): i.nbytes for i in p.items}
    # Groups: decay = conv weights 224,000 + bottleneck 6,291,456 + output 343,086,592 = 349,602,048
    # (a multiple of 2 x 4, partition 87,400,512); rest = embedding 9,000,000 + biases 670,699
    # = 9,670,699, padded to 9,670,704 (partition 2,417,676).
    assert got[("persistent", "flat weights")] == 2 * (349_602_048 + 9_670_704) == 718_545_504
    assert got[("persistent", "fp32 master partition")] == 4 * (87_400_512 + 2_417_676) == 359_272_752
    assert got[("persistent", "optimizer moments (partition)")] == 8 * 89_818_188 == 718_545_504
    # Rank 0 owns the first quarter of each group: the output layer starts there, so it keeps the
    # whole decay group's gradient (349,602,048) plus the embedding's (9,000,000), in bf16.
    assert got[("reduce", "grads_in_partition")] == 2 * 358_602_048 == 717_204_096
    assert got[("reduce", "reduce bucket")] == 2 * 500_000_000
    # The step's norm casts each gradient slice to fp64: the output layer's 87,400,512-element slice.
    assert got[("step:norm", "fp64 copy of the largest gradient slice (norm)")] == 8 * 87_400_512
    # Then the decay partition is cast to fp32 (its bf16 flat copy alive meanwhile); the fused Adam
    # (xmtc.optim) steps in place, without the sqrt temporary of the foreach one.
    assert got[("step:update", "fp32 gradient partition")] == 4 * 87_400_512
    assert got[("step:update", "optimizer step scratch")] == 2 * 87_400_512
    # DeepSpeed's estimate: 2P + int(18P / 4) = 718,545,494 + 1,616,727,361.
    assert p.deepspeed_estimate["per_gpu"] == 2_335_272_855


def test_zero12_partitions_keep_whole_gradients_of_overlapping_parameters():
    params = [Param("a", 10, 2, "m"), Param("b", 100, 2, "m"), Param("c", 6, 2, "m")]
    flats, parts, overlap = zero12_layout([params], 4)
    # 116 elements padded to a multiple of 8 = 120, partitions of 30. a = [0, 10), b = [10, 110),
    # c = [110, 116): rank 0 keeps a and b whole (110), ranks 1-2 keep b (100), rank 3 b and c (106).
    assert (flats, parts) == ([120], [30])
    assert overlap == 10 + 100


def test_zero12_overlap_does_not_walk_every_rank():
    # The worst rank's overlap, against rank-by-rank counting on small cases; a billion ranks took a list of
    # a billion counters (8 GB, or the machine's memory) before.
    import random

    rng = random.Random(0)
    for _ in range(200):
        groups = [[Param(f"p{g}{i}", rng.choice([0, 1, 3, 7, 40, 100]), 2, "m") for i in range(rng.randint(1, 6))]
                  for g in range(rng.randint(1, 2))]
        dp = rng.randint(1, 12)
        _, parts, overlap = zero12_layout(groups, dp)
        per_rank = [0] * dp
        for group, part in zip(groups, parts):
            start = 0
            for p in group:
                for r in range(dp):
                    if p.numel and start < (r + 1) * part and r * part < start + p.numel:
                        per_rank[r] += p.numel
                start += p.numel
        assert overlap == max(per_rank), (groups, dp)
    import tracemalloc

    tracemalloc.start()
    try:
        assert zero12_layout([[Param("w", 10**9, 2, "m"), Param("b", 5, 1, "m")]], 10**7)[2] == 10**9 + 5
        assert tracemalloc.get_traced_memory()[1] < 2**20  # was 80 MB of counters for 10 million ranks
    finally:
        tracemalloc.stop()


def test_label_shards_split_the_output_layer(shape_670k):
    p = predict(shape_670k, Layout(8, 1, 4, "bf16", 128, "cuda"))
    rows = -(-670_091 // 4)  # 167,523 labels on shard 0
    assert p.params_per_rank == 9_000_000 + 224_096 + 6_291_968 + rows * 513
    act = {i.what: i.nbytes for i in p.items if i.phase == "forward:loss"}
    # The fused loss scores the shard group's 4 x 128 rows: feature gradient 4 x 512 x 512 bytes.
    assert act["fused loss: feature gradient"] == 4 * 512 * 512


def test_fused_loss_never_holds_batch_by_labels_and_materialized_does(shape_670k):
    g_by_l = 4 * 128 * 670_091
    fused = predict(shape_670k, Layout(1, 0, 1, "fp32", 128, "cuda"))
    assert max(i.nbytes for i in fused.items if i.component == "activations") < g_by_l
    cfg = load_config("xml_cnn_670k", ["--xml_cnn.loss", "materialized"])
    mat = predict(model_shape(cfg), Layout(1, 0, 1, "fp32", 128, "cuda"))
    logits = [i for i in mat.items if i.what.startswith("materialized logits")]
    assert logits[0].nbytes == 5 * g_by_l  # logits, targets and three of BCE's temporaries


def test_bad_layouts_are_user_errors(shape_670k):
    for layout in (Layout(1, 4, 1, "fp32", 8), Layout(4, 3, 2, "fp32", 8), Layout(6, 0, 4, "fp32", 8),
                   Layout(1, 0, 1, "fp16", 8)):
        with pytest.raises(ConfigError):
            predict(shape_670k, layout)


def test_fitting_search_returns_the_fewest_ranks(shape_670k):
    limit = 4 * 2**30
    base = Layout(1, 0, 1, "bf16", 128, "cuda")
    fits = fitting_layouts(shape_670k, base, limit)
    assert fits and all(p.peak <= limit for p in fits)
    n = fits[0].layout.world_size
    assert n == 2 and (fits[0].layout.zero_stage, fits[0].layout.label_shards) == (0, 2)
    # Nothing on 1 rank fits: every accepted layout there was tried.
    for stage in range(4):
        assert predict(shape_670k, Layout(1, stage, 1, "bf16", 128, "cuda")).peak > limit
    # And of the 2-rank layouts, the unsharded ones do not.
    for stage in range(4):
        assert predict(shape_670k, Layout(2, stage, 1, "bf16", 128, "cuda")).peak > limit


def test_cli_reports_what_does_not_fit(capsys):
    status = main(["--config", "xml_cnn_670k", "--dtype", "bf16", "--batch", "128", "--max-memory-gb", "4"])
    out = capsys.readouterr().out
    assert status == 1
    assert "DOES NOT FIT" in out
    assert "smallest layout that fits: 2 ranks, ZeRO-0, 2 label shards, bf16, batch 128" in out


def test_cli_fit_search_starts_at_one_rank(tmp_path, capsys):
    # Asked about 8 ranks at ZeRO-1 (2.94 GiB): the answer to "what fits 2.5 GiB" is 4 ranks with 4 label
    # shards, not the 8-rank layouts the search used to start from; the JSON says so whether or not all fit.
    status = main(["--config", "xml_cnn_670k", "--world-size", "8", "--zero-stage", "1", "--dtype", "bf16", "--batch", "128",
                   "--max-memory-gb", "2.5", "--json", str(tmp_path / "a.json")])
    assert status == 1 and "smallest layout that fits: 4 ranks, ZeRO-0, 4 label shards, bf16, batch 128" in capsys.readouterr().out
    fit = json.loads((tmp_path / "a.json").read_text())["fit"]
    assert fit["fits"] == [False] and fit["smallest_fit"]["layout"]["world_size"] == 4
    assert main(["--config", "xml_cnn_670k", "--world-size", "1,2", "--dtype", "bf16", "--max-memory-gb", "100",
                 "--json", str(tmp_path / "b.json")]) == 0
    fit = json.loads((tmp_path / "b.json").read_text())["fit"]
    assert fit["fits"] == [True, True] and fit["smallest_fit"]["layout"] == {
        "world_size": 1, "zero_stage": 0, "label_shards": 1, "dtype": "bf16", "micro_batch": 128, "device": "cuda"}


@pytest.mark.parametrize("overrides, dtype", [([], "bf16"), (["--train.precision", "fp32"], "fp32"),
                                              (["--deepspeed.bf16", '{"enabled": false}'], "fp32"),
                                              (["--deepspeed.bf16", '{"enabled": true}', "--train.precision", "auto"], "bf16"),
                                              (["--deepspeed.bf16", '{"enabled": true}', "--train.precision", "bf16"], "bf16"),
                                              (["--deepspeed.fp16", '{"enabled": false}', "--train.precision", "bf16"], "bf16")])
def test_cli_plans_the_dtype_the_trainer_runs(tmp_path, overrides, dtype):
    from xmtc.trainer import resolve_deepspeed_config

    assert main(["--config", "debug_xml_cnn", "--json", str(tmp_path / "m.json"), *overrides]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["layouts"][0]["layout"]["dtype"] == dtype
    ds = resolve_deepspeed_config(load_config("debug_xml_cnn", overrides), 1, "cuda")
    assert ("bf16" if ds.get("bf16", {}).get("enabled") else "fp32") == dtype  # what the run on a GPU would use


@pytest.mark.parametrize("dtype, advice", [("bf16", "; lower the batch, or set"), ("fp32", "; lower the batch, use bf16, or set")])
def test_cli_says_when_nothing_fits_with_levers_left(capsys, dtype, advice):
    # 0.001 GiB: not even the embedding table fits, on any number of ranks; bf16 is no advice for a bf16 plan.
    status = main(["--config", "xml_cnn_670k", "--dtype", dtype, "--batch", "128", "--max-memory-gb", "0.001"])
    out = capsys.readouterr().out
    assert status == 1 and f"nothing up to 1024 ranks fits 0.001 GiB at batch 128 in {dtype}{advice}" in out


@pytest.mark.parametrize("argv", [["--config", "xml_cnn_670k", "--zero-stage", "4"],
                                  ["--config", "no_such_config"],
                                  ["--config", "xml_cnn_670k", "--world-size", "two"],
                                  ["--config", "xml_cnn_670k", "--batch", "0"],
                                  ["--config", "xml_cnn_670k", "--label-shards", "0"],
                                  ["--config", "xml_cnn_670k", "--max-memory-gb", "nan"],
                                  ["--config", "xml_cnn_670k", "--max-memory-gb", "inf"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.fp16", '{"enabled": true}'],
                                  ["--config", "debug_xml_cnn", "--deepspeed.bf16", '{"enabled": true}', "--train.precision", "fp32"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.bf16", '{"enabled": false}', "--train.precision", "bf16"],
                                  ["--config", "debug_xml_cnn", "--measure", "--num-labels", "1000"],
                                  # DeepSpeed's element counts: whole numbers, the bucket at least 1 (a traceback or a
                                  # negative bucket before)
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.reduce_bucket_size", "abc"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.reduce_bucket_size", "-5"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.reduce_bucket_size", "0"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.reduce_bucket_size", "1.5"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.reduce_bucket_size", "Infinity"],
                                  ["--config", "debug_xml_cnn", "--zero-stage", "3", "--world-size", "2",
                                   "--deepspeed.zero_optimization.stage3_param_persistence_threshold", "abc"],
                                  ["--config", "debug_xml_cnn", "--deepspeed.zero_optimization.stage3_max_live_parameters", "-1"]])
def test_cli_bad_input_is_one_sentence_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_cli_writes_table_json_and_png(tmp_path, capsys):
    js, png = tmp_path / "m.json", tmp_path / "m.png"
    assert main(["--config", "xml_cnn_670k", "--world-size", "1,2,4,8", "--zero-stage", "2", "--dtype", "bf16",
                 "--json", str(js), "--plot", str(png)]) == 0
    doc = json.loads(js.read_text())
    assert doc["parameters"]["total"] == P_670K
    assert [d["layout"]["world_size"] for d in doc["layouts"]] == [1, 2, 4, 8]
    four = doc["layouts"][2]
    assert four["components"]["optimizer"] == 359_272_752 + 718_545_504
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "359,272,747" in capsys.readouterr().out


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_gradient_accumulation_counts_what_the_earlier_micro_batches_leave(shape_670k, stage):
    # 2 micro-batches per step: the second meets the first's gradients (docs/memory.md, measured). They were not
    # counted: measured forward peaks ran 21-39% above the one-micro-batch rows at ZeRO 0-2.
    import dataclasses

    layout = Layout(4, stage, 1, "bf16", 128, "cuda")
    one = predict(shape_670k, layout)
    cfg = dataclasses.replace(shape_670k.cfg, deepspeed={**shape_670k.cfg.deepspeed, "gradient_accumulation_steps": 2})
    two = predict(dataclasses.replace(shape_670k, cfg=cfg, params=[]), layout)
    added = {(i.phase, i.what): i.nbytes for i in two.items if i not in one.items}
    P, n_emb = P_670K, 30_000 * 300
    if stage in (0, 1):
        expected = {("forward", "gradients of the step's earlier micro-batches"): 2 * P,
                    ("backward:early", "input embedding's gradient (of the earlier micro-batches)"): 2 * n_emb}
        if stage == 1:
            expected[("forward", "reduce bucket (kept from the earlier micro-batches)")] = 2 * 500_000_000
    elif stage == 2:  # rank 0 keeps the whole decay group's gradient plus the embedding's (as in the test above)
        expected = {(phase, "grads_in_partition (of the earlier micro-batches)"): 2 * 358_602_048 for phase in ("forward", "backward")}
        expected[("reduce", "a grads_in_partition-sized buffer as the reduction adds this micro-batch in")] = 2 * 358_602_048
    else:  # ZeRO-3's gradient partitions are persistent anyway
        expected = {}
    assert added == expected
    assert two.phase_total("forward") - one.phase_total("forward") == sum(v for (ph, _), v in expected.items() if ph == "forward")


def test_cli_lists_skip_more_label_shards_than_labels(tmp_path):
    # 4 shards of 2 labels is impossible like 3 shards of 4 ranks: left out of a list, not the end of it.
    assert main(["--config", "debug_xml_cnn", "--num-labels", "2", "--world-size", "3,4", "--label-shards", "1,3,4",
                 "--json", str(tmp_path / "m.json")]) == 0
    layouts = [d["layout"] for d in json.loads((tmp_path / "m.json").read_text())["layouts"]]
    assert [(d["world_size"], d["label_shards"]) for d in layouts] == [(3, 1), (4, 1)]
    assert main(["--config", "debug_xml_cnn", "--num-labels", "2", "--world-size", "4", "--label-shards", "4"]) == 2


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_cli_unwritable_output_is_one_sentence_and_exit_2(tmp_path, capsys, flag):
    # A directory, or a path under a regular file: the OSError of the write was a traceback.
    (tmp_path / "file").write_text("x")
    for path in (tmp_path, tmp_path / "file" / "m.out"):
        assert main(["--config", "debug_xml_cnn", flag, str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag} {path} could not be written: ") and "\n" not in err
    assert (tmp_path / "file").read_text() == "x"


def test_sgm_without_its_module_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "xmtc.models.sgm", None)
    with pytest.raises(ConfigError, match="xmtc/models/sgm.py"):
        model_shape(load_config("debug_sgm"))


def test_tracker_counts_live_storages_and_the_peak():
    tracker = LiveTensorTracker()
    with tracker:
        tracker.phase = "forward"
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2  # 4,000 more
        c = b.view(10, 100)  # a view: no new storage
        del a, b
        d = torch.ones(250)  # after a is freed: 4,000 (c) + 1,000 live
    assert tracker.peaks["forward"] == 8_000
    assert tracker.current == 5_000
    assert tracker.peak_parts("forward")["activations"] == 8_000
    del c, d


@pytest.fixture(scope="module")
def measured_debug(tmp_path_factory):
    """Two real steps of debug_xml_cnn on this CPU (one process, gloo), ZeRO 0 and ZeRO 2."""
    from xmtc.memory.measure import measure

    cache = str(tmp_path_factory.mktemp("cache"))
    out = {}
    # A bucket of 2e5 elements instead of 5e8: the bucket stays a part, not the whole; "2-in-backward": a bucket
    # of 5e4, smaller than the model's 118,816 parameters, so that ZeRO-2 reduces inside the backward.
    # "accumulate-S": ZeRO-S with 2 micro-batches per step.
    for key, stage, bucket, accumulate in ((0, 0, 200_000, 1), (2, 2, 200_000, 1), ("2-in-backward", 2, 50_000, 1),
                                           ("accumulate-0", 0, 200_000, 2), ("accumulate-1", 1, 200_000, 2),
                                           ("accumulate-2", 2, 200_000, 2)):
        cfg = load_config("debug_xml_cnn", ["--data.cache_dir", cache, "--train.output_dir", cache,
                                            "--deepspeed.zero_optimization.stage", str(stage),
                                            "--deepspeed.zero_optimization.reduce_bucket_size", str(bucket),
                                            "--deepspeed.gradient_accumulation_steps", str(accumulate)])
        m = measure(cfg, steps=2)
        shape = model_shape(cfg, m.num_labels, m.vocab_size)
        out[key] = (m, predict(shape, Layout(1, stage, 1, "fp32", m.micro_batch, "cpu")))
    return out


@pytest.mark.parametrize("stage", [0, 2, "2-in-backward", "accumulate-0", "accumulate-1", "accumulate-2"])
def test_prediction_matches_measurement_on_cpu_within_10_percent(measured_debug, stage):
    m, p = measured_debug[stage]
    assert p.peak == pytest.approx(m.tracked_peak, rel=0.10)
    for phase in ("forward", "reduce", "step") + (("backward",) if stage in ("2-in-backward", "accumulate-1", "accumulate-2") else ()):
        assert p.phase_total(phase) == pytest.approx(m.phase_peaks[phase], rel=0.10), phase
    # Weights and optimizer state are what DeepSpeed allocated, byte for byte, but for a few scalar
    # tensors of torch's Adam (its `step` counters, 4 bytes each).
    predicted, got = p.parts("step"), m.phase_parts["step"]
    assert got["weights"] == predicted["weights"]
    assert 0 <= got["optimizer"] - predicted["optimizer"] <= 64
    # At the reduce peak DeepSpeed's bucket or all-reduce copy is a temporary, measured as one.
    predicted, got = p.parts("reduce"), m.phase_parts["reduce"]
    assert predicted["temporaries"] > 0 and got["temporaries"] == pytest.approx(predicted["temporaries"], rel=0.10)
    assert got["activations"] <= 0.05 * m.phase_peaks["reduce"]


def test_frames_are_attributed_by_real_package_directories(tmp_path):
    # A checkout named xmtc/ with its .venv inside (~/xmtc/.venv/lib/.../torch/_utils.py, DeepSpeed's flatten):
    # "/xmtc/" in the path made every torch and DeepSpeed frame the model's, so buckets were measured as activations.
    import os

    import sys

    import deepspeed.runtime.zero.stage_1_and_2 as stage2

    import xmtc.models.xml_cnn
    from xmtc.memory import tracker

    assert tracker._file_component(str(tmp_path / "xmtc" / ".venv" / "lib" / "site-packages" / "torch" / "_utils.py")) is None
    assert tracker._file_component(stage2.__file__) == "temporaries"
    assert tracker._file_component(sys.modules[torch.optim.Adam.__module__].__file__) == "temporaries"
    assert tracker._file_component(xmtc.models.xml_cnn.__file__) == "activations"
    assert tracker._file_component(tracker.__file__) is None  # the tracker's own frames decide nothing
    # The same files reached through a symlinked environment (a venv linked into a checkout).
    os.symlink(os.path.dirname(os.path.dirname(stage2.__file__)), tmp_path / "linked")
    assert tracker._file_component(str(tmp_path / "linked" / "zero" / "stage_1_and_2.py")) == "temporaries"
