"""Readers: files on disk -> raw documents (text + label names), with one policy for bad input.

Every reader returns `RawSplit`s. A bad document (empty text, no labels, bytes that are not UTF-8)
either stops the run with one sentence naming the file and line (`data.bad_lines = "error"`) or is
skipped and counted (`"skip"`). A labels file whose line count differs from its texts file always
stops: the pairing of every later line would be wrong. Plain line files (xmtc_text, sgm) are read here; tables
and Hub datasets, through `datasets`, in `xmtc.data.tables`.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmtc.config import ConfigError, DataError

XC_REPOSITORY = "the Extreme Classification Repository (http://manikvarma.org/downloads/XC/XMLRepository.html)"
SGM_REPOSITORY = "the SGM repository (https://github.com/lancopku/SGM), which links RCV1-V2 and AAPD"
SKIP_REASONS = ("empty", "no_labels", "undecodable", "malformed")


@dataclass
class RawSplit:
    """One split as read: texts, label names (deduplicated, file order), and where each came from."""

    name: str
    locate: Callable[[int], str] = str
    """Source row (0-based) -> where its labels are, e.g. "test_labels.txt line 12", for label messages."""
    texts: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Per kept document, its 0-based row in the source (skipped rows leave gaps)."""
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    duplicate_labels: int = 0
    source: str = ""
    """Where the split was read from (a file, a Hub split), for messages about the split as a whole."""


def _kind(value: Any) -> str:
    """A parsed value's type as JSON names it, with its article."""
    names = {bool: "a boolean", int: "an integer", float: "a floating-point number", str: "a string",
             list: "a list", tuple: "a list", dict: "an object"}
    return next((name for t, name in names.items() if isinstance(value, t)), f"a {type(value).__name__}")


def _shown(value: Any, width: int = 60) -> str:
    """A value as the file spells it (JSON where it can be), cut to `width` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class SplitBuilder:
    """Accumulates documents of one split, applying the bad-lines policy to each."""

    def __init__(self, name: str, bad_lines: str, locate_labels: Callable[[int], str], source: str = ""):
        if bad_lines not in ("error", "skip"):
            raise ConfigError(f'config key \'data.bad_lines\' is "{bad_lines}"; allowed: "error", "skip"')
        self.split = RawSplit(name, locate_labels, source=source)
        self.bad_lines = bad_lines

    def bad(self, reason: str, message: str) -> bool:
        if self.bad_lines == "error":
            raise DataError(f'{message}; fix it or set data.bad_lines to "skip" to skip such documents')
        self.split.skipped[reason] += 1
        return False

    def text_ok(self, text: Any, at: str) -> bool:
        """True if usable; a bad text raises or is counted (None: the line was not UTF-8)."""
        if text is None:
            return self.bad("undecodable", f"{at} is not valid UTF-8")
        if not isinstance(text, str):
            raise DataError(f"{at} holds a {type(text).__name__}, expected the document text as a string")
        if not text.strip():
            return self.bad("empty", f"{at} is an empty document")
        return True

    def add(self, row: int, text: Any, labels: Any, text_at: str) -> bool:
        """True if kept. Labels may be a list or one space-separated string; None: the line was not UTF-8."""
        labels_at = self.split.locate(row)
        if text is None:
            return self.bad("undecodable", f"{text_at} is not valid UTF-8")
        if labels is None:
            return self.bad("undecodable", f"{labels_at} is not valid UTF-8")
        if isinstance(labels, str):
            cell = labels.strip()
            if cell[:1] == "[" and cell[-1:] == "]" and any(c in cell for c in "'\","):
                # What DataFrame.to_csv writes for a list column: split on spaces it made the labels "['a'," and "'b']".
                raise DataError(f"{labels_at} is {_shown(cell)}, the text of a list (what pandas' to_csv writes for a list "
                                "column), not space-separated labels; write the labels separated by spaces, or save the "
                                "table as JSON Lines or Parquet, which keep lists")
            labels = labels.split()
        elif isinstance(labels, int) and not isinstance(labels, bool):  # a CSV column of single numeric labels
            labels = [str(labels)]
        elif isinstance(labels, (list, tuple)):
            # A label inside a list is a name or a number; str() of a nested list or an object would make up a
            # label ("['a']") that no line holds.
            odd = next((x for x in labels if x is not None and (isinstance(x, bool) or not isinstance(x, (str, int)))), None)
            if odd is not None:
                raise DataError(f"{labels_at} has the label {_shown(odd)}, {_kind(odd)}; each label must be a string or an integer")
            labels = [str(x).strip() for x in labels if x is not None and str(x).strip()]
            broken = next((x for x in labels if "\n" in x or "\r" in x), None)
            if broken is not None:
                raise DataError(f"{labels_at} has the label {broken!r}, which holds a line break; a label name must be one line")
        else:
            raise DataError(f"{labels_at} holds a {type(labels).__name__}, expected a list of labels or a space-separated string")
        if not self.text_ok(text, text_at):
            return False
        if not labels:
            return self.bad("no_labels", f"{labels_at} has no labels")
        unique = list(dict.fromkeys(labels))
        self.split.duplicate_labels += len(labels) - len(unique)
        self.split.texts.append(text)
        self.split.labels.append(unique)
        self.split.rows.append(row)
        return True


# ---------------------------------------------------------------------------------------------
# Plain line files


def read_lines(path: str | os.PathLike) -> list[str | None]:
    """Lines of a UTF-8 file split on "\\n" only (as `wc -l` counts); None for a line that is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:  # no read permission, an I/O error of a network filesystem
        raise DataError(f"{path} cannot be read ({e.strerror or e})") from e
    if not data:
        return []
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
                      (codecs.BOM_UTF16_BE, "UTF-16")):  # UTF-32 LE's mark begins with UTF-16 LE's: it goes first
        if data.startswith(bom):
            raise DataError(f"{path} is {name} (it starts with a {name} byte-order mark), not UTF-8; convert it, "
                            f"e.g. iconv -f {name} -t UTF-8")
    if data.startswith(codecs.BOM_UTF8):  # editors on Windows write one; it is not part of the first line
        data = data[len(codecs.BOM_UTF8) :]
    if b"\r" in data and b"\n" not in data and data.rstrip(b"\r").count(b"\r"):
        raise DataError(f"{path} ends its lines with carriage returns only (classic Mac OS), so it reads as one line; "
                        "convert them to newlines, e.g. tr '\\r' '\\n'")
    if data.endswith(b"\n"):  # the last line's terminator, not an empty line after it
        data = data[:-1]
    try:
        # One decode of the whole file is the fast path; the per-line decode below runs only on bad bytes.
        lines: list[str | None] = list(data.decode("utf-8").split("\n"))
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(None)
    lines = [line[:-1] if line is not None and line.endswith("\r") else line for line in lines]
    if codecs.BOM_UTF8 in data:  # files joined with `cat`: a byte-order mark starts a later line, not its first label
        lines = [line[1:] if line and line[0] == "\ufeff" else line for line in lines]
    return lines


