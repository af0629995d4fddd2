"""The value checks of a read config: ranges, and settings that contradict each other. Types, names and
choices are checked while reading (xmtc.config); the deepspeed section's blocks against DeepSpeed's own models by
`check_deepspeed_schema` (launch/train.py and launch/slurm/check_config.py, before any data is read)."""

from __future__ import annotations

import collections.abc
import json
import math
from typing import TYPE_CHECKING

from xmtc.errors import ConfigError

if TYPE_CHECKING:
    from xmtc.config import Config


def metric_names(ks: list[int]) -> list[str]:
    """The metric names an evaluation reports (see `xmtc.metrics.MetricSums.result`)."""
    ranked = [f"{m}@{k}" for m in ("P", "nDCG", "PSP", "PSnDCG") for k in ks]
    return ranked + ["hamming_loss", "micro_precision", "micro_recall", "micro_f1", "macro_f1"]


LOWER_IS_BETTER = frozenset({"hamming_loss"})
"""Metrics that model selection minimizes; every other metric is maximized."""


def check_values(cfg: Config) -> None:
    """Raise ConfigError naming the first key whose value is out of range or contradicts another."""
    lower_bounds = {
        "model.embed_dim": (cfg.model.embed_dim, 1),
        "xml_cnn.num_filters": (cfg.xml_cnn.num_filters, 1),
        "xml_cnn.pooling_chunks": (cfg.xml_cnn.pooling_chunks, 1),
        "xml_cnn.loss_chunk_size": (cfg.xml_cnn.loss_chunk_size, 1),
        "data.max_len": (cfg.data.max_len, 1),
        "data.vocab_size": (cfg.data.vocab_size, 3),  # padding, unknown and one token
        "parallel.label_shards": (cfg.parallel.label_shards, 1),
        "eval.batch_size": (cfg.eval.batch_size, 1),
        "eval.max_predictions": (cfg.eval.max_predictions, 1),
        "synthetic.num_labels": (cfg.synthetic.num_labels, 1),
        "train.log_every": (cfg.train.log_every, 1),
        "train.seed": (cfg.train.seed, 0),
        "data.valid_seed": (cfg.data.valid_seed, 0),
        "synthetic.seed": (cfg.synthetic.seed, 0),
        "train.warmup_steps": (cfg.train.warmup_steps, 0),
        "train.eval_every": (cfg.train.eval_every, 0),
        "train.save_every": (cfg.train.save_every, 0),
        "train.keep_checkpoints": (cfg.train.keep_checkpoints, 0),
        "xml_cnn.bottleneck": (cfg.xml_cnn.bottleneck, 0),  # 0 = none; a negative one was silently none
    }
    for key, (value, low) in lower_bounds.items():
        if value < low:
            raise ConfigError(f"config key '{key}' must be at least {low}, got {value}")
    for key, directory in (("train.output_dir", cfg.train.output_dir), ("data.cache_dir", cfg.data.cache_dir)):
        if not directory.strip():  # an unset variable in `--train.output_dir "$OUT"`: the run wrote into the working directory
            raise ConfigError(f"config key '{key}' is empty; give a directory (\".\" for the working directory)")
    if cfg.train.seed > MAX_TRAIN_SEED:
        raise ConfigError(f"config key 'train.seed' must be at most {MAX_TRAIN_SEED}, got {cfg.train.seed}; "
                          "the dropout seeds of the steps are drawn from it and must fit in 64 bits")
    if not cfg.xml_cnn.filter_widths or min(cfg.xml_cnn.filter_widths) < 1:
        raise ConfigError(f"config key 'xml_cnn.filter_widths' must be a non-empty list of positive widths, got {cfg.xml_cnn.filter_widths}")
    width_limit = cfg.model.embed_dim if cfg.xml_cnn.conv_over == "embedding" else cfg.data.max_len
    if max(cfg.xml_cnn.filter_widths) > width_limit:
        raise ConfigError(
            f"config key 'xml_cnn.filter_widths' has width {max(cfg.xml_cnn.filter_widths)}, wider than the "
            f"{'embedding' if cfg.xml_cnn.conv_over == 'embedding' else 'sequence'} it slides over ({width_limit})"
        )
    if cfg.xml_cnn.tfidf and cfg.xml_cnn.bottleneck < 1:
        raise ConfigError("config key 'xml_cnn.tfidf' is true but 'xml_cnn.bottleneck' is 0; the TF-IDF channel feeds the bottleneck")
    if not 0.0 <= cfg.model.dropout < 1.0 or not 0.0 <= cfg.model.embed_dropout < 1.0:
        raise ConfigError("config keys 'model.dropout' and 'model.embed_dropout' must be in [0, 1)")
    if not cfg.model.embed_init_std > 0.0:
        raise ConfigError(f"config key 'model.embed_init_std' must be positive, got {cfg.model.embed_init_std}")
    if not cfg.eval.ks or min(cfg.eval.ks) < 1:
        raise ConfigError(f"config key 'eval.ks' must be a non-empty list of positive k, got {cfg.eval.ks}")
    if len(set(cfg.eval.ks)) != len(cfg.eval.ks):
        raise ConfigError(f"config key 'eval.ks' is {cfg.eval.ks}, which repeats a k; list each k once")
    if not 0.0 <= cfg.data.valid_fraction < 1.0:
        raise ConfigError(f"config key 'data.valid_fraction' must be in [0, 1), got {cfg.data.valid_fraction}")
    if cfg.train.select_metric and cfg.train.select_metric not in metric_names(cfg.eval.ks):
        raise ConfigError(
            f"config key 'train.select_metric' is \"{cfg.train.select_metric}\"; allowed: \"\" (no selection) or one of "
            + ", ".join(metric_names(cfg.eval.ks))
        )
    if cfg.train.select_metric and cfg.data.format != "sgm" and cfg.data.valid_fraction == 0.0:
        # Only an "sgm" corpus can bring a validation split of its own; said here, before a job queues, not after the data is read.
        raise ConfigError(
            f"config key 'train.select_metric' is \"{cfg.train.select_metric}\" but the corpus has no validation split; "
            "set data.valid_fraction (e.g. 0.1)"
        )
    if cfg.train.max_steps < 0:
        raise ConfigError(f"config key 'train.max_steps' must be at least 0 (0 = train.epochs decides), got {cfg.train.max_steps}")
    if not (0 < cfg.train.epochs < math.inf):
        raise ConfigError(f"config key 'train.epochs' must be a positive finite number, got {cfg.train.epochs}")
    if not cfg.train.lr > 0.0:
        raise ConfigError(f"config key 'train.lr' must be positive, got {cfg.train.lr}")
    if not 0.0 <= cfg.train.min_lr_ratio <= 1.0:
        raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {cfg.train.min_lr_ratio}")
    if cfg.train.weight_decay < 0.0:
        raise ConfigError(f"config key 'train.weight_decay' must be at least 0, got {cfg.train.weight_decay}")
    if len(cfg.train.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.train.betas):
        raise ConfigError(f"config key 'train.betas' must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {cfg.train.betas}")
    if "scheduler" in cfg.deepspeed and "optimizer" not in cfg.deepspeed:
        raise ConfigError(
            "config key 'deepspeed.scheduler' is set without 'deepspeed.optimizer': the trainer's torch optimizer follows "
            "train.lr_schedule (with train.warmup_steps, train.min_lr_ratio); remove the scheduler block, or add an optimizer block"
        )
    clip = cfg.deepspeed.get("gradient_clipping", 0.0)
    if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not 0 <= clip < math.inf:
        raise ConfigError(f"config key 'deepspeed.gradient_clipping' must be a number >= 0 (0 = off), got {clip!r}")
    if isinstance(cfg.deepspeed.get("checkpoint"), dict) and cfg.deepspeed["checkpoint"].get("use_node_local_storage"):
        # DeepSpeed then names checkpoint files by the local rank: on the one directory every rank shares (checked at
        # start), the ranks of different nodes would write the same files.
        raise ConfigError("config key 'deepspeed.checkpoint.use_node_local_storage' is true, but a run's checkpoints live in "
                          "train.output_dir, one directory every rank shares; leave it false")
    for block in ("zero_optimization", "bf16", "bfloat16", "fp16"):
        if block in cfg.deepspeed and not isinstance(cfg.deepspeed[block], dict):
            example = '{"stage": 2}' if block == "zero_optimization" else '{"enabled": true}'
            raise ConfigError(f"config key 'deepspeed.{block}' is {cfg.deepspeed[block]!r}; it must be an object, e.g. {example}")
    check_precision(cfg.train.precision, cfg.deepspeed)
    zero = cfg.deepspeed.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if type(stage) is not int or stage not in (0, 1, 2, 3):  # not 2.0 nor true: the trainer compares it as an int
        raise ConfigError(f"config key 'deepspeed.zero_optimization.stage' must be 0, 1, 2 or 3, got {json.dumps(stage)}")
    for block in ("optimizer", "scheduler", *MONITOR_PACKAGES, "csv_monitor"):
        if block in cfg.deepspeed:
            check_deepspeed_block(block, cfg.deepspeed[block])
    if cfg.model.name == "sgm":
        check_sgm(cfg)
    if cfg.data.format == "synthetic":
        check_synthetic(cfg)
    check_finite(cfg)
    for key, value in (("parallel.timeout_minutes", cfg.parallel.timeout_minutes), ("eval.psp_a", cfg.eval.psp_a),
                       ("eval.psp_b", cfg.eval.psp_b)):  # a timeout <= 0: gloo's traceback; B <= -1: PSP@k silently P@k or NaN
        if not value > 0.0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if cfg.parallel.timeout_minutes > MAX_TIMEOUT_MINUTES:
        raise ConfigError(f"config key 'parallel.timeout_minutes' must be at most {MAX_TIMEOUT_MINUTES} (a year), "
                          f"got {cfg.parallel.timeout_minutes}")


