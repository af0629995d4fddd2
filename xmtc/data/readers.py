"""Readers: files on disk -> raw documents (text + label names), with one policy for bad input.

Every reader returns `RawSplit`s. A bad document (empty text, no labels, bytes that are not UTF-8)
either stops the run with one sentence naming the file and line (`data.bad_lines = "error"`) or is
skipped and counted (`"skip"`). A labels file whose line count differs from its texts file always
stops: the pairing of every later line would be wrong.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmtc.config import ConfigError, DataError

XC_REPOSITORY = "the Extreme Classification Repository (http://manikvarma.org/downloads/XC/XMLRepository.html)"
SGM_REPOSITORY = "the SGM repository (https://github.com/lancopku/SGM), which links RCV1-V2 and AAPD"
SKIP_REASONS = ("empty", "no_labels", "undecodable", "malformed")
TABLE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
    data = path.read_bytes()
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
    return [line[:-1] if line is not None and line.endswith("\r") else line for line in lines]


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


# ---------------------------------------------------------------------------------------------
# Tables and Hub datasets (through `datasets`)


def table_loader(path_str: str, key: str) -> str:
    if not path_str:
        raise ConfigError(f'config key \'{key}\' is empty; the "table" format needs a .jsonl, .json, .csv or .parquet file')
    path = Path(path_str)
    loader = TABLE_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ConfigError(f"config key '{key}' is {path_str}, whose extension is not one of {', '.join(TABLE_LOADERS)}")
    if not path.is_file():
        raise DataError(f"{path} (config key '{key}') does not exist or is not a file")
    return loader


MAX_JSON_DEPTH = 63
"""A record nested deeper (its own braces included) is a bad line: `datasets` refuses the whole file at 64
("Recursion level in ArrowSchema struct exceeded", measured), and pyarrow's parser overflows its stack and kills
the process somewhere between 10,000 and 30,000 levels (measured)."""

CRASH_SCAN = 5_000
"""Lines with more brackets than this are measured before pyarrow sees the file (two str.count calls per line;
ordinary texts never pay more); shallower excess is found after datasets refuses the file."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _json_depth_problem(line: str, measure_above: int = MAX_JSON_DEPTH) -> str | None:
    """Why a line nests too deeply, or None; measured (strings left out) only when the line holds more than
    `measure_above` opening brackets, else two str.count calls."""
    if line.count("[") + line.count("{") <= measure_above:
        return None
    import numpy as np

    code = np.frombuffer(_STRING.sub('""', line).encode("utf-8"), dtype=np.uint8)
    steps = np.isin(code, (ord("["), ord("{"))).astype(np.int64) - np.isin(code, (ord("]"), ord("}")))
    depth = int(np.cumsum(steps).max(initial=0))
    return f"nests JSON {depth} levels deep (at most {MAX_JSON_DEPTH} are read)" if depth > MAX_JSON_DEPTH else None


def _record_lines(path: Path, jsonl: bool = False) -> tuple[list[int], list[int], list[int]]:
    """Text tables -> 1-based numbers of (the non-blank lines, the lines that are not UTF-8, with `jsonl` the
    lines nested too deeply for pyarrow). No JSON is parsed here: in JSON Lines that pyarrow reads whole,
    record i is on line [i]."""
    records, undecodable, deep = [], [], []
    for i, line in enumerate(read_lines(path)):
        if line is None:
            undecodable.append(i + 1)
        elif line.strip(JSON_WHITESPACE):
            (deep if jsonl and _json_depth_problem(line, CRASH_SCAN) else records).append(i + 1)
    return records, undecodable, deep


def _json_lines_layout(path: Path) -> bool:
    """A .jsonl file, or a .json file that `datasets` hands to pyarrow line by line: one that does not begin
    with "[" (an array, which it parses with ujson first, whose depth limit refuses a deep record cleanly)."""
    suffix = path.suffix.lower()
    if suffix != ".json":
        return suffix == ".jsonl"
    with open(path, "rb") as f:
        head = f.read(len(codecs.BOM_UTF8) + 1)
    return not head.removeprefix(codecs.BOM_UTF8).startswith(b"[")


