import json
import re
from importlib.metadata import version

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
        ({"train": {"keep_checkpoints": -1}}, "config key 'train.keep_checkpoints' must be at least 0, got -1"),
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


# ------------------------------------------------------------------------------------------------------------
# Bad input that gave a traceback, or ran something other than asked, before it was refused when read.


@pytest.mark.parametrize("text, message", [
    ('{"train": {"max_steps": 3, "max_steps": 5}}', "config key 'train.max_steps' is given twice; JSON would keep only the last"),
    ('{"train": {"max_steps": 3}, "train": {"lr": 0.1}}', "config section 'train' is given twice"),
    ('{"deepspeed": {"zero_optimization": {"stage": 2, "stage": 0}}}', "config key 'deepspeed.zero_optimization.stage' is given twice"),
])
def test_a_key_given_twice_in_the_file_is_refused(tmp_path, text, message):
    # Before, json kept the last one silently: max_steps 5, the first train section dropped, ZeRO 0.
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(str(path))


@pytest.mark.parametrize("content, message", [
    ('{"data": {"path": "caf\xe9"}}'.encode("latin-1"), r"dup.json line 1: byte 0xe9 is not UTF-8; save the file as UTF-8"),
    ('{"train": {}}'.encode("utf-16"), r"dup.json line 1: byte 0xff is not UTF-8"),
    (b'{"train": {"max_steps": ' + b"9" * 5000 + b"}}", "holds an integer of over 4300 digits"),
    (b"[" * 100_000 + b"]" * 100_000, "holds values nested too deeply"),
], ids=["latin-1", "utf-16", "5000-digit-integer", "nested-100000-deep"])
def test_an_unreadable_config_file_is_one_sentence(tmp_path, content, message):
    # Before: UnicodeDecodeError, ValueError (int digits limit) and RecursionError tracebacks.
    path = tmp_path / "dup.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_a_config_file_that_cannot_be_read_is_one_sentence(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "c.json"
    path.write_text("{}")

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=r"^config file .*c.json cannot be read \(Permission denied\)$"):
        load_config(str(path))


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must be a JSON object of sections, got an array"),
    ("null", "must be a JSON object of sections, got null"),
    ('{"train": [1]}', "config section 'train' must be a JSON object, got an array"),
    ('{"train": 5}', "config section 'train' must be a JSON object, got 5"),
])
def test_a_file_that_is_not_sections_is_refused_with_overrides_too(tmp_path, text, message):
    # Before, an override on top of it gave AttributeError ('list' object has no attribute 'setdefault') or TypeError.
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(path), ["--train.max_steps", "2"])


def test_override_integers_with_underscores_are_integers():
    # Before, 1_000 was read as the float 1000.0 and refused: "'train.max_steps' must be an integer, got 1000.0".
    assert parse_overrides(["--train.max_steps", "1_000", "--train.lr", "1_0.5"]) == {"train.max_steps": 1000, "train.lr": 10.5}
    assert load_config("debug_xml_cnn", ["--train.max_steps", "1_000"]).train.max_steps == 1000
    # And an override of more digits than Python reads as an integer is a number too large, not a ValueError traceback.
    with pytest.raises(ConfigError, match="^config key 'train.max_steps' must be an integer, got inf$"):
        load_config("debug_xml_cnn", ["--train.max_steps", "9" * 5000])


