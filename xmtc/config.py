"""Run configuration: one JSON file per run, read into one typed dataclass per section.

A config file is a JSON object whose top-level keys are sections (`model`, `xml_cnn`, `sgm`,
`data`, `synthetic`, `train`, `parallel`, `eval`, `deepspeed`). Every section but `deepspeed` is a
dataclass below; `deepspeed` is handed verbatim to `deepspeed.initialize(config=...)` so that
DeepSpeed's own settings (batch sizes, ZeRO, precision, clipping, monitors) have one home.

Command-line overrides use `--section.key value` (`--train.max_steps 20`,
`--deepspeed.zero_optimization.stage 2`). Values are parsed as JSON when they parse, else kept as
strings, then checked against the field's type.

A config file is UTF-8 JSON in which no object holds a key twice (JSON readers keep the last one silently); numbers are
finite (Python's reader takes NaN and Infinity, and reads 1e400 as Infinity) and integers fit in 64 bits.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmtc.config_checks import LOWER_IS_BETTER, check_values, metric_names  # noqa: F401  (re-exported)
from xmtc.errors import ConfigError, DataError, UserError  # noqa: F401  (re-exported)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    name: str = "xml_cnn"
    """Which model: "xml_cnn" (Liu et al. 2017; Kim-CNN as a config of it) or "sgm" (Yang et al. 2018)."""
    embed_dim: int = 300
    """Word-embedding width D."""
    dropout: float = 0.5
    """Dropout before the output layer (XML-CNN) or on the decoder output (SGM)."""
    embed_dropout: float = 0.25
    """Dropout on the word embeddings."""
    embed_init_std: float = 1.0
    """Standard deviation of the normal initialisation of the word embeddings (1.0: torch's default).
    Small values (0.1) let rarely seen words start near zero instead of as loud random features."""
    embed_init: str = "normal"
    """Word-vector initialisation: "normal" (N(0, embed_init_std^2)) or "ppmi_svd" (vectors from the training
    texts' own co-occurrences, see xmtc.models.word_vectors, scaled to standard deviation embed_init_std)."""
    embed_init_texts: str = "whole"
    """Which training tokens the "ppmi_svd" vectors count: "whole" documents (read and tokenized again once,
    then cached) or "truncated", the first data.max_len tokens of each that the corpus keeps."""
    kernels: str = "auto"
    """Fused ops: "auto" (XMTC_KERNELS decides, by default Triton on CUDA and torch elsewhere), "triton" or "torch" (rule a kernel out)."""


@dataclass
class XMLCNNConfig:
    filter_widths: list[int] = field(default_factory=lambda: [2, 4, 8])
    """Convolution filter widths; one group of `num_filters` filters per width."""
    num_filters: int = 32
    """Filters per width."""
    conv_over: str = "sequence"
    """"sequence": filters slide over token positions (paper, Kim-CNN); "embedding": the S token
    positions are input channels and filters slide along the embedding axis (S x F x sum(widths) weights)."""
    pooling_chunks: int = 128
    """Dynamic max pooling: each feature map is cut into p chunks and the max of each kept; 1 = global max pooling."""
    bottleneck: int = 512
    """Width of the hidden layer between pooling and output; 0 = none (Kim-CNN)."""
    loss: str = "fused"
    """Output-layer loss: "fused" (chunked linear + BCE, never materializes batch x L logits) or "materialized"."""
    loss_chunk_size: int = 8192
    """Labels per chunk in the fused loss and chunked top-k."""
    tfidf: bool = False
    """Add a learned linear map of each document's TF-IDF vector (token counts times the smoothed idf of the
    training documents, L2-normalised) to the bottleneck's input (xmtc.models.tfidf); needs a bottleneck."""
    tfidf_sublinear: bool = False
    """TF-IDF channel: 1 + log(count) instead of the count as the term frequency."""
    criterion: str = "bce"
    """Per-label loss: "bce" (binary cross-entropy with logits, the paper) or "squared_hinge"
    (max(0, 1 - s z)^2, s = +1 for the document's labels and -1 for the others: an L2-SVM per label)."""


@dataclass
class SGMConfig:
    hidden_size: int = 256
    """LSTM hidden size of each encoder direction; the decoder's is twice this, since it starts from
    the two directions' final states concatenated (the paper's 256 and 512)."""
    encoder_layers: int = 2
    """BiLSTM encoder layers."""
    decoder_layers: int = 2
    """LSTM decoder layers."""
    label_embed_dim: int = 256
    """Label-embedding width."""
    attention: str = "bahdanau"
    """Attention over encoder states: "bahdanau" (the paper's additive attention) or "luong" (general)."""
    global_embedding: str = "adaptive"
    """"adaptive" (gate H = sigmoid(W1 e + W2 e_bar)), "fixed" (lambda mix) or "none" (plain SGM)."""
    global_lambda: float = 0.5
    """The fixed mix weight lambda when global_embedding = "fixed"."""
    mask: bool = True
    """Masked softmax: labels already emitted get probability zero."""
    sort_labels: bool = True
    """Target sequences sorted by label frequency, most frequent first (off: the paper's ablation)."""
    max_decode_len: int = 10
    """Maximum labels emitted per document (end-of-sequence usually comes first)."""
    beam_size: int = 5
    """Beam width at evaluation; 1 = greedy."""


@dataclass
class DataConfig:
    format: str = "synthetic"
    """"synthetic" (generated, see the `synthetic` section), "xmtc_text" ({train,test}_texts.txt +
    {train,test}_labels.txt in `path`), "table" (JSONL/CSV/Parquet `train_file`/`test_file`),
    "hub" (a Hugging Face Hub dataset `hub_name`) or "sgm" ({train,valid,test}.src/.tgt in `path`)."""
    path: str = ""
    """Directory holding the files of the "xmtc_text" and "sgm" formats (relative to the working directory)."""
    train_file: str = ""
    """"table": training file (.jsonl, .json, .csv or .parquet)."""
    test_file: str = ""
    """"table": test file."""
    text_column: str = "text"
    """"table"/"hub": column holding the document text."""
    labels_column: str = "labels"
    """"table"/"hub": column holding the label list (a list of strings, or one space-separated string)."""
    hub_name: str = ""
    """"hub": dataset name on the Hugging Face Hub."""
    hub_config: str = ""
    """"hub": dataset configuration name, if any."""
    train_split: str = "train"
    """"hub": split used for training."""
    test_split: str = "test"
    """"hub": split used for evaluation."""
    tokenizer: str = "whitespace"
    """"whitespace" (lower-cased word vocabulary; a word is a run of \\w with its combining marks) or "sentencepiece" (unigram model trained on the training texts)."""
    vocab_size: int = 30000
    """Vocabulary size, including the padding and unknown tokens."""
    max_len: int = 500
    """Tokens per document S (padded or truncated)."""
    min_count: int = 1
    """"whitespace": words seen fewer times in training map to the unknown token."""
    cache_dir: str = ".cache/xmtc"
    """Where tokenizers and tokenized corpora (Arrow, memory-mapped) are cached."""
    bad_lines: str = "error"
    """Empty or undecodable documents, documents without labels: "error" (stop, naming file and line) or "skip"
    (skip and count them). With "skip", a JSON Lines line that is not UTF-8 or not one JSON object is such a
    document too; a CSV or JSON file must be valid UTF-8 and well-formed throughout either way (a CSV row can
    span lines): a broken line of it stops the run, naming the line."""
    unseen_labels: str = "drop"
    """Test labels never seen in training: "drop" (removed and counted) or "error"."""
    valid_fraction: float = 0.0
    """Fraction of the training documents held out as the validation split (a seeded draw), for corpora
    without a validation split of their own (an "sgm" corpus with valid.src/.tgt keeps its own); 0 = none."""
    valid_seed: int = 0
    """Seed of that draw: the same seed and fraction hold out the same documents in every run."""


@dataclass
class SyntheticConfig:
    num_labels: int = 2000
    """Labels; power-law frequencies (Amazon-670K: 670,091)."""
    num_train: int = 8000
    """Training documents."""
    num_test: int = 1000
    """Test documents."""
    labels_per_doc: float = 5.45
    """Mean labels per document (Amazon-670K: 5.45)."""
    doc_len: int = 250
    """Mean words per document."""
    words_per_label: int = 6
    """Label-specific words each label owns; a document's text mixes its labels' words with noise."""
    noise_words: int = 5000
    """Background words shared by all labels."""
    signal_fraction: float = 0.4
    """Fraction of a document's words drawn from its labels' words (the rest is background)."""
    zipf_exponent: float = 1.0
    """Label-frequency power law exponent."""
    seed: int = 1234
    """Generator seed (the corpus is a pure function of this section)."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    """Run directory: config.json, checkpoints/, metrics.jsonl, final_metrics.json, logs."""
    seed: int = 0
    """Seed for parameters, dropout and data order."""
    max_steps: int = 0
    """Optimizer steps; 0 = run `epochs` epochs."""
    epochs: float = 1.0
    """Epochs when max_steps is 0."""
    optimizer: str = "adamw"
    """"adamw" or "adam" (a torch optimizer handed to DeepSpeed); ignored when the deepspeed section has an `optimizer` block."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: str = "linear"
    """Decay after warm-up: "linear", "cosine" or "constant"."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    log_every: int = 10
    """Steps between log lines (loss, samples/s, memory)."""
    eval_every: int = 0
    """Steps between evaluations (on the validation split when there is one, else on the test split); 0 = only at the end."""
    select_metric: str = ""
    """Model selection: a metric name as in metrics.jsonl ("micro_f1", "P@1", "hamming_loss", ...) judged on
    the validation split at every evaluation; the best step's weights (tag best-step<N>, pointed to by
    checkpoints/best.json) are the ones tested at the end and used by xmtc.evaluate/predict. "" = the last step."""
    save_every: int = 0
    """Steps between checkpoints; 0 = only at the end."""
    keep_checkpoints: int = 0
    """How many of the newest `step<N>` checkpoint tags to keep (older ones are deleted after each save; the tag
    `latest` names and the selected `best-step<N>` always stay); 0 = keep every one."""
    resume: bool = False
    """Continue from output_dir/checkpoints (tag `latest`) when one exists."""
    precision: str = "auto"
    """"auto" (a bf16/fp16 block of the deepspeed section decides; without one bf16 on CUDA, fp32 on CPU), "fp32" or
    "bf16" (written into the deepspeed section; a block that contradicts it is refused)."""
    progress: bool = True
    """tqdm progress bar on rank 0."""
    plot: bool = True
    """Redraw `curves.png` in the output directory (training loss and metrics by step) after each evaluation."""
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""


@dataclass
class ParallelConfig:
    label_shards: int = 1
    """Ranks that split the output layer by label (tensor parallel); 1 = unsharded. Must divide the world size."""
    dist_backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, gloo on CPU), "gloo" or "nccl"."""
    timeout_minutes: float = 30.0
    """Collective timeout, so that a dead rank does not hang the others forever."""


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 3, 5])
    """k for P@k, nDCG@k and PSP@k."""
    threshold: float = 0.5
    """Score threshold for the set metrics (hamming loss, micro precision/recall/F1) of scoring models."""
    max_predictions: int = 100
    """Top labels kept per document; the thresholded set is taken among them."""
    psp_a: float = 0.55
    """Propensity parameter A (Jain et al. 2016)."""
    psp_b: float = 1.5
    """Propensity parameter B."""
    batch_size: int = 256
    """Documents per evaluation batch per rank."""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "xml_cnn": XMLCNNConfig,
    "sgm": SGMConfig,
    "data": DataConfig,
    "synthetic": SyntheticConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "eval": EvalConfig,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.name": ("xml_cnn", "sgm"),
    "model.kernels": ("auto", "triton", "torch"),
    "model.embed_init": ("normal", "ppmi_svd"),
    "model.embed_init_texts": ("whole", "truncated"),
    "xml_cnn.conv_over": ("sequence", "embedding"),
    "xml_cnn.loss": ("fused", "materialized"),
    "xml_cnn.criterion": ("bce", "squared_hinge"),
    "sgm.attention": ("bahdanau", "luong"),
    "sgm.global_embedding": ("adaptive", "fixed", "none"),
    "data.format": ("synthetic", "xmtc_text", "table", "hub", "sgm"),
    "data.tokenizer": ("whitespace", "sentencepiece"),
    "data.bad_lines": ("error", "skip"),
    "data.unseen_labels": ("drop", "error"),
    "train.optimizer": ("adamw", "adam"),
    "train.lr_schedule": ("linear", "cosine", "constant"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.device": ("auto", "cpu", "cuda"),
    "parallel.dist_backend": ("auto", "gloo", "nccl"),
}