def _scan_text_table(path: Path) -> list[int]:
    """Text tables: name the first line that is not UTF-8 (the `datasets` readers would not), and in JSON
    Lines layout the first bad line when one is too deep for pyarrow, which would crash the process on it.
    Returns the 1-based numbers of the non-blank lines."""
    records, undecodable, deep = _record_lines(path, jsonl=_json_lines_layout(path))
    if undecodable:
        raise DataError(f"{path} line {undecodable[0]} is not valid UTF-8; a table file must be UTF-8 throughout")
    if deep:  # pyarrow would crash on it: the first bad line (this one, or an earlier malformed one) is named
        raise DataError(_first_bad_json_line(path) or f"{path} line {deep[0]} nests JSON too deeply")
    return records


SCRATCH_STALE_S = 24 * 3600
"""A scratch conversion this old was left by a killed process (a read takes minutes, not a day): removed."""


def scratch_dir(hf_cache_dir: str) -> str:
    """A fresh directory for `datasets`' conversion of a file, beside our cache; in the system's temporary
    directory when the cache cannot be written (a read-only cache still serves what it holds)."""
    try:
        Path(hf_cache_dir).mkdir(parents=True, exist_ok=True)
        now = time.time()
        for stale in Path(hf_cache_dir).glob("read-*"):
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > SCRATCH_STALE_S:
                    shutil.rmtree(stale, ignore_errors=True)
        return tempfile.mkdtemp(dir=hf_cache_dir, prefix="read-")
    except OSError:
        return tempfile.mkdtemp(prefix="xmtc-read-")


def _is_jsonl(path: Path, loader: str) -> bool:
    return loader == "json" and path.suffix.lower() == ".jsonl"


JSON_WHITESPACE = " \t\r\n"
"""What JSON (and pyarrow's JSON Lines reader) calls blank; str.strip() would also strip U+00A0 or a form feed,
which pyarrow refuses."""


def _json_line_problem(line: str) -> str | None:
    """Why one non-blank JSON Lines line is not a record, or None."""
    if problem := _json_depth_problem(line):
        return problem
    try:
        value = json.loads(line)
    except RecursionError:
        return f"nests JSON too deeply (at most {MAX_JSON_DEPTH} levels are read)"
    except ValueError as e:
        return f"is not valid JSON ({e})"
    if not isinstance(value, dict):
        return f"holds a JSON {type(value).__name__}, not an object"
    try:  # json accepts an escaped lone surrogate ("\ud800"), which is no character: pyarrow refuses it
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "holds an escaped lone surrogate (\\ud800-\\udfff), which is not a character"
    return None


def _first_bad_json_line(path: Path) -> str | None:
    for i, line in enumerate(read_lines(path)):
        if line is None:
            return f"{path} line {i + 1} is not valid UTF-8; a table file must be UTF-8 throughout"
        if line.strip(JSON_WHITESPACE) and (problem := _json_line_problem(line)):
            return f"{path} line {i + 1} {problem}; each line must be one JSON object"
    return None


def _jsonl_without_bad_lines(path: Path, copy: Path) -> tuple[list[int], dict[str, int], Path]:
    """JSON Lines with bad lines -> (numbers of its good record lines, {reason: how many skipped}, a copy of
    the good lines to read); one pass over the file, `path` itself when nothing is bad."""
    lines = read_lines(path)
    records: list[int] = []
    bad: dict[str, int] = {"undecodable": 0, "malformed": 0}
    for i, line in enumerate(lines):
        if line is None:
            bad["undecodable"] += 1
        elif line.strip(JSON_WHITESPACE):
            if _json_line_problem(line):
                bad["malformed"] += 1
            else:
                records.append(i + 1)
    if not any(bad.values()):
        return records, {}, path
    copy.write_text("".join(lines[n - 1] + "\n" for n in records), encoding="utf-8")
    return records, bad, copy


def _row_locator(path: Path, loader: str, lines: list[int] | None) -> Callable[[int], str]:
    if _is_jsonl(path, loader) and lines is not None:
        return lambda i: f"{path} line {lines[i] if i < len(lines) else i + 1}"
    if loader == "csv":
        return lambda i: f"{path} row {i + 1} (after the header)"
    return lambda i: f"{path} row {i + 1}"