MAX_TRAIN_SEED = 2**32 - 1
"""The largest train.seed: a micro-batch's dropout seed (xmtc.trainer.dropout_seed) is about a million times it, and
torch.manual_seed takes 64 bits; a larger one stopped the run with a traceback at its first step."""


def check_deepspeed_block(block: str, value) -> None:
    """An optimizer, scheduler or monitor block of the deepspeed section must be an object; an optimizer or
    scheduler block names its `type`, a monitor's `enabled` is a boolean as DeepSpeed reads it. Checked when the config
    is read, so that launch/slurm/check_config.py refuses it. After the data and the model were built, DeepSpeed stopped
    with a traceback on a null optimizer block (AttributeError) or one without a type (AssertionError at the first
    backward), refused a monitor block that is not an object, and silently ran without a scheduler block's schedule
    when it had no type."""
    if not isinstance(value, dict):
        example = {"optimizer": '{"type": "Adam", "params": {"lr": 0.001}}',
                   "scheduler": '{"type": "WarmupLR", "params": {"warmup_num_steps": 100}}'}.get(block, '{"enabled": true}')
        raise ConfigError(f"config key 'deepspeed.{block}' is {json.dumps(value)}; it must be an object, e.g. {example}")
    if block in ("optimizer", "scheduler"):
        if not isinstance(value.get("type"), str) or not value["type"]:
            example = "Adam" if block == "optimizer" else "WarmupLR"
            raise ConfigError(f"config key 'deepspeed.{block}.type' must name a DeepSpeed {block} (e.g. \"{example}\"), "
                              f"got {json.dumps(value.get('type'))}; without it DeepSpeed uses none")
    elif "enabled" in value:
        deepspeed_bool(f"deepspeed.{block}.enabled", value["enabled"])


