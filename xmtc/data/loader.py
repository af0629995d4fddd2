"""`load_corpus`: config -> a tokenized, label-indexed, memory-mapped corpus, built once and cached.

Label ids are sorted by training frequency (documents carrying the label), most frequent first, ties
by name, so `sorted(ids)` is SGM's "most frequent first" order. Test (and valid) labels never seen
in training are dropped and counted, or stop the run (`data.unseen_labels`); a test document left
without labels is kept, so every test document counts once in the metrics' denominators. The
synthetic format's label space is all `synthetic.num_labels` labels; those no training document
carries come last (count 0, in name order).

`Corpus.stats` holds, for each split s in ("train", "valid", "test") that exists:
  {s}_docs                    documents kept
  {s}_skipped_empty           empty documents skipped (data.bad_lines = "skip")
  {s}_skipped_no_labels       documents without labels skipped
  {s}_skipped_undecodable     lines that are not UTF-8 skipped
  {s}_skipped_malformed       JSON Lines lines that are not one JSON object, skipped
  {s}_duplicate_labels        repeated labels removed within a document
  {s}_unseen_labels_dropped   label occurrences never seen in training, dropped (0 for train)
  {s}_docs_without_labels     documents left without labels by that drop, kept (0 for train)
  {s}_docs_without_tokens     documents whose text yields no token, stored as one unknown token
  {s}_truncated               documents longer than data.max_len tokens, truncated
  {s}_tokens                  tokens kept (after truncation)
  {s}_unk_tokens              of which unknown
  valid_held_out_of_train     documents `data.valid_fraction` moved from train to valid (then
                              train_docs/valid_docs count the split as used; the other train_* keys
                              describe the whole training file)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from xmtc.config import ConfigError, DataConfig, DataError, SyntheticConfig
from xmtc.data import readers, synthetic, tables, tokenizer as tok
from xmtc.data.cache import COMPLETE_MARKER, build_once, cache_key, file_fingerprint
from xmtc.data.readers import RawSplit
from xmtc.io import atomic_write_text

logger = logging.getLogger(__name__)
ENCODE_CHUNK = 20_000
"""Documents tokenized per Arrow chunk: bounds the Python lists alive at once."""
SPLITS = ("train", "valid", "test")


@dataclass
class Corpus:
    """A tokenized corpus and its label space, as `load_corpus` returns it."""

    train: Any
    """`datasets.Dataset` with columns input_ids (int32 token ids, at most data.max_len, unpadded) and labels (int32 label ids, file order)."""
    test: Any
    valid: Any | None
    """The "sgm" format's valid.src/.tgt, or the documents `data.valid_fraction` holds out of train; else None."""
    label_names: list[str]
    """Label id -> name; ids sorted by training frequency, most frequent first, ties by name."""
    label_counts: np.ndarray
    """int64 [num_labels]: training documents carrying each label (for propensities)."""
    vocab_size: int
    """Embedding rows: the tokenizer's size, padding (0) and unknown (1) included."""
    tokenizer: Any
    """`encode(text) -> list[int]` (untruncated) and `vocab_size`; reload with `load_tokenizer(cache_path)`."""
    stats: dict[str, int]
    """Counts of skipped, dropped and truncated input; keys in this module's docstring."""
    cache_path: Path
    cache_hit: bool
    """True when this call read a cache built earlier (no reading or tokenizing happened)."""
    label_counts_docs: int = 0
    """Training documents `label_counts` were counted over (the whole training file, a hold-out included)."""
    pad_id: ClassVar[int] = tok.PAD_ID
    unk_id: ClassVar[int] = tok.UNK_ID

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


@dataclass
class RawCorpus:
    """What a reader hands to the build: splits of raw text and label names."""

    splits: dict[str, RawSplit]
    label_universe: list[str] | None = None
    """All labels when the format defines them (synthetic); else the training labels are the label space."""
    pretokenized: bool = False