def _hub_locator(source: str) -> Callable[[int], str]:
    return lambda i: f"{source} row {i + 1}"


def split_from_columns(
    name: str, table: Any, text_column: str, labels_column: str, bad_lines: str, locate: Callable[[int], str], source: str
) -> RawSplit:
    """A `datasets.Dataset` (or anything with column_names and column access) -> RawSplit."""
    for column, key in ((text_column, "data.text_column"), (labels_column, "data.labels_column")):
        if column not in table.column_names:
            raise DataError(
                f"{source} has no column '{column}' (config key '{key}'); its columns are: {', '.join(table.column_names)}"
            )
    builder = SplitBuilder(name, bad_lines, locate, source)
    for i, (text, labs) in enumerate(zip(table[text_column], table[labels_column])):
        builder.add(i, "" if text is None else text, [] if labs is None else labs, locate(i))
    return builder.split


def _csv_as_written(*columns: str) -> dict[str, Any]:
    """CSV cells of `columns` as written: no type guessing ("007" stays "007"; a column of numbers with one
    empty cell does not turn into floats), no missing-value words ("NA" and "null" are a label and a text),
    and never a first column taken as the row index (pandas does that when rows have one field more than
    the header; `_check_csv_fields` refuses such rows first)."""
    return {"converters": dict.fromkeys(columns, str), "keep_default_na": False, "na_filter": False, "index_col": False}


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # not Parquet at all: load_dataset's error says so
        return None