def read_texts(path: str | os.PathLike, bad_lines: str = "error") -> tuple[list[str], list[int]]:
    """A texts file (one document per line) -> (texts, their 1-based line numbers).

    Empty or undecodable lines raise DataError naming the file and line, or with bad_lines="skip" are
    left out; the line numbers say which lines the kept texts came from.
    """
    builder = SplitBuilder("texts", bad_lines, str)
    texts, numbers = [], []
    for i, line in enumerate(read_lines(path)):
        if builder.text_ok(line, f"{path} line {i + 1}"):
            texts.append(line)
            numbers.append(i + 1)
    return texts, numbers


def read_paired_files(name: str, texts_path: Path, labels_path: Path, bad_lines: str) -> RawSplit:
    """A texts file and a labels file with one line per document each."""
    texts = read_lines(texts_path)
    labels = read_lines(labels_path)
    if len(texts) != len(labels):
        raise DataError(
            f"{texts_path} has {len(texts)} lines but {labels_path} has {len(labels)}; "
            "each document needs exactly one labels line"
        )
    builder = SplitBuilder(name, bad_lines, lambda i: f"{labels_path} line {i + 1}", f"{texts_path} and {labels_path}")
    for i, (text, label_line) in enumerate(zip(texts, labels)):
        builder.add(i, text, label_line, f"{texts_path} line {i + 1}")
    return builder.split


def _require_files(directory: str, names: Sequence[str], layout: str, where_to_get: str) -> Path:
    root = Path(directory)
    if not directory or not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise DataError(
            f"data.path '{directory}'{where} is not a directory; the {layout} layout expects {', '.join(names)} "
            f"in it (real datasets: {where_to_get})"
        )
    for n in names:
        if not (root / n).is_file():
            raise DataError(
                f"{root / n} is missing; the {layout} layout expects {', '.join(names)} in {root} "
                f"(real datasets: {where_to_get})"
            )
    return root


XMTC_TEXT_FILES = ("train_texts.txt", "train_labels.txt", "test_texts.txt", "test_labels.txt")


def xmtc_text_files(directory: str) -> list[Path]:
    root = _require_files(directory, XMTC_TEXT_FILES, "xmtc_text", XC_REPOSITORY)
    return [root / n for n in XMTC_TEXT_FILES]


def read_xmtc_text(directory: str, bad_lines: str) -> dict[str, RawSplit]:
    root = Path(directory)
    xmtc_text_files(directory)
    return {
        s: read_paired_files(s, root / f"{s}_texts.txt", root / f"{s}_labels.txt", bad_lines)
        for s in ("train", "test")
    }


def sgm_files(directory: str) -> list[Path]:
    """{train,test}.src/.tgt are required; valid.src/.tgt are optional but come as a pair."""
    required = ("train.src", "train.tgt", "test.src", "test.tgt")
    root = _require_files(directory, required, "sgm", SGM_REPOSITORY)
    valid = [root / "valid.src", root / "valid.tgt"]
    present = [p.is_file() for p in valid]
    if any(present) and not all(present):
        have, lack = (valid[0], valid[1]) if present[0] else (valid[1], valid[0])
        raise DataError(f"{have} exists but {lack} is missing; the sgm validation split needs both")
    return [root / n for n in required] + (valid if all(present) else [])


def read_sgm(directory: str, bad_lines: str) -> dict[str, RawSplit]:
    """The SGM code's format: `.src` lines of already-tokenized words, `.tgt` lines of labels."""
    root = Path(directory)
    files = sgm_files(directory)
    names = ["train", "test"] + (["valid"] if root / "valid.src" in files else [])
    return {s: read_paired_files(s, root / f"{s}.src", root / f"{s}.tgt", bad_lines) for s in names}
