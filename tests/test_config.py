import json
import re

import pytest

from xmtc.config import CONFIG_DIR, ConfigError, apply_overrides, config_from_dict, load_config, parse_overrides

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert cfg.source.endswith(f"{name}.json")
    assert cfg.micro_batch_size >= 1


def test_required_configs_are_shipped():
    for name in ("xml_cnn_670k", "xml_cnn_reuters", "debug_xml_cnn", "kim_cnn_reuters"):
        assert name in SHIPPED


def test_bare_name_and_path_resolve_to_the_same(tmp_path):
    by_name = load_config("debug_xml_cnn")
    by_path = load_config(str(CONFIG_DIR / "debug_xml_cnn.json"))
    assert by_name.to_dict() == by_path.to_dict()


def test_overrides_are_typed_and_nested():
    cfg = load_config("debug_xml_cnn", ["--train.max_steps", "7", "--deepspeed.zero_optimization.stage", "2",
                                        "--data.path=/x y", "--model.dropout", "0", "--eval.ks", "[1,2]"])
    assert cfg.train.max_steps == 7
    assert cfg.deepspeed["zero_optimization"]["stage"] == 2
    assert cfg.data.path == "/x y"
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.eval.ks == [1, 2]
    # A string key keeps the text as typed, even when it reads as JSON.
    named = load_config("debug_xml_cnn", ["--train.output_dir", "2024", "--data.path", "true", "--train.max_steps", "3"])
    assert (named.train.output_dir, named.data.path, named.train.max_steps) == ("2024", "true", 3)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"max_step": 3}}, "config key 'train.max_step' is unknown"),
        ({"train": {"max_steps": "ten"}}, "config key 'train.max_steps' must be an integer, got 'ten'"),
        ({"train": {"resume": 1}}, "config key 'train.resume' must be true or false"),
        ({"model": {"name": "bert"}}, "config key 'model.name' is \"bert\"; allowed: \"xml_cnn\", \"sgm\""),
        ({"trainer": {}}, "config section 'trainer' is unknown"),
        ({"xml_cnn": {"filter_widths": [2, "4"]}}, "config key 'xml_cnn.filter_widths[1]' must be an integer"),
        ({"deepspeed": {"train_micro_batch_size_per_gpu": 0}}, "deepspeed.train_micro_batch_size_per_gpu' must be a positive integer"),
        ({"data": {"max_len": 4}, "xml_cnn": {"filter_widths": [2, 8]}}, "wider than the sequence it slides over (4)"),
        ({"model": {"embed_init_std": 0}}, "config key 'model.embed_init_std' must be positive, got 0"),
        ({"data": {"valid_fraction": 1.0}}, "config key 'data.valid_fraction' must be in [0, 1), got 1.0"),
        ({"train": {"select_metric": "f1"}}, "config key 'train.select_metric' is \"f1\"; allowed: \"\" (no selection) or one of P@1, P@3"),
        ({"train": {"select_metric": "P@10"}, "eval": {"ks": [1, 5]}}, "config key 'train.select_metric' is \"P@10\""),
        ({"train": {"log_every": 0}}, "config key 'train.log_every' must be at least 1, got 0"),
        ({"train": {"seed": -1}}, "config key 'train.seed' must be at least 0, got -1"),
        ({"data": {"valid_seed": -2}}, "config key 'data.valid_seed' must be at least 0, got -2"),
        ({"synthetic": {"seed": -3}}, "config key 'synthetic.seed' must be at least 0, got -3"),
        ({"train": {"max_steps": 0, "epochs": float("inf")}}, "config key 'train.epochs' must be a positive finite number, got inf"),
        ({"train": {"max_steps": 0, "epochs": float("nan")}}, "config key 'train.epochs' must be a positive finite number, got nan"),
        ({"train": {"max_steps": -2}}, "config key 'train.max_steps' must be at least 0 (0 = train.epochs decides), got -2"),
        ({"deepspeed": {"bf16": True}}, "config key 'deepspeed.bf16' is True; it must be an object, e.g. {\"enabled\": true}"),
        ({"deepspeed": {"zero_optimization": 2}}, "config key 'deepspeed.zero_optimization' is 2; it must be an object, e.g. {\"stage\": 2}"),
        ({"data": {"vocab_size": 2}}, "config key 'data.vocab_size' must be at least 3, got 2"),
        ({"eval": {"ks": [1, 3, 1]}}, "config key 'eval.ks' is [1, 3, 1], which repeats a k; list each k once"),
        ({"train": {"warmup_steps": -1}}, "config key 'train.warmup_steps' must be at least 0, got -1"),
        ({"train": {"eval_every": -5}}, "config key 'train.eval_every' must be at least 0, got -5"),
        ({"train": {"save_every": -5}}, "config key 'train.save_every' must be at least 0, got -5"),
        ({"train": {"lr": -1e-3}}, "config key 'train.lr' must be positive, got -0.001"),
        ({"train": {"min_lr_ratio": -0.5}}, "config key 'train.min_lr_ratio' must be in [0, 1], got -0.5"),
        ({"train": {"weight_decay": -0.1}}, "config key 'train.weight_decay' must be at least 0, got -0.1"),
        ({"train": {"betas": [0.9]}}, "config key 'train.betas' must be two numbers in [0, 1), e.g. [0.9, 0.999]; got [0.9]"),
        ({"deepspeed": {"train_batch_size": "abc"}}, "config key 'deepspeed.train_batch_size' must be a positive integer, got 'abc'"),
        ({"deepspeed": {"scheduler": {"type": "WarmupLR"}}}, "config key 'deepspeed.scheduler' is set without 'deepspeed.optimizer'"),
        ({"deepspeed": {"gradient_clipping": "abc"}}, "config key 'deepspeed.gradient_clipping' must be a number >= 0 (0 = off), got 'abc'"),
        ({"deepspeed": {"zero_optimization": {"stage": 5}}}, "config key 'deepspeed.zero_optimization.stage' must be 0, 1, 2 or 3, got 5"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert message in str(e.value)


def test_inconsistent_batch_size_names_the_numbers():
    cfg = config_from_dict({"deepspeed": {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
                                          "train_batch_size": 64}})
    cfg.check_batch(4)  # 8 x 2 x 4 = 64
    with pytest.raises(ConfigError, match=r"x data-parallel ranks \(2\) = 32; set it to 32"):
        cfg.check_batch(2)


def test_label_shards_must_divide_world_size():
    cfg = config_from_dict({"parallel": {"label_shards": 3}})
    with pytest.raises(ConfigError, match="does not divide the world size 4"):
        cfg.check_batch(4)


def test_override_numbers_json_does_not_write():
    assert parse_overrides(["--train.lr", ".001", "--train.epochs", "2.", "--train.seed", "+3", "--data.path", "nan"]) == {
        "train.lr": 0.001, "train.epochs": 2.0, "train.seed": 3, "data.path": "nan"}
    assert parse_overrides(["--model.name", "inf", "--train.select_metric", "P@1"]) == {"model.name": "inf", "train.select_metric": "P@1"}


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--train.max_steps"])
    with pytest.raises(ConfigError, match="not an override"):
        parse_overrides(["max_steps", "3"])
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        apply_overrides({}, {"trian.max_steps": 3})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a config"):
        load_config("no_such_config")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"max_steps": 3,}}')
    with pytest.raises(ConfigError, match=r"bad.json line 1 column \d+: invalid JSON"):
        load_config(str(bad))


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("xml_cnn_670k", ["--train.max_steps", "3"])
    cfg.save(tmp_path / "c.json")
    again = load_config(str(tmp_path / "c.json"))
    assert again.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "c.json").read_text())["train"]["max_steps"] == 3