DEFAULT_DEEPSPEED: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 32,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 0},
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 1_000_000_000,
    "wall_clock_breakdown": False,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    xml_cnn: XMLCNNConfig = field(default_factory=XMLCNNConfig)
    sgm: SGMConfig = field(default_factory=SGMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_DEEPSPEED))
    source: str = ""
    """The file the config was read from (not a config key)."""

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["deepspeed"] = copy.deepcopy(self.deepspeed)
        return out

    def save(self, path: str | os.PathLike) -> None:
        from xmtc.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    # Batch arithmetic lives in the deepspeed section (DeepSpeed checks it too; we say it first, clearly).
    @property
    def micro_batch_size(self) -> int:
        return int(self.deepspeed["train_micro_batch_size_per_gpu"])

    @property
    def grad_accum(self) -> int:
        return int(self.deepspeed.get("gradient_accumulation_steps", 1))

    def check_batch(self, world_size: int) -> None:
        """Raise ConfigError unless train_batch_size = micro x accumulation x data-parallel size."""
        expected = self.micro_batch_size * self.grad_accum * world_size
        given = self.deepspeed.get("train_batch_size")
        if given is not None and int(given) != expected:
            raise ConfigError(
                f"config key 'deepspeed.train_batch_size' is {given} but train_micro_batch_size_per_gpu "
                f"({self.micro_batch_size}) x gradient_accumulation_steps ({self.grad_accum}) x "
                f"data-parallel ranks ({world_size}) = {expected}; set it to {expected} or remove it"
            )
        if world_size % self.parallel.label_shards:
            raise ConfigError(
                f"config key 'parallel.label_shards' is {self.parallel.label_shards}, which does not divide "
                f"the world size {world_size}; use a divisor of {world_size}"
            )


