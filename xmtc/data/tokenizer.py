"""Tokenizers trained on the training texts: a lower-cased word vocabulary, or a SentencePiece unigram.

Both reserve id 0 for padding and id 1 for unknown tokens, so an embedding table of `vocab_size`
rows with `padding_idx=0` fits either. `encode` returns every token; truncation to `data.max_len`
happens when a corpus is cached (`xmtc.data.loader.encode_texts`) and again in `collate`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from xmtc.config import ConfigError, DataError
from xmtc.io import atomic_write_bytes, atomic_write_json, atomic_write_text

PAD_ID = 0
UNK_ID = 1
WORD = re.compile(r"\w+")
"""Words of ASCII text, and of any text for a tokenizer saved before words kept their combining marks."""
SPM_TRAIN_CHARS = 20_000_000
"""SentencePiece trains on a seeded sample of training documents of about this many characters."""
SPM_LINE_WORDS = 200
"""Documents are cut into lines of at most this many words for SentencePiece..."""
SPM_LINE_BYTES = 4000
"""...and at most this many UTF-8 bytes: SentencePiece silently drops a longer line (its cap is 4192
bytes), and text without spaces (Chinese, Japanese) is one long "word"."""
SPM_TRAIN_THREADS = 16
"""SentencePiece's model depends on its thread count, so training always uses this many (not the
machine's cores): the same corpus gives the same token ids on every machine."""


@functools.cache
def word_with_marks() -> re.Pattern[str]:
    """A run of `\\w` and the combining marks (Unicode category M) after its first character. `\\w` holds no
    mark, so `\\w+` cut "हिन्दी" into "ह", "न", "द" (its vowel signs and virama dropped) and split a decomposed
    "é" (e + U+0301) off its word. Built on first use: a scan of every code point, a fraction of a second."""
    runs: list[list[int]] = []
    for c in range(sys.maxunicode + 1):
        if unicodedata.category(chr(c))[0] == "M":
            if runs and runs[-1][1] == c - 1:
                runs[-1][1] = c
            else:
                runs.append([c, c])
    marks = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in runs)
    return re.compile(rf"\w+(?:[{marks}]+\w*)*")


class WhitespaceTokenizer:
    """Lower-cased words (`\\w` runs with their combining marks, or plain whitespace for pre-tokenized text); ids by
    training frequency. `marks=False`: a tokenizer saved before words kept their marks, which splits on `\\w+`."""

    kind = "whitespace"

    def __init__(self, words: Sequence[str], pretokenized: bool = False, marks: bool = True):
        self.words = list(words)
        self.pretokenized = pretokenized
        self.marks = marks
        self.index = {w: i + 2 for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 2

    def split(self, text: str) -> list[str]:
        text = text.lower()
        if self.pretokenized:
            return text.split()
        return (WORD if text.isascii() or not self.marks else word_with_marks()).findall(text)  # ASCII holds no mark

    def encode(self, text: str) -> list[int]:
        get = self.index.get
        return [get(w, UNK_ID) for w in self.split(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, min_count: int, pretokenized: bool) -> "WhitespaceTokenizer":
        """The `vocab_size - 2` most frequent words seen at least `min_count` times (ties by word)."""
        splitter = cls([], pretokenized)
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(splitter.split(t))
        kept = [w for w, c in counts.items() if c >= min_count]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept[: vocab_size - 2], pretokenized)

    def save(self, directory: Path) -> None:
        spec = {"kind": self.kind, "pretokenized": self.pretokenized, "marks": self.marks, "words": self.words}
        atomic_write_text(directory / "tokenizer.json", json.dumps(spec, ensure_ascii=False))


class SentencePieceTokenizer:
    """A SentencePiece unigram model (pad=0, unk=1, no bos/eos), kept as its serialized bytes."""

    kind = "sentencepiece"
    model_file = "spm.model"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The cores this process may run on (a SLURM job's or taskset's share), not every core of the node.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.sp.encode(list(texts), num_threads=cores)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, seed: int = 0) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_spm_lines(texts, seed),
                model_writer=model,
                model_type="unigram",
                vocab_size=vocab_size,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=-1,
                eos_id=-1,
                hard_vocab_limit=False,  # a small corpus yields fewer pieces rather than an error
                num_threads=SPM_TRAIN_THREADS,
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. not one usable line in the training texts
            raise DataError(f"SentencePiece could not train on the training texts ({e}); try data.tokenizer \"whitespace\"") from e
        return cls(model.getvalue())

    def save(self, directory: Path) -> None:
        atomic_write_bytes(directory / self.model_file, self.model_proto)
        atomic_write_json(directory / "tokenizer.json", {"kind": self.kind, "model": self.model_file})


def _spm_lines(texts: Sequence[str], seed: int) -> Iterator[str]:
    """A seeded sample of documents (about SPM_TRAIN_CHARS), cut into lines of at most
    SPM_LINE_WORDS words and SPM_LINE_BYTES bytes (a longer word is cut into pieces)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    budget = SPM_TRAIN_CHARS
    piece_chars = SPM_LINE_BYTES // 4  # a UTF-8 character takes at most 4 bytes
    for i in order:
        line: list[str] = []
        size = 0
        for word in texts[i].split():
            for start in range(0, len(word), piece_chars):
                piece = word[start : start + piece_chars]
                n = len(piece.encode("utf-8")) + 1
                if line and (len(line) == SPM_LINE_WORDS or size + n > SPM_LINE_BYTES):
                    yield " ".join(line)
                    line, size = [], 0
                line.append(piece)
                size += n
        if line:
            yield " ".join(line)
        budget -= len(texts[i])
        if budget <= 0:
            return


Tokenizer = WhitespaceTokenizer | SentencePieceTokenizer


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int, min_count: int, pretokenized: bool) -> Tokenizer:
    if vocab_size < 3:
        raise ConfigError(f"config key 'data.vocab_size' is {vocab_size}; it needs room for padding, unknown and at least one token")
    if kind == "whitespace":
        return WhitespaceTokenizer.train(texts, vocab_size, min_count, pretokenized)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size)
    raise ConfigError(f'config key \'data.tokenizer\' is "{kind}"; allowed: "whitespace", "sentencepiece"')


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in a corpus cache directory (or any directory `save` wrote to)."""
    directory = Path(directory)
    try:
        spec = json.loads((directory / "tokenizer.json").read_text())
        if spec["kind"] == "whitespace":
            return WhitespaceTokenizer(spec["words"], spec["pretokenized"], spec.get("marks", False))
        return SentencePieceTokenizer((directory / spec["model"]).read_bytes())
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{directory / 'tokenizer.json'} is missing or unreadable ({e}); delete {directory} to rebuild it") from e