def _check_csv_fields(path: Path) -> int:
    """A CSV row with more fields than the header stops the run, naming its line: pandas would shift every
    column of the file by one (an unquoted comma in a text) or drop the extra cells. Fewer fields are missing
    cells, which the bad-lines policy handles (a document without labels). Returns the number of rows."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        start, rows = 1, 0
        for row in reader:
            if row:
                rows += header is not None
                if header is None:
                    header = row
                elif len(row) > len(header):
                    raise DataError(
                        f"{path} line {start} has {len(row)} fields but its header has {len(header)} "
                        f"({', '.join(header)}); quote a cell that holds a comma"
                    )
            start = reader.line_num + 1
    return rows


def read_table(
    train_file: str, test_file: str, text_column: str, labels_column: str, bad_lines: str, hf_cache_dir: str
) -> dict[str, RawSplit]:
    from datasets import load_dataset

    out = {}
    # datasets' own Arrow conversion goes to a fresh directory, removed after reading: its cache is keyed by
    # path and mtime, which an edit can keep, and ours (keyed by content) is what later runs read.
    scratch = scratch_dir(hf_cache_dir)
    try:
        for name, file, key in (("train", train_file, "data.train_file"), ("test", test_file, "data.test_file")):
            loader = table_loader(file, key)
            path = Path(file)
            jsonl = _is_jsonl(path, loader)
            skip = jsonl and bad_lines == "skip"
            skipped: dict[str, int] = {}
            source = path
            copy = Path(scratch) / f"{name}.jsonl"
            if loader == "parquet":
                lines = None
            elif skip:
                # A line that is not UTF-8 or not one JSON object is one bad document: skipped and counted. The
                # lines are parsed here only when one is not UTF-8; else pyarrow reads the file first, and only
                # when it refuses a line (or a line holds several records) are the bad lines found and left out.
                lines, undecodable, deep = _record_lines(path, jsonl=True)
                if undecodable or deep:
                    lines, skipped, source = _jsonl_without_bad_lines(path, copy)
            else:
                lines = _scan_text_table(path)
            if loader == "csv" and not _check_csv_fields(path):
                raise DataError(f"{path} has no rows below its header" if lines else f"{path} is empty")
            if loader == "parquet" and _parquet_rows(path) == 0:
                raise DataError(f"{path} has no rows")
            options = _csv_as_written(text_column, labels_column) if loader == "csv" else {}

            def load(src: Path, count: list[int] | None):
                """The table of `src`; DataError if `datasets` cannot read it or (JSON Lines) it does not hold
                one record per line of `count`."""
                try:
                    table = load_dataset(loader, data_files={name: str(src)}, split=name, cache_dir=scratch, **options)
                except Exception as e:  # datasets raises many types (ArrowInvalid, DatasetGenerationError, ...)
                    cause = e.__cause__ or e
                    raise DataError(f"{path} could not be read as {loader}: {type(cause).__name__}: {cause}".strip()) from e
                if count is not None and len(table) != len(count):
                    raise DataError(f"{path} holds {len(table)} records on {len(count)} lines; each line must be one JSON object")
                return table

            table = None
            if lines or not jsonl:
                try:
                    table = load(source, lines if jsonl else None)
                except DataError as e:
                    if not jsonl or skipped:
                        raise
                    if not skip:
                        bad_line = _first_bad_json_line(path)
                        raise (DataError(bad_line) if bad_line else e) from e.__cause__
                    lines, skipped, source = _jsonl_without_bad_lines(path, copy)
                    if not skipped:
                        raise
                    if lines:
                        table = load(source, lines)
            if table is None:  # JSON Lines without a record
                if not skipped:
                    raise DataError(f"{path} holds no records")
                split = SplitBuilder(name, bad_lines, str, str(path)).split  # nothing left: said with the counts
                split.skipped.update(skipped)
                out[name] = split
                continue
            locate = _row_locator(path, loader, lines)
            split = split_from_columns(name, table, text_column, labels_column, bad_lines, locate, str(path))
            for reason, n in skipped.items():
                split.skipped[reason] += n
            out[name] = split
            del table
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def local_hub_files(hub_name: str) -> list[Path] | None:
    """The data files of a "hub" dataset that is a local directory (hidden entries left out), else None."""
    root = Path(hub_name) if hub_name else None
    if root is None or not root.is_dir():
        return None
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts))


def load_hub(hub_name: str, hub_config: str, cache_dir: str | None = None) -> Any:
    """The Hub dataset (a DatasetDict); a local directory of data files also works (offline).
    `cache_dir`: where `datasets` converts it (default: its own cache, keyed by path and modification time)."""
    from datasets import load_dataset

    if not hub_name:
        raise ConfigError('config key \'data.hub_name\' is empty; the "hub" format needs a dataset name')
    try:
        return load_dataset(hub_name, hub_config or None, cache_dir=cache_dir)
    except Exception as e:  # network, missing dataset, bad config name: all user-facing
        raise DataError(
            f"Hub dataset '{hub_name}'{f' config {hub_config!r}' if hub_config else ''} could not be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the name and network, or "
            'download it and use data.format "table"'
        ) from e


def hub_split(loaded: Any, hub_name: str, split: str, key: str) -> Any:
    if split not in loaded:
        raise DataError(f"Hub dataset '{hub_name}' has no split '{split}' (config key '{key}'); it has: {', '.join(loaded)}")
    return loaded[split]


def read_local_hub(
    hub_name: str, hub_config: str, train_split: str, test_split: str, text_column: str, labels_column: str, bad_lines: str,
    hf_cache_dir: str,
) -> dict[str, RawSplit]:
    """A "hub" dataset in a local directory, converted by `datasets` in a fresh directory removed after
    reading: its own cache follows paths and modification times, which an edit can keep (ours follows content)."""
    scratch = scratch_dir(hf_cache_dir)
    try:
        loaded = load_hub(hub_name, hub_config, cache_dir=scratch)
        out = read_hub(loaded, hub_name, train_split, test_split, text_column, labels_column, bad_lines)
        del loaded
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_hub(
    loaded: Any, hub_name: str, train_split: str, test_split: str, text_column: str, labels_column: str, bad_lines: str
) -> dict[str, RawSplit]:
    out = {}
    parts = (("train", train_split, "data.train_split"), ("test", test_split, "data.test_split"))
    tables = [hub_split(loaded, hub_name, split, key) for _, split, key in parts]  # a missing split is said first
    for (name, split, _), table in zip(parts, tables):
        source = f"Hub dataset '{hub_name}' split '{split}'"
        out[name] = split_from_columns(name, table, text_column, labels_column, bad_lines, _hub_locator(source), source)
    return out