# ---------------------------------------------------------------------------------------------
# Reading and checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list of {_type_name(inner)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}' has the wrong type: got {value!r}, expected {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:  # torch, numpy and the file formats hold 64 bits: beyond, a traceback
                raise ConfigError(f"config key '{key}' is a {len(str(abs(value)))}-digit integer, beyond 64 bits; give a smaller value")
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of more than 308 digits
                raise ConfigError(f"config key '{key}' is a {len(str(abs(value)))}-digit integer, too large for a number; give a smaller value") from None
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            if "\0" in value:  # a path with one fails in open() with a traceback; no name or choice holds one
                raise ConfigError(f"config key '{key}' holds a NUL character (\\u0000); remove it")
            if key in CHOICES and value not in CHOICES[key]:
                allowed = ", ".join(f'"{c}"' for c in CHOICES[key])
                raise ConfigError(f"config key '{key}' is \"{value}\"; allowed: {allowed}")
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp} for {key}")


def _build_section(name: str, raw: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{name}' must be a JSON object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"config key '{name}.{key}' is unknown; section '{name}' allows: {', '.join(sorted(known))}"
            )
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def resolve_config_path(name_or_path: str) -> Path:
    """A path that exists is used as is; a bare name is looked up in configs/ (".json" optional)."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith(".json"):
        candidates.append(Path(name_or_path + ".json"))
    candidates += [CONFIG_DIR / c.name for c in list(candidates) if c.parent == Path(".")]
    for c in candidates:
        if c.is_file():
            return c
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a config in {CONFIG_DIR} (shipped: {shipped})")


def _is_str_field(dotted: str) -> bool:
    section, _, name = dotted.partition(".")
    cls = SECTIONS.get(section)
    return cls is not None and typing.get_type_hints(cls).get(name) is str


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """['--train.max_steps', '20', '--data.path=x'] -> {'train.max_steps': 20, 'data.path': 'x'}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"argument '{arg}' is not an override of the form --section.key value")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override '{arg}' has no value; write {arg} VALUE")
            key, text = arg[2:], args[i + 1]
            i += 2
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # not JSON (or an integer of over 4300 digits, or nested past the stack)
            value = text
            if text.strip() and not text.strip().isalpha():  # numbers JSON does not write: .001, 1., +3, 1_000
                for number in (int, float):  # int first: 1_000 is the integer 1000, not 1000.0
                    try:
                        value = number(text)
                        break
                    except ValueError:
                        pass
        if _is_str_field(key) and not isinstance(value, str):
            value = text  # --train.output_dir 2024 is the directory "2024", not a number
        out[key] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a JSON object of sections, got {_json_kind(raw)}")
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        section, *path = dotted.split(".")
        if section not in SECTIONS and section != "deepspeed":
            raise ConfigError(
                f"override '--{dotted}' names an unknown section '{section}'; sections: "
                f"{', '.join(list(SECTIONS) + ['deepspeed'])}"
            )
        node = raw.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config section '{section}' must be a JSON object, got {_json_kind(node)}")
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '--{dotted}': '{part}' is not a section")
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source + ' ' if source else ''}must be a JSON object of sections, got {_json_kind(raw)}")
    unknown = set(raw) - set(SECTIONS) - {"deepspeed"}
    if unknown:
        raise ConfigError(
            f"config section '{sorted(unknown)[0]}' is unknown; sections: {', '.join(list(SECTIONS) + ['deepspeed'])}"
        )
    kwargs = {name: _build_section(name, raw.get(name, {})) for name in SECTIONS}
    ds = copy.deepcopy(DEFAULT_DEEPSPEED)
    user_ds = raw.get("deepspeed", {})
    if not isinstance(user_ds, dict):
        raise ConfigError("config section 'deepspeed' must be a JSON object (DeepSpeed's own config)")
    _merge(ds, user_ds)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        if key == "train_batch_size" and key not in ds:
            continue  # optional: the trainer fills it in
        if not isinstance(ds.get(key), int) or isinstance(ds.get(key), bool) or ds[key] < 1:
            raise ConfigError(f"config key 'deepspeed.{key}' must be a positive integer, got {ds.get(key)!r}")
    cfg = Config(**kwargs, deepspeed=ds, source=source)
    check_values(cfg)
    return cfg