def source_inputs(data: DataConfig, synth: SyntheticConfig) -> tuple[dict[str, Any], Callable[[], RawCorpus]]:
    """What identifies the input (for the cache key), and a function that reads it. Checks paths first."""
    fmt = data.format
    if fmt == "xmtc_text":
        files = readers.xmtc_text_files(data.path)
        return {"files": [file_fingerprint(f, data.cache_dir) for f in files]}, lambda: RawCorpus(readers.read_xmtc_text(data.path, data.bad_lines))
    if fmt == "sgm":
        files = readers.sgm_files(data.path)
        return {"files": [file_fingerprint(f, data.cache_dir) for f in files]}, lambda: RawCorpus(readers.read_sgm(data.path, data.bad_lines), pretokenized=True)
    if fmt == "table":
        for file, key in ((data.train_file, "data.train_file"), (data.test_file, "data.test_file")):
            tables.table_loader(file, key)
        hf_cache = str(Path(data.cache_dir) / "hf")  # datasets' own Arrow conversion lives beside ours
        files = [file_fingerprint(data.train_file, data.cache_dir), file_fingerprint(data.test_file, data.cache_dir)]
        columns = (data.text_column, data.labels_column, data.bad_lines)
        inputs = {"files": files, "columns": [data.text_column, data.labels_column]}
        return inputs, lambda: RawCorpus(tables.read_table(data.train_file, data.test_file, *columns, hf_cache))
    if fmt == "hub" and (local := tables.local_hub_files(data.hub_name)) is not None:
        # A local directory: keyed by the content of its files, like the other formats.
        root = Path(data.hub_name)
        inputs = {
            "hub_dir": [[str(f.relative_to(root)), file_fingerprint(f, data.cache_dir)] for f in local],
            "hub": [data.hub_config, data.train_split, data.test_split],
            "columns": [data.text_column, data.labels_column],
        }
        args = (data.hub_name, data.hub_config, data.train_split, data.test_split, data.text_column, data.labels_column,
                data.bad_lines, str(Path(data.cache_dir) / "hf"))

        def read_local() -> RawCorpus:
            with quiet_datasets():
                return RawCorpus(tables.read_local_hub(*args))

        return inputs, read_local
    if fmt == "hub":
        with quiet_datasets():
            loaded = tables.load_hub(data.hub_name, data.hub_config)
        parts = [(data.train_split, "data.train_split"), (data.test_split, "data.test_split")]
        # The split fingerprints change when the Hub revision (or a local file) changes.
        prints = [tables.hub_split(loaded, data.hub_name, s, k)._fingerprint for s, k in parts]
        inputs = {
            "hub": [data.hub_name, data.hub_config, data.train_split, data.test_split],
            "fingerprints": prints,
            "columns": [data.text_column, data.labels_column],
        }
        columns = (data.text_column, data.labels_column, data.bad_lines)
        return inputs, lambda: RawCorpus(tables.read_hub(loaded, data.hub_name, data.train_split, data.test_split, *columns))
    if fmt == "synthetic":
        synthetic.check_synthetic(synth)

        def generate() -> RawCorpus:
            generated = synthetic.generate_synthetic(synth)
            return RawCorpus(generated.splits, generated.label_names)

        return {"synthetic": dataclasses.asdict(synth), "signal_pool_max": synthetic.SIGNAL_POOL_MAX}, generate
    allowed = ", ".join(f'"{f}"' for f in ("synthetic", "xmtc_text", "table", "hub", "sgm"))
    raise ConfigError(f'config key \'data.format\' is "{fmt}"; allowed: {allowed}')