def test_an_enabled_monitor_needs_its_package(monkeypatch):
    from xmtc import config_checks
    from xmtc.errors import ConfigError

    monkeypatch.setitem(config_checks.MONITOR_PACKAGES, "wandb", "xmtc_no_such_package")
    with pytest.raises(ConfigError, match=r"^config key 'deepspeed.wandb.enabled' is true but the xmtc_no_such_package package is not installed"):
        config_checks.check_monitor_packages({"wandb": {"enabled": True}})
    config_checks.check_monitor_packages({"wandb": {"enabled": False}, "csv_monitor": {"enabled": True}})
    config_checks.check_monitor_packages({"wandb": {"enabled": "false"}})  # DeepSpeed reads the string as False
    with pytest.raises(ConfigError):
        config_checks.check_monitor_packages({"wandb": {"enabled": "true"}})
    monkeypatch.setitem(config_checks.MONITOR_PACKAGES, "wandb", "numpy")  # installed: fine
    config_checks.check_monitor_packages({"wandb": {"enabled": True}})


@pytest.mark.parametrize("precision, blocks, device, expect", [
    ("auto", {}, "cuda", {"bf16": {"enabled": True}}),
    ("auto", {}, "cpu", {}),
    ("auto", {"bf16": {"enabled": False}}, "cuda", {"bf16": {"enabled": False}}),  # auto follows the section
    ("bf16", {"bf16": {"enabled": True, "immediate_grad_update": True}}, "cpu",
     {"bf16": {"enabled": True, "immediate_grad_update": True}}),  # the block's other keys are kept
    ("bf16", {"fp16": {"enabled": False}}, "cpu", {"bf16": {"enabled": True}, "fp16": {"enabled": False}}),
    ("fp32", {"bf16": {"enabled": False}}, "cuda", {"bf16": {"enabled": False}}),
    # `enabled` as DeepSpeed's pydantic models read it, passed on as a bool; "bfloat16" is the bf16 block's old name
    ("auto", {"bf16": {"enabled": "false"}}, "cuda", {"bf16": {"enabled": False}}),
    ("auto", {"bf16": {"enabled": "Yes"}}, "cpu", {"bf16": {"enabled": True}}),
    ("auto", {"bfloat16": {"enabled": 0}}, "cuda", {"bf16": {"enabled": False}}),
    ("auto", {"bfloat16": {"enabled": "on", "check_grad_overflow": True}}, "cpu",
     {"bf16": {"enabled": True, "check_grad_overflow": True}}),
    ("fp32", {"bf16": {"enabled": "off"}}, "cuda", {"bf16": {"enabled": False}}),
    ("bf16", {"bf16": {"enabled": False}}, "cuda", "'train.precision' is \"bf16\" but deepspeed.bf16.enabled is false; set one of them"),
    ("bf16", {"bf16": {"enabled": "false"}}, "cuda", "'train.precision' is \"bf16\" but deepspeed.bf16.enabled is false; set one of them"),
    ("bf16", {"bfloat16": {"enabled": "f"}}, "cuda", "'train.precision' is \"bf16\" but deepspeed.bfloat16.enabled is false; set one of them"),
    ("bf16", {"fp16": {"enabled": True}}, "cuda", "'train.precision' is \"bf16\" but deepspeed.fp16.enabled is true; set one of them"),
    ("fp32", {"bf16": {"enabled": True}}, "cpu", "'train.precision' is \"fp32\" but deepspeed.bf16.enabled is true; set one of them"),
    ("fp32", {"fp16": {"enabled": True}}, "cuda", "'train.precision' is \"fp32\" but deepspeed.fp16.enabled is true; set one of them"),
    ("fp32", {"fp16": {"enabled": "1"}}, "cuda", "'train.precision' is \"fp32\" but deepspeed.fp16.enabled is true; set one of them"),
    ("auto", {"bf16": {"enabled": True}, "fp16": {"enabled": "true"}}, "cuda",
     "'deepspeed.bf16.enabled' and 'deepspeed.fp16.enabled' are both true; DeepSpeed trains in one of them"),
    ("auto", {"bf16": {"enabled": "maybe"}}, "cuda", "'deepspeed.bf16.enabled' is \"maybe\"; DeepSpeed reads it as a boolean: give true or false"),
    ("auto", {"fp16": {"enabled": " true"}}, "cuda", "'deepspeed.fp16.enabled' is \" true\"; DeepSpeed reads it as a boolean"),
    ("auto", {"bf16": {"enabled": None}}, "cuda", "'deepspeed.bf16.enabled' is null; DeepSpeed reads it as a boolean"),
    ("auto", {"bf16": {"enabled": 2}}, "cuda", "'deepspeed.bf16.enabled' is 2; DeepSpeed reads it as a boolean"),
])
def test_train_precision_and_the_deepspeed_blocks_agree_or_are_refused(precision, blocks, device, expect):
    # Before, train.precision bf16 silently overrode a disabled bf16 block (and dropped its other keys), and turned bf16
    # on beside an enabled fp16 block; fp32 beside fp16 ran fp16. The string "false" read as true, the old block
    # name "bfloat16" was not looked at, and a clash was found only at trainer start-up (after the data was read),
    # not by load_config, so launch/slurm/check_config.py let the job queue.
    from xmtc.trainer import resolve_deepspeed_config

    overrides = ["--train.precision", precision, *[a for k, v in blocks.items() for a in (f"--deepspeed.{k}", json.dumps(v))]]
    if isinstance(expect, str):
        with pytest.raises(ConfigError, match="^config keys? " + re.escape(expect)) as e:
            load_config("debug_xml_cnn", overrides)
        assert "\n" not in str(e.value)
    else:
        ds = resolve_deepspeed_config(load_config("debug_xml_cnn", overrides), 1, device)
        assert {k: ds[k] for k in ("bf16", "bfloat16", "fp16") if k in ds} == expect
        if expect.get("bf16"):  # and DeepSpeed's own config model reads the resolved block alike
            from deepspeed.runtime.precision_config import get_bfloat16_config

            assert get_bfloat16_config(ds).enabled is expect["bf16"]["enabled"]


@pytest.mark.parametrize("ds_config, bf16", [
    ({"bf16": {"enabled": True}}, True), ({"bf16": {"enabled": "false"}}, False), ({"bfloat16": {"enabled": "yes"}}, True),
    ({"bf16": {"enabled": "maybe"}}, False), ({"fp16": {"enabled": True}}, False), ({}, False), (None, False),
])
def test_a_checkpoint_reads_its_bf16_block_as_deepspeed_read_it(ds_config, bf16):
    # The weights' dtype of a saved run follows its ds_config as DeepSpeed read it: the string "false" of a run
    # started before the precision blocks were checked is false (bool() made it true and evaluated in bf16).
    from xmtc.checkpoint import trained_in_bf16

    assert trained_in_bf16({"ds_config": ds_config}) is bf16