def check_sgm(cfg: Config) -> None:
    """SGM's sizes (at least 1) and its fixed mix weight (in [0, 1]), when the model is SGM (xmtc.models.sgm
    checks them again when it builds)."""
    s = cfg.sgm
    for key in ("hidden_size", "encoder_layers", "decoder_layers", "label_embed_dim", "max_decode_len", "beam_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"config key 'sgm.{key}' must be at least 1, got {getattr(s, key)}")
    if not 0.0 <= s.global_lambda <= 1.0:
        raise ConfigError(f"config key 'sgm.global_lambda' must be in [0, 1], got {s.global_lambda}")


def check_synthetic(cfg: Config) -> None:
    """The synthetic corpus's settings, when data.format is "synthetic", checked when the config is read (so that
    launch/slurm/check_config.py refuses them); xmtc.data.synthetic applies the same rules when it generates."""
    check_synthetic_settings(cfg.synthetic)


def check_synthetic_settings(c) -> None:
    """Raise ConfigError for the first `synthetic` setting (a SyntheticConfig) the generator cannot use."""
    rules = {
        "num_labels": (c.num_labels >= 1, "at least 1"),
        "num_train": (c.num_train >= 1, "at least 1"),
        "num_test": (c.num_test >= 1, "at least 1"),
        "labels_per_doc": (1.0 <= c.labels_per_doc <= c.num_labels, f"between 1 and num_labels ({c.num_labels})"),
        "doc_len": (c.doc_len >= 1, "at least 1"),
        "words_per_label": (c.words_per_label >= 1, "at least 1"),
        "noise_words": (c.noise_words >= (1 if c.signal_fraction < 1 else 0), "at least 1 unless signal_fraction is 1"),
        "signal_fraction": (0.0 <= c.signal_fraction <= 1.0, "in [0, 1]"),
        "zipf_exponent": (0.0 <= c.zipf_exponent < math.inf, "at least 0"),
    }
    for key, (ok, hint) in rules.items():
        if not ok:
            raise ConfigError(f"config key 'synthetic.{key}' is {getattr(c, key)}; it must be {hint}")


def check_finite(cfg: Config) -> None:
    """Every number of the typed sections is finite. JSON has no NaN or Infinity, but Python's reader and the overrides
    take them (and read 1e400 as Infinity): a learning rate of Infinity or a NaN weight decay trained NaN weights and
    stopped the run with a traceback at the evaluation, a NaN threshold silently predicted nothing, a NaN collective
    timeout was a traceback of the process group."""
    import dataclasses

    for section in ("model", "xml_cnn", "sgm", "data", "synthetic", "train", "parallel", "eval"):
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
                raise ConfigError(f"config key '{section}.{key}' must be a finite number, got {value}")


MAX_TIMEOUT_MINUTES = 525_600
"""The longest collective timeout: a year. Infinity, and beyond datetime.timedelta's 1.4e12 minutes, stopped the run
with a traceback; a deadline of now + timeout in int64 nanoseconds overflows beyond 292 years."""


MONITOR_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet": "comet_ml"}
"""DeepSpeed monitors of the deepspeed section -> the package each imports when enabled (csv_monitor needs none)."""


_TRUE_WORDS = ("1", "on", "t", "true", "y", "yes")
_FALSE_WORDS = ("0", "off", "f", "false", "n", "no")


def deepspeed_bool(key: str, value) -> bool:
    """A boolean of the deepspeed section as DeepSpeed's config models (pydantic) read it: true/false, 0/1, and the
    strings "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n", "1", "0" in any case (not padded); anything
    else DeepSpeed refuses with a validation traceback after the data and the model are built, so it is refused here."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.lower() in _TRUE_WORDS
    raise ConfigError(f"config key '{key}' is {json.dumps(value)}; DeepSpeed reads it as a boolean: give true or false")


PRECISION_BLOCKS = {"bf16": ("bf16", "bfloat16"), "fp16": ("fp16",)}
"""The deepspeed section's precision blocks -> the keys DeepSpeed reads each from, first found wins ("bfloat16" is
its older name for the bf16 block, read only where there is no "bf16")."""


def precision_blocks(deepspeed_section: dict) -> dict[str, tuple[str, bool | None]]:
    """{"bf16" / "fp16": (the key the block is under, its `enabled` as DeepSpeed reads it, None where unset)}
    for each precision block present."""
    out = {}
    for name, keys in PRECISION_BLOCKS.items():
        key = next((k for k in keys if k in deepspeed_section), None)
        if key is None:
            continue
        block = deepspeed_section[key]
        if not isinstance(block, dict):
            raise ConfigError(f"config key 'deepspeed.{key}' is {block!r}; it must be an object, e.g. {{\"enabled\": true}}")
        out[name] = (key, deepspeed_bool(f"deepspeed.{key}.enabled", block["enabled"]) if "enabled" in block else None)
    return out


def check_precision(precision: str, deepspeed_section: dict) -> None:
    """Raise ConfigError where `train.precision` "bf16" or "fp32" contradicts a precision block of the deepspeed
    section (bf16 with bf16 disabled or fp16 enabled, fp32 with either enabled), rather than one of the two
    silently winning; "auto" follows the section. Also refuses both blocks enabled, which DeepSpeed refuses
    with an assertion only once the model is built."""
    blocks = precision_blocks(deepspeed_section)
    on = [blocks[k][0] for k in ("bf16", "fp16") if k in blocks and blocks[k][1]]
    if len(on) == 2:
        raise ConfigError(f"config keys 'deepspeed.{on[0]}.enabled' and 'deepspeed.fp16.enabled' are both true; "
                          "DeepSpeed trains in one of them: disable the other")
    clash = [f"deepspeed.{key}.enabled is {str(enabled).lower()}" for name, (key, enabled) in blocks.items()
             if enabled is not None and (precision == "fp32" and enabled or precision == "bf16" and enabled != (name == "bf16"))]
    if clash:
        raise ConfigError(f"config key 'train.precision' is \"{precision}\" but {' and '.join(clash)}; set one of them "
                          "(train.precision \"auto\" follows the deepspeed section)")


def check_monitor_packages(deepspeed_section: dict) -> None:
    """Raise ConfigError for an enabled DeepSpeed monitor whose package is not installed: DeepSpeed would
    import it only after the data and the model are built, and stop with a traceback."""
    import importlib.util

    for key, package in MONITOR_PACKAGES.items():
        block = deepspeed_section.get(key)
        if isinstance(block, dict) and "enabled" in block and deepspeed_bool(f"deepspeed.{key}.enabled", block["enabled"]) and importlib.util.find_spec(package) is None:
            extra = " (or pip install 'xmtc[tensorboard]')" if key == "tensorboard" else ""
            raise ConfigError(f"config key 'deepspeed.{key}.enabled' is true but the {package} package is not installed; "
                              f"pip install {package}{extra}, or disable the monitor")


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
"""Keys of the deepspeed section whose agreement depends on the world size (the trainer checks them)."""


def check_deepspeed_schema(deepspeed_section: dict) -> None:
    """The deepspeed section against DeepSpeed's own config models (pydantic), so that a key a block does not have
    (`zero_optimization.stagee`, `offload_optimizer.pin`) or a value it refuses is one sentence naming the config key
    when the config is read (launch/slurm/check_config.py, launch/train.py before the data), not after the data and
    the model were built. Only schema errors are said here: what depends on the machine (bf16 support, the
    accelerator) DeepSpeed judges when the engine starts. Imports DeepSpeed (a few seconds)."""
    try:
        import deepspeed
        from deepspeed.runtime.config import DeepSpeedConfig
        from pydantic import ValidationError
    except ImportError:  # not installed: the trainer cannot start either and says so there
        return
    base = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
    for key, value in deepspeed_section.items():
        if key in BATCH_KEYS:
            continue
        try:
            DeepSpeedConfig({**base, key: value})
        except ValidationError as e:
            raise ConfigError(deepspeed_schema_sentence(e, key, deepspeed.__version__)) from None
        except Exception:  # noqa: BLE001 - a check that needs the rest of the section or the machine: at engine start
            continue
    check_deepspeed_reads(deepspeed_section, base)


class KeysRead(dict):
    """A dict that remembers which of its keys were looked up (by `[]`, `in`, `in .keys()`, get, pop, setdefault)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return _ReadKeys(self)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self.read.add(key)
        return super().setdefault(key, default)


