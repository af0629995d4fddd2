"""Tables (.jsonl, .json, .csv, .parquet) and Hub datasets -> raw documents, through `datasets`.

The same policy for bad input as every reader (`xmtc.data.readers`): a bad record stops the run with one
sentence naming the file and line, or is skipped and counted. A JSON line nested too deeply for pyarrow,
which would kill the process, is found before pyarrow sees the file.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xmtc.config import ConfigError, DataError
from xmtc.data.readers import RawSplit, SplitBuilder, read_lines

TABLE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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


CSV_FIELD_LIMIT = 2**31 - 1
"""Characters a CSV cell may hold (the most the csv module takes on every platform)."""


def _check_csv_fields(path: Path) -> int:
    """A CSV row with more fields than the header stops the run, naming its line: pandas would shift every
    column of the file by one (an unquoted comma in a text) or drop the extra cells. Fewer fields are missing
    cells, which the bad-lines policy handles (a document without labels). Returns the number of rows."""
    import csv

    limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # the csv module's default, 131,072 characters, is a long document
    try:
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
    finally:
        csv.field_size_limit(limit)
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


def check_hub_path(hub_name: str) -> None:
    """ConfigError when `hub_name` is a path (it starts with /, ./, ../ or ~, or has more parts than a Hub name's
    owner/name) that names no directory: `datasets` would be asked for it on the Hub, and its failure read as a
    network or Hub problem."""
    path = Path(hub_name).expanduser()
    if not (hub_name.startswith(("/", "./", "../", "~")) or hub_name.count("/") > 1) or path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"config key 'data.hub_name' is {hub_name}, a file; it takes a Hub name (owner/name) or a directory "
                          'of data files (one table file: data.format "table" with data.train_file/test_file)')
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    import difflib

    near = difflib.get_close_matches(path.name, sorted(p.name for p in parent.iterdir() if p.is_dir()), n=1) if parent == path.parent else []
    raise ConfigError(f"config key 'data.hub_name' is the path {hub_name}, but there is no directory {path.absolute()}"
                      + (f"; did you mean {parent / near[0]}?" if near else f" ({parent.absolute()} is the nearest one that exists)"))


def load_hub(hub_name: str, hub_config: str, cache_dir: str | None = None) -> Any:
    """The Hub dataset (a DatasetDict); a local directory of data files also works (offline).
    `cache_dir`: where `datasets` converts it (default: its own cache, keyed by path and modification time)."""
    from datasets import load_dataset

    if not hub_name:
        raise ConfigError('config key \'data.hub_name\' is empty; the "hub" format needs a dataset name')
    check_hub_path(hub_name)
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