def cache_inputs(data: DataConfig, source: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes the cached corpus, besides the code version (CACHE_VERSION)."""
    inputs = {
        "format": data.format,
        "source": source,
        "tokenizer": data.tokenizer,
        "vocab_size": data.vocab_size,
        "max_len": data.max_len,
        "bad_lines": data.bad_lines,
        "unseen_labels": data.unseen_labels,
    }
    if data.tokenizer == "whitespace":
        inputs["min_count"] = data.min_count
        inputs["word_marks"] = True  # words keep their combining marks: a cache of the `\w+` split is not served
    else:
        inputs["spm_sample"] = [tok.SPM_TRAIN_CHARS, tok.SPM_LINE_WORDS, tok.SPM_LINE_BYTES, tok.SPM_TRAIN_THREADS]
    return inputs


def label_vocabulary(train: RawSplit, universe: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Label names and training counts, most frequent first, ties by name."""
    counts = Counter(name for labels in train.labels for name in labels)
    names = list(counts) if universe is None else list(universe)
    freq = np.fromiter((counts.get(n, 0) for n in names), dtype=np.int64, count=len(names))
    order = np.lexsort((np.asarray(names, dtype=str), -freq))
    return [names[i] for i in order], freq[order]


def _count(stats: dict[str, int], key: str, n: Any) -> None:
    stats[key] = stats.get(key, 0) + int(n)


def label_ids(split: RawSplit, index: dict[str, int], unseen: str, stats: dict[str, int]) -> list[list[int]]:
    if unseen not in ("drop", "error"):
        raise ConfigError(f'config key \'data.unseen_labels\' is "{unseen}"; allowed: "drop", "error"')
    out = []
    for i, names in enumerate(split.labels):
        ids = [index.get(n, -1) for n in names]
        if -1 in ids:
            if unseen == "error":
                name = names[ids.index(-1)]
                raise DataError(
                    f"{split.locate(split.rows[i])} has label '{name}', which no training document has; "
                    'set data.unseen_labels to "drop" to remove such labels'
                )
            kept = [x for x in ids if x >= 0]
            _count(stats, f"{split.name}_unseen_labels_dropped", len(ids) - len(kept))
            _count(stats, f"{split.name}_docs_without_labels", not kept)
            ids = kept
        out.append(ids)
    return out


def encode_texts(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids truncated to max_len; a text without any token becomes [unk] so every row has length >= 1.

    `tokenizer` may be a Corpus (its tokenizer is used). This is the encoding the cache stores.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return _truncate(tokenizer.encode_batch(texts), max_len)


def _truncate(rows: list[list[int]], max_len: int) -> list[list[int]]:
    return [ids[:max_len] if ids else [tok.UNK_ID] for ids in rows]


def _list_array(rows: list[list[int]]) -> pa.Array:
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def encode_split(tokenizer: Any, split: RawSplit, labels: list[list[int]], max_len: int, stats: dict[str, int],
                 done: Callable[[int], Any] = lambda n: None) -> pa.Table:
    """The tokenized split as an Arrow table; `done(n)` after each chunk of n documents."""
    s = split.name
    ids_chunks, label_chunks = [], []
    for lo in range(0, len(split.texts), ENCODE_CHUNK):
        full = tokenizer.encode_batch(split.texts[lo : lo + ENCODE_CHUNK])
        done(len(full))
        lengths = np.fromiter(map(len, full), dtype=np.int64, count=len(full))
        _count(stats, f"{s}_docs_without_tokens", (lengths == 0).sum())
        _count(stats, f"{s}_truncated", (lengths > max_len).sum())
        ids_chunks.append(_list_array(_truncate(full, max_len)))
        tokens = ids_chunks[-1].values.to_numpy()
        _count(stats, f"{s}_tokens", tokens.size)
        _count(stats, f"{s}_unk_tokens", (tokens == tok.UNK_ID).sum())
        label_chunks.append(_list_array(labels[lo : lo + ENCODE_CHUNK]))
    list_type = pa.list_(pa.int32())
    return pa.table({
        "input_ids": pa.chunked_array(ids_chunks, type=list_type),
        "labels": pa.chunked_array(label_chunks, type=list_type),
    })


def split_stats(split: RawSplit) -> dict[str, int]:
    """The stats keys of one split (module docstring), with what reading it counted."""
    s = split.name
    stats = {f"{s}_docs": len(split.texts), f"{s}_duplicate_labels": split.duplicate_labels}
    stats.update({f"{s}_skipped_{reason}": n for reason, n in split.skipped.items()})
    for key in ("unseen_labels_dropped", "docs_without_labels", "docs_without_tokens", "truncated", "tokens", "unk_tokens"):
        stats[f"{s}_{key}"] = 0
    return stats


def as_dataset(table: pa.Table) -> Any:
    """An in-memory `datasets.Dataset` over an Arrow table."""
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(table))


def encode_labeled_files(corpus: Corpus, texts_path: str | Path, labels_path: str | Path, data: DataConfig) -> tuple[Any, dict[str, int]]:
    """Another texts + labels file pair encoded like `corpus` -> (in-memory Dataset, stats of split "eval").

    The corpus's tokenizer, label ids and data.max_len apply; bad lines follow data.bad_lines and
    labels the corpus lacks follow data.unseen_labels (dropped documents are kept, as for the test split).
    """
    raw = readers.read_paired_files("eval", Path(texts_path), Path(labels_path), data.bad_lines)
    stats = split_stats(raw)
    ids = label_ids(raw, corpus.label_index, data.unseen_labels, stats)
    return as_dataset(encode_split(corpus.tokenizer, raw, ids, data.max_len, stats)), stats


class BuildProgress:
    """What the process that builds a corpus cache says while it works (minutes for Amazon-670K's half a million
    documents): on stderr a line for each phase that took a second or more, and on a terminal a bar over the documents
    being encoded. A small corpus builds in silence."""

    SHOWN_S = 1.0

    def __init__(self):
        self.mark = time.perf_counter()

    def phase(self, what: str) -> None:
        now = time.perf_counter()
        if now - self.mark >= self.SHOWN_S:
            print(f"corpus: {what} in {now - self.mark:.1f} s", file=sys.stderr, flush=True)
        self.mark = now

    @staticmethod
    def bar(total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="doc", file=sys.stderr, disable=None, dynamic_ncols=True, mininterval=1.0,
                    leave=False)


def build_corpus(directory: Path, read: Callable[[], RawCorpus], data: DataConfig) -> None:
    """Label vocabulary, tokenizer and tokenized splits of what `read()` returns -> `directory` (meta.json last)."""
    progress = BuildProgress()
    raw = read()
    progress.phase("read " + " / ".join(f"{len(split.texts):,} {name}" for name, split in raw.splits.items()) + " documents")
    stats = {}
    for split in raw.splits.values():
        if not split.texts:
            where = f" ({split.source})" if split.source else ""
            if not any(split.skipped.values()):
                raise DataError(f"the {split.name} split is empty: no documents in {split.source or 'its source'}")
            skipped = ", ".join(f"{reason} {n}" for reason, n in split.skipped.items() if n)
            raise DataError(f"the {split.name} split{where} has no documents left after reading (skipped: {skipped})")
        stats.update(split_stats(split))
    names, counts = label_vocabulary(raw.splits["train"], raw.label_universe)
    index = {n: i for i, n in enumerate(names)}
    # Labels before the tokenizer: an unseen-label error should come before minutes of training it.
    ids = {s: label_ids(split, index, data.unseen_labels, stats) for s, split in raw.splits.items()}
    progress.phase("label vocabulary of {:,} labels".format(len(names)))
    tokenizer = tok.train_tokenizer(data.tokenizer, raw.splits["train"].texts, data.vocab_size, data.min_count, raw.pretokenized)
    tokenizer.save(directory)
    progress.phase(f"{data.tokenizer} tokenizer of {tokenizer.vocab_size:,} tokens trained")
    for s, split in raw.splits.items():
        with progress.bar(len(split.texts), f"corpus: encode {s}") as bar:
            table = encode_split(tokenizer, split, ids[s], data.max_len, stats, bar.update)
        as_dataset(table).save_to_disk(str(directory / s))
        progress.phase(f"{s} encoded and written")
    meta = {
        "splits": [s for s in SPLITS if s in raw.splits],
        "vocab_size": tokenizer.vocab_size,
        "label_names": names,
        "label_counts": counts.tolist(),
        "stats": stats,
    }
    atomic_write_text(directory / COMPLETE_MARKER, json.dumps(meta))  # compact: 670K label names


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars or log lines while reading and caching: the summary log line says what
    happened, and a failure is re-raised as one sentence (datasets would log it once more before)."""
    import datasets  # imported where used: it takes seconds, and batching or synthetic data need none of it

    were_off = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not were_off:
            datasets.enable_progress_bars()


def open_corpus(directory: Path, cache_hit: bool) -> Corpus:
    """A cache directory -> Corpus; the splits are memory-mapped Arrow files."""
    import datasets

    try:
        meta = json.loads((directory / COMPLETE_MARKER).read_text())
        parts = {s: datasets.load_from_disk(str(directory / s)) for s in meta["splits"]}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"the corpus cache {directory} is unreadable ({e}); delete that directory to rebuild it") from e
    return Corpus(
        train=parts["train"], test=parts["test"], valid=parts.get("valid"),
        label_names=meta["label_names"], label_counts=np.asarray(meta["label_counts"], dtype=np.int64),
        vocab_size=int(meta["vocab_size"]), tokenizer=tok.load_tokenizer(directory), stats=meta["stats"],
        cache_path=directory, cache_hit=cache_hit, label_counts_docs=len(parts["train"]),
    )


def validation_indices(num_train: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) training row indices, both ascending: a seeded draw of round(fraction x n) rows (at least 1)."""
    held = max(1, round(fraction * num_train))
    if held >= num_train:
        raise ConfigError(
            f"config key 'data.valid_fraction' ({fraction}) would hold out all {num_train} training documents; lower it"
        )
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[held:]), np.sort(order[:held])