class _ReadKeys(collections.abc.KeysView):
    """`KeysRead.keys()`: DeepSpeed asks `KEY in config.keys()` before it reads an optional block."""

    def __contains__(self, key):
        return key in self._mapping


def unread_key_sentence(path: str, key: str, read, version: str, only_if_close: bool = False) -> str | None:
    """The sentence for key `key` of the deepspeed section (in block `path`, "" for the top level) that DeepSpeed never
    looked up, naming the closest key it did look up (difflib's); None when `only_if_close` and none is close."""
    import difflib

    close = difflib.get_close_matches(key, sorted(k for k in read if isinstance(k, str)), n=1)
    if only_if_close and not close:
        return None
    where = f"{path}." if path else ""
    return (f"config key 'deepspeed.{where}{key}' is not one DeepSpeed {version} reads: it would be ignored"
            + (f"; did you mean 'deepspeed.{where}{close[0]}'?" if close else ""))


def check_deepspeed_reads(deepspeed_section: dict, base: dict) -> None:
    """Misspelled keys that DeepSpeed would ignore, said when the config is read: it reads its top-level keys and its
    dict-read blocks (flops_profiler, activation_checkpointing, checkpoint, data_types, ...) by name and ignores the
    others, so a key it does not look up while building its config, close to one it does (`gradient_clippin`,
    `flops_profiler.enabeld`), is refused. Blocks that its pydantic models validate are judged by those (above);
    a key close to none is left to the trainer's check at engine start, which sees every key the engine reads."""
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    def pydantic_checked(key: str, block: dict) -> bool:
        try:
            DeepSpeedConfig({**base, key: {**block, "xmtc_probe_key": 0}})
        except Exception:  # noqa: BLE001 - refused an unknown key (or the block needs more): not a dict-read block
            return True
        return False

    section = KeysRead({**base, **{k: (KeysRead(v) if isinstance(v, dict) and not pydantic_checked(k, v) else v)
                                   for k, v in deepspeed_section.items() if k not in BATCH_KEYS}})
    try:
        DeepSpeedConfig(section)
    except Exception:  # noqa: BLE001 - judged at engine start (the per-block checks above said the schema errors)
        return
    for key, value in section.items():
        if key in BATCH_KEYS:
            continue
        if key not in section.read:
            if (sentence := unread_key_sentence("", key, section.read, deepspeed.__version__, True)) is not None:
                raise ConfigError(sentence)
        elif isinstance(value, KeysRead) and value.read:  # a block read key by key: the keys it did not look up
            for sub in value:
                if sub not in value.read and (sentence := unread_key_sentence(key, sub, value.read, deepspeed.__version__, True)):
                    raise ConfigError(sentence)