def _merge(base: dict, update: dict) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _json_kind(value: Any) -> str:
    """What a JSON value is, in a few words, for a message: "an object", "an array", else the value as JSON (5, null, "x")."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    return json.dumps(value) if not isinstance(value, str) or len(value) < 40 else "a string"


class _JSONObject(dict):
    """A JSON object as read, remembering the first key it held twice (json keeps only the last silently)."""

    duplicate: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _plain(node: Any, dotted: str = "") -> Any:
    """`node` with plain dicts; raises ConfigError naming the first key an object of it holds twice."""
    if isinstance(node, list):
        return [_plain(v, f"{dotted}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if getattr(node, "duplicate", None) is not None:
        key = f"{dotted}.{node.duplicate}" if dotted else node.duplicate
        what = "config key" if dotted else "config section"
        raise ConfigError(f"{what} '{key}' is given twice; JSON would keep only the last one silently: remove the other")
    return {k: _plain(v, f"{dotted}.{k}" if dotted else k) for k, v in node.items()}


def read_config_file(path: Path) -> Any:
    """The JSON value of the config file `path`: UTF-8, no key twice in one object. Raises ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} line {line}: byte {data[e.start]:#04x} is not UTF-8; save the file as UTF-8") from None
    try:
        return _plain(json.loads(text, object_pairs_hook=_json_object))
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; arrays nested past the stack
        why = "an integer of over 4300 digits" if isinstance(e, ValueError) else "values nested too deeply"
        raise ConfigError(f"config file {path} holds {why}; no config key takes one") from None


def load_config(name_or_path: str, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    path = resolve_config_path(name_or_path)
    raw = read_config_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a JSON object of sections, got {_json_kind(raw)}")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, source=str(path))