def hold_out_validation(corpus: Corpus, data: DataConfig, log: Callable[[str], None]) -> None:
    """Split `data.valid_fraction` of train into `corpus.valid`, in place (the cached corpus is untouched).

    The tokenizer, the label vocabulary and `label_counts` (propensities) stay those of the whole
    training file, so a run with and without a hold-out shares one cache and one label space.
    """
    if data.valid_fraction <= 0.0:
        return
    if corpus.valid is not None:
        log(f"data: the corpus has its own validation split ({len(corpus.valid)} docs); data.valid_fraction is not used")
        return
    kept, held = validation_indices(len(corpus.train), data.valid_fraction, data.valid_seed)
    full = corpus.train
    corpus.train, corpus.valid = full.select(kept), full.select(held)
    corpus.stats = {**corpus.stats, "train_docs": len(kept), "valid_docs": len(held), "valid_held_out_of_train": len(held)}


def whole_train_token_ids(corpus: Corpus, data: DataConfig, synth: SyntheticConfig) -> Iterator[list[int]]:
    """The token ids of `corpus.train`'s documents without the data.max_len cut, in row order.

    The cache keeps truncated documents only, so the training texts are read and tokenized again
    (same reader, bad-line policy, tokenizer and hold-out as the corpus).
    """
    _, read = source_inputs(data, synth)
    with quiet_datasets():
        texts = read().splits["train"].texts
    if corpus.stats.get("valid_held_out_of_train"):
        kept, _ = validation_indices(len(texts), data.valid_fraction, data.valid_seed)
        texts = [texts[i] for i in kept]
    if len(texts) != len(corpus.train):
        raise DataError(f"the training texts now give {len(texts)} documents but the corpus cache {corpus.cache_path} "
                        f"holds {len(corpus.train)}; delete that directory to rebuild it")
    for lo in range(0, len(texts), ENCODE_CHUNK):
        yield from corpus.tokenizer.encode_batch(texts[lo : lo + ENCODE_CHUNK])