def deepspeed_schema_sentence(e, key: str, version: str) -> str:
    """One sentence for DeepSpeed's pydantic error `e` about top-level key `key` of the deepspeed section."""
    import difflib

    error = e.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if loc[:1] != [key]:  # most blocks are validated alone; the monitors' model holds the top-level names
        loc = [key, *loc]
    path = "deepspeed." + ".".join(loc)
    if error["type"] == "extra_forbidden":
        fields = _model_fields(e.title, loc[:-1] if e.title == "DeepSpeedMonitorConfig" else loc[1:-1])
        close = difflib.get_close_matches(loc[-1], fields, n=1)
        return (f"config key '{path}' is not one DeepSpeed {version} knows" + (f"; did you mean '{'.'.join([path.rsplit('.', 1)[0], close[0]])}'?"
                                                                              if close else ""))
    shown = json.dumps(error.get("input"), default=str)
    return f"config key '{path}' is {shown[:80]}: DeepSpeed {version} refuses it ({error['msg']})"


def _model_fields(title: str, path: list[str]) -> list[str]:
    """The keys (aliases where set) of the DeepSpeed config model named `title`, descended along `path`."""
    import typing

    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    from pydantic import BaseModel

    stack, model = [DeepSpeedConfigModel], None
    while stack and model is None:
        cls = stack.pop()
        model = cls if cls.__name__ == title else None
        stack.extend(cls.__subclasses__())
    for part in path:
        if model is None:
            return []
        info = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        candidates = [info.annotation, *typing.get_args(info.annotation)] if info is not None else []
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]