@pytest.mark.parametrize("raw, message", [
    # not finite: trained until the loss was NaN (lr, weight decay: FloatingPointError traceback), a traceback from
    # the process group (timeouts), silently nothing predicted (threshold)
    ({"train": {"lr": float("inf")}}, "config key 'train.lr' must be a finite number, got inf"),
    ({"train": {"weight_decay": float("nan")}}, "config key 'train.weight_decay' must be a finite number, got nan"),
    ({"model": {"embed_init_std": float("inf")}}, "config key 'model.embed_init_std' must be a finite number, got inf"),
    ({"eval": {"threshold": float("nan")}}, "config key 'eval.threshold' must be a finite number, got nan"),
    ({"parallel": {"timeout_minutes": float("nan")}}, "config key 'parallel.timeout_minutes' must be a finite number, got nan"),
    ({"parallel": {"timeout_minutes": -1}}, "config key 'parallel.timeout_minutes' must be positive, got -1.0"),
    ({"parallel": {"timeout_minutes": 1e8}}, "config key 'parallel.timeout_minutes' must be at most 525600 (a year), got 100000000.0"),
    ({"eval": {"psp_b": -1}}, "config key 'eval.psp_b' must be positive, got -1.0"),
    ({"eval": {"psp_a": 0}}, "config key 'eval.psp_a' must be positive, got 0.0"),
    ({"train": {"lr": 10**400}}, "config key 'train.lr' is a 401-digit integer, too large for a number"),
    # beyond 64 bits: a traceback from torch or numpy
    ({"model": {"embed_dim": 10**23}}, "config key 'model.embed_dim' is a 24-digit integer, beyond 64 bits"),
    ({"train": {"seed": 2**44}}, f"config key 'train.seed' must be at most {2**32 - 1}, got {2**44}"),
    # ran something else: a negative bottleneck was none
    ({"xml_cnn": {"bottleneck": -1}}, "config key 'xml_cnn.bottleneck' must be at least 0, got -1"),
    ({"data": {"path": "a\0b"}}, "config key 'data.path' holds a NUL character"),
    ({"train": {"output_dir": ""}}, "config key 'train.output_dir' is empty; give a directory (\".\" for the working directory)"),
    ({"data": {"cache_dir": " "}}, "config key 'data.cache_dir' is empty; give a directory"),
    # the deepspeed section's blocks the trainer reads
    ({"deepspeed": {"gradient_clipping": float("nan")}}, "config key 'deepspeed.gradient_clipping' must be a number >= 0 (0 = off), got nan"),
    ({"deepspeed": {"checkpoint": {"use_node_local_storage": True}}}, "config key 'deepspeed.checkpoint.use_node_local_storage' "
     "is true, but a run's checkpoints live in train.output_dir, one directory every rank shares; leave it false"),
    ({"deepspeed": {"gradient_clipping": float("inf")}}, "config key 'deepspeed.gradient_clipping' must be a number >= 0 (0 = off), got inf"),
    ({"deepspeed": {"zero_optimization": {"stage": 2.0}}}, "config key 'deepspeed.zero_optimization.stage' must be 0, 1, 2 or 3, got 2.0"),
    ({"deepspeed": {"zero_optimization": {"stage": True}}}, "config key 'deepspeed.zero_optimization.stage' must be 0, 1, 2 or 3, got true"),
    ({"deepspeed": {"optimizer": None}}, "config key 'deepspeed.optimizer' is null; it must be an object"),
    ({"deepspeed": {"optimizer": {}}}, "config key 'deepspeed.optimizer.type' must name a DeepSpeed optimizer"),
    ({"deepspeed": {"optimizer": {"type": "Adam"}, "scheduler": {"params": {}}}}, "config key 'deepspeed.scheduler.type' must name"),
    ({"deepspeed": {"tensorboard": True}}, "config key 'deepspeed.tensorboard' is true; it must be an object, e.g. {\"enabled\": true}"),
    ({"deepspeed": {"csv_monitor": {"enabled": "maybe"}}}, "config key 'deepspeed.csv_monitor.enabled' is \"maybe\"; DeepSpeed reads it as a boolean"),
    # checked when read, not only once the data is read (launch/slurm/check_config.py let these queue)
    ({"train": {"select_metric": "P@1"}}, "config key 'train.select_metric' is \"P@1\" but the corpus has no validation split; set data.valid_fraction"),
    ({"synthetic": {"num_train": 0}}, "config key 'synthetic.num_train' is 0; it must be at least 1"),
    ({"synthetic": {"signal_fraction": float("nan")}}, "config key 'synthetic.signal_fraction' is nan; it must be in [0, 1]"),
    ({"synthetic": {"zipf_exponent": float("inf")}}, "config key 'synthetic.zipf_exponent' is inf; it must be at least 0"),
    ({"model": {"name": "sgm"}, "sgm": {"beam_size": 0}}, "config key 'sgm.beam_size' must be at least 1, got 0"),
    ({"model": {"name": "sgm"}, "sgm": {"global_lambda": float("nan")}}, "config key 'sgm.global_lambda' must be in [0, 1], got nan"),
])
def test_bad_values_are_refused_when_read(raw, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_settings_the_new_checks_leave_alone():
    # The unused section's settings are not judged (an sgm config's synthetic section, an xml_cnn config's sgm section).
    config_from_dict({"sgm": {"beam_size": 0}, "data": {"format": "xmtc_text"}, "synthetic": {"num_train": 0}})
    config_from_dict({"train": {"select_metric": "P@1"}, "data": {"valid_fraction": 0.1}})
    config_from_dict({"train": {"select_metric": "P@1"}, "data": {"format": "sgm"}})  # valid.src/.tgt may bring one
    config_from_dict({"deepspeed": {"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}, "scheduler": {"type": "WarmupLR"},
                                    "tensorboard": {"enabled": False}, "csv_monitor": {"enabled": "true"}}})
    config_from_dict({"train": {"seed": 2**32 - 1}, "xml_cnn": {"bottleneck": 0}, "parallel": {"timeout_minutes": 0.5}})


def _check_config_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_config", CONFIG_DIR.parent / "launch" / "slurm" / "check_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("args, message", [
    (["--train.select_metric", "P@1"], "config key 'train.select_metric' is \"P@1\" but the corpus has no validation split"),
    (["--synthetic.labels_per_doc", "0"], "config key 'synthetic.labels_per_doc' is 0.0; it must be between 1 and num_labels"),
    (["--deepspeed.tensorboard", '{"enabled": "maybe"}'], "config key 'deepspeed.tensorboard.enabled' is \"maybe\""),
    (["--parallel.timeout_minutes", "NaN"], "config key 'parallel.timeout_minutes' must be a finite number, got nan"),
    # DeepSpeed's own models: a key a block does not have, a value it refuses (they stopped the ranks at engine start).
    (["--deepspeed.zero_optimization", '{"stage": 2, "overlap_comms": true}'], "config key 'deepspeed.zero_optimization.overlap_comms' "
     "is not one DeepSpeed " + version("deepspeed") + " knows; did you mean 'deepspeed.zero_optimization.overlap_comm'?"),
    (["--deepspeed.csv_monitor", '{"enabled": true, "job_nam": "x"}'], "config key 'deepspeed.csv_monitor.job_nam' is not one "
     "DeepSpeed " + version("deepspeed") + " knows; did you mean 'deepspeed.csv_monitor.job_name'?"),
    (["--deepspeed.zero_optimization", '{"stage": 2, "offload_optimizer": {"device": "gpu"}}'],
     "config key 'deepspeed.zero_optimization.offload_optimizer.device' is \"gpu\": DeepSpeed " + version("deepspeed")
     + " refuses it (Input should be 'none', 'cpu' or 'nvme')"),
    # Keys DeepSpeed reads by name and otherwise ignores: a top-level one, and ones of blocks it reads key by key (they
    # trained without clipping, profiling or activation partitioning, without a word; a top-level one was found only at
    # engine start, after the data).
    (["--deepspeed.gradient_clippin", "1.0"], "config key 'deepspeed.gradient_clippin' is not one DeepSpeed "
     + version("deepspeed") + " reads: it would be ignored; did you mean 'deepspeed.gradient_clipping'?"),
    (["--deepspeed.flops_profiler", '{"enabeld": true}'], "config key 'deepspeed.flops_profiler.enabeld' is not one DeepSpeed "
     + version("deepspeed") + " reads: it would be ignored; did you mean 'deepspeed.flops_profiler.enabled'?"),
    (["--deepspeed.activation_checkpointing", '{"partition_activationz": true}'], "config key "
     "'deepspeed.activation_checkpointing.partition_activationz' is not one DeepSpeed " + version("deepspeed")
     + " reads: it would be ignored; did you mean 'deepspeed.activation_checkpointing.partition_activations'?"),
    (["--deepspeed.checkpoint", '{"tag_validaton": "Warn"}'], "config key 'deepspeed.checkpoint.tag_validaton' is not one "
     "DeepSpeed " + version("deepspeed") + " reads: it would be ignored; did you mean 'deepspeed.checkpoint.tag_validation'?"),
])
def test_check_config_refuses_before_a_job_queues(capsys, args, message):
    # launch/slurm/check_config.py runs load_config: these were found only by the ranks, after the job started.
    assert _check_config_main()(["debug_xml_cnn", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1


@pytest.mark.parametrize("block", [
    {"flops_profiler": {"enabled": False, "profile_step": 2, "module_depth": -1, "top_modules": 1, "detailed": True}},
    {"activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": False, "number_checkpoints": None,
                                  "contiguous_memory_optimization": False, "synchronize_checkpoint_boundary": False, "profile": False}},
    {"checkpoint": {"tag_validation": "Warn", "load_universal": False, "use_node_local_storage": False}},
    {"data_types": {"grad_accum_dtype": "fp32"}},
    {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.999]}}},
    {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}},
    {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}, "overlap_comm": True}},
    {"gradient_clipping": 1.0, "steps_per_print": 100, "wall_clock_breakdown": False, "sequence_parallel_size": 1},
])
def test_every_key_deepspeed_reads_passes_the_early_check(block):
    # The reads check flags a key only when DeepSpeed never looked it up; keys of its pydantic blocks (zero_optimization)
    # are judged by those, and a key close to none (sequence_parallel_size, read by the engine only) waits for the engine.
    from xmtc.config_checks import check_deepspeed_schema

    check_deepspeed_schema({"train_micro_batch_size_per_gpu": 4, **block})