STAT_WORDS = {
    "truncated": "documents truncated at data.max_len", "docs_without_tokens": "documents without a token",
    "duplicate_labels": "repeated labels removed", "unseen_labels_dropped": "occurrences of labels unseen in training dropped",
    "docs_without_labels": "documents left without labels", "skipped_empty": "empty documents skipped",
    "skipped_no_labels": "documents without labels skipped", "skipped_undecodable": "lines not UTF-8 skipped",
    "skipped_malformed": "malformed lines skipped",
}
"""What `stats_summary` says of each per-split count that is not zero (the module docstring defines them)."""


def stats_summary(stats: dict) -> str:
    """`Corpus.stats` in a line: each split's tokens and unknown share, then only the counts that are not zero."""
    parts = []
    for s in SPLITS:
        if f"{s}_docs" not in stats:
            continue
        tokens, unknown = stats.get(f"{s}_tokens", 0), stats.get(f"{s}_unk_tokens", 0)
        words = [f"{tokens:,} tokens ({100 * unknown / max(tokens, 1):.1f}% unknown)"]
        words += [f"{stats[f'{s}_{key}']:,} {what}" for key, what in STAT_WORDS.items() if stats.get(f"{s}_{key}")]
        parts.append(f"{s} " + ", ".join(words))
    if stats.get("valid_held_out_of_train"):
        parts.append(f"valid: {stats['valid_held_out_of_train']:,} documents held out of train (data.valid_fraction)")
    return "; ".join(parts)


def load_corpus(data: DataConfig, synth: SyntheticConfig, log: Callable[[str], None] | None = None) -> Corpus:
    """The corpus the config describes, from the cache when it was built before (see the module docstring)."""
    started = time.perf_counter()
    source, read = source_inputs(data, synth)  # path checks first: a missing file fails in a moment
    inputs = cache_inputs(data, source)
    with quiet_datasets():
        path, hit = build_once(data.cache_dir, cache_key(inputs), inputs, lambda tmp: build_corpus(tmp, read, data))
        corpus = open_corpus(path, hit)
    hold_out_validation(corpus, data, log or logger.info)
    st = corpus.stats
    problems = {k: v for k, v in st.items() if v and ("skipped" in k or "unseen" in k or "without" in k)}
    (log or logger.info)(
        f"data: {data.format} corpus {'loaded from' if hit else 'built into'} {path} in {time.perf_counter() - started:.1f}s: "
        + ", ".join(f"{s} {st[f'{s}_docs']} docs" for s in SPLITS if f"{s}_docs" in st)
        + f", {corpus.num_labels} labels, vocabulary {corpus.vocab_size} ({data.tokenizer})"
        + (f"; {', '.join(f'{k} {v}' for k, v in problems.items())}" if problems else "")
    )
    return corpus
