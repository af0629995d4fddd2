"""Bad input: one sentence naming the file and line, or a counted skip where configured."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest
from data_helpers import TEST_LABELS, TEST_TEXTS, TRAIN_LABELS, TRAIN_TEXTS, write_lines, write_xmtc

from xmtc.config import ConfigError, DataError, SyntheticConfig
from xmtc.data import load_corpus, read_texts
from xmtc.data.readers import read_lines

BAD_BYTES = "caf\xe9".encode("latin-1")  # a lone 0xE9 byte is not UTF-8


def load(make_cfg, root, **kw):
    return load_corpus(make_cfg(format="xmtc_text", path=str(root), **kw), SyntheticConfig())


def raises(message: str):
    return pytest.raises(DataError, match="^" + re.escape(message))


def test_missing_directory(tmp_path, make_cfg, monkeypatch):
    with raises(f"data.path '{tmp_path / 'nope'}' is not a directory; the xmtc_text layout expects train_texts.txt,"):
        load(make_cfg, tmp_path / "nope")
    with pytest.raises(DataError, match="manikvarma.org/downloads/XC/XMLRepository.html"):
        load(make_cfg, tmp_path / "nope")
    monkeypatch.chdir(tmp_path)
    with raises(f"data.path 'shared/nope' (relative to the current directory {tmp_path}) is not a directory"):
        load(make_cfg, "shared/nope")


def test_missing_file(small_xmtc, make_cfg):
    (small_xmtc / "test_labels.txt").unlink()
    with raises(f"{small_xmtc / 'test_labels.txt'} is missing; the xmtc_text layout expects"):
        load(make_cfg, small_xmtc)


def test_missing_sgm_files_point_to_sgm_repo(tmp_path, make_cfg):
    write_lines(tmp_path / "train.src", ["a"])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.tgt'} is missing") + ".*github.com/lancopku/SGM"):
        load_corpus(make_cfg(format="sgm", path=str(tmp_path)), SyntheticConfig())
    for name in ("train.tgt", "test.src", "test.tgt", "valid.src"):
        write_lines(tmp_path / name, ["a"])
    with raises(f"{tmp_path / 'valid.src'} exists but {tmp_path / 'valid.tgt'} is missing"):
        load_corpus(make_cfg(format="sgm", path=str(tmp_path)), SyntheticConfig())


def test_line_count_mismatch(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", train_labels=TRAIN_LABELS[:2])
    with raises(f"{root / 'train_texts.txt'} has 3 lines but {root / 'train_labels.txt'} has 2; "):
        load(make_cfg, root)


def test_empty_document(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", train_texts=[TRAIN_TEXTS[0], "   ", TRAIN_TEXTS[2]])
    with raises(f"{root / 'train_texts.txt'} line 2 is an empty document; fix it or set data.bad_lines to \"skip\""):
        load(make_cfg, root)
    corpus = load(make_cfg, root, bad_lines="skip")
    assert corpus.stats["train_skipped_empty"] == 1 and len(corpus.train) == 2
    assert corpus.train["input_ids"] == [[2, 3, 2], [2, 4]]  # without line 2: apple 3, banana 1, date 1


def test_document_without_labels(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", test_labels=["a", ""])
    with raises(f"{root / 'test_labels.txt'} line 2 has no labels; fix it"):
        load(make_cfg, root)
    corpus = load(make_cfg, root, bad_lines="skip")
    assert corpus.stats["test_skipped_no_labels"] == 1 and corpus.test["labels"] == [[0]]


@pytest.mark.parametrize("which", ["texts", "labels"])
def test_undecodable_line(tmp_path, make_cfg, which):
    root = write_xmtc(tmp_path / "d")
    lines = (TRAIN_TEXTS if which == "texts" else TRAIN_LABELS)
    write_lines(root / f"train_{which}.txt", f"{lines[0]}\n".encode() + BAD_BYTES + f"\n{lines[2]}\n".encode())
    with raises(f"{root / f'train_{which}.txt'} line 2 is not valid UTF-8; fix it"):
        load(make_cfg, root)
    corpus = load(make_cfg, root, bad_lines="skip")
    assert corpus.stats["train_skipped_undecodable"] == 1 and corpus.train["labels"] == [[1, 0], [2, 0]]


def test_crlf_line_ends_are_not_part_of_the_text(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d")
    write_lines(root / "train_labels.txt", "".join(f"{x}\r\n" for x in TRAIN_LABELS).encode())
    assert load(make_cfg, root).label_names == ["a", "b", "c"]


def test_unseen_test_label(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", test_labels=["a", "zzz c"])
    with raises(f"{root / 'test_labels.txt'} line 2 has label 'zzz', which no training document has; "):
        load(make_cfg, root, unseen_labels="error")
    corpus = load(make_cfg, root)  # default: drop
    assert corpus.test["labels"] == [[0], [2]] and corpus.stats["test_unseen_labels_dropped"] == 1


def test_test_document_left_without_labels_is_kept(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", test_labels=["zzz", "c"])
    corpus = load(make_cfg, root)
    assert len(corpus.test) == len(TEST_TEXTS) and corpus.test["labels"] == [[], [2]]
    assert corpus.stats["test_docs_without_labels"] == 1


def test_every_document_skipped(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", train_texts=["", " ", ""])
    with raises(f"the train split ({root / 'train_texts.txt'} and {root / 'train_labels.txt'}) has no documents left "
                "after reading (skipped: empty 3)"):
        load(make_cfg, root, bad_lines="skip")


def test_empty_inputs_name_the_file(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", train_texts=[], train_labels=[])
    with raises(f"the train split is empty: no documents in {root / 'train_texts.txt'} and {root / 'train_labels.txt'}"):
        load(make_cfg, root)
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "apple", "labels": ["a"]})])
    for name, content, message in (
        ("train.jsonl", b"", "holds no records"),
        ("train.jsonl", b"\n  \n", "holds no records"),
        ("train.csv", b"", "is empty"),
        ("train.csv", b"text,labels\n", "has no rows below its header"),
    ):
        train = write_lines(tmp_path / name, content)
        with raises(f"{train} {message}"):
            load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string()), "labels": pa.array([], pa.list_(pa.string()))}), tmp_path / "train.parquet")
    with raises(f"{tmp_path / 'train.parquet'} has no rows"):
        load_corpus(make_cfg(format="table", train_file=str(tmp_path / "train.parquet"), test_file=str(test)), SyntheticConfig())
    train = write_lines(tmp_path / "train.jsonl", ["{", "[1]"])  # every line skipped
    with raises(f"the train split ({train}) has no documents left after reading (skipped: malformed 2)"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip"), SyntheticConfig())


def test_table_missing_column_and_bad_rows(tmp_path, make_cfg):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": t, "labels": l.split()}) for t, l in zip(TRAIN_TEXTS, TRAIN_LABELS)])
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": t, "labels": l}) for t, l in zip(TEST_TEXTS, TEST_LABELS)])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), labels_column="tags")
    with raises(f"{train} has no column 'tags' (config key 'data.labels_column'); its columns are: text, labels"):
        load_corpus(cfg, SyntheticConfig())
    write_lines(test, [json.dumps({"text": "apple", "labels": "a"}), json.dumps({"text": "", "labels": "b"})])
    with raises(f"{test} line 2 is an empty document"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())


def test_jsonl_errors_name_the_file_line(tmp_path, make_cfg):
    rows = [json.dumps({"text": "apple", "labels": ["a"]}), "", json.dumps({"text": "fig", "labels": ["b"]})]
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "apple", "labels": ["a"]})])
    train = write_lines(tmp_path / "train.jsonl", [*rows, "  ", json.dumps({"text": "", "labels": ["b"]})])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test))
    with raises(f"{train} line 5 is an empty document"):  # the 3rd record, after a blank and a whitespace line
        load_corpus(cfg, SyntheticConfig())
    write_lines(train, [*rows, '{"text": "kiwi", "labels": ["a"]', json.dumps({"text": "date", "labels": ["b"]})])
    with raises(f"{train} line 4 is not valid JSON (Expecting ',' delimiter"):
        load_corpus(cfg, SyntheticConfig())


def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path, make_cfg):
    """With data.bad_lines = "skip" a JSON Lines line that is not UTF-8 or not one JSON object is a skipped
    document; the kept records keep their own line numbers in later messages."""
    good = [json.dumps({"text": t, "labels": l.split()}) for t, l in zip(TRAIN_TEXTS, TRAIN_LABELS)]
    train = write_lines(
        tmp_path / "train.jsonl",
        "\n".join([good[0], '{"text": "kiwi", "labels": ["a"]', "", good[1], '["fig", "b"]']).encode()
        + b"\n" + json.dumps({"text": "x", "labels": ["a"]}).encode()[:-2] + BAD_BYTES + b'"]}\n'
        + f"{good[2]}\n".encode(),
    )
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": t, "labels": l}) for t, l in zip(TEST_TEXTS, TEST_LABELS)])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip", unseen_labels="error")
    corpus = load_corpus(cfg, SyntheticConfig())
    assert len(corpus.train) == 3 and len(corpus.test) == len(TEST_TEXTS)
    st = corpus.stats
    assert (st["train_skipped_malformed"], st["train_skipped_undecodable"], st["test_skipped_malformed"]) == (2, 1, 0)
    names = [[corpus.label_names[i] for i in row] for row in corpus.train["labels"]]
    assert names == [list(dict.fromkeys(l.split())) for l in TRAIN_LABELS]
    # A record after skipped lines is named by its own line of the file, not its place among the kept ones.
    write_lines(test, [json.dumps({"text": "apple", "labels": ["a"]}), "{", json.dumps({"text": "fig", "labels": ["zzz"]})])
    with raises(f"{test} line 3 has label 'zzz', which no training document has"):
        load_corpus(cfg, SyntheticConfig())
    write_lines(train, [good[0], "[1, 2]", json.dumps({"text": " ", "labels": ["a"]})])
    with raises(f"{train} line 2 holds a JSON list, not an object; each line must be one JSON object"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip")
    corpus = load_corpus(cfg, SyntheticConfig())
    assert len(corpus.train) == 1 and (corpus.stats["train_skipped_malformed"], corpus.stats["train_skipped_empty"]) == (1, 1)
    # What pyarrow refuses though Python would not: a line of U+00A0 (str.strip() calls it blank), a lone surrogate.
    write_lines(train, [good[0], "\u00a0", '{"text": "a\\ud800b", "labels": ["a"]}', good[1]])
    assert len(load_corpus(cfg, SyntheticConfig()).train) == 2
    error_cfg = make_cfg(format="table", train_file=str(train), test_file=str(test))
    with raises(f"{train} line 2 is not valid JSON (Expecting value"):
        load_corpus(error_cfg, SyntheticConfig())
    write_lines(train, [good[0], '{"text": "a\\ud800b", "labels": ["a"]}', good[1]])
    with raises(f"{train} line 2 holds an escaped lone surrogate"):
        load_corpus(error_cfg, SyntheticConfig())


def test_jsonl_lines_are_parsed_in_python_only_when_pyarrow_refuses_one(tmp_path, make_cfg, monkeypatch):
    from xmtc.data import tables

    good = [json.dumps({"text": t, "labels": l.split()}) for t, l in zip(TRAIN_TEXTS, TRAIN_LABELS)]
    train = write_lines(tmp_path / "train.jsonl", [good[0], "", *good[1:]])
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": t, "labels": l}) for t, l in zip(TEST_TEXTS, TEST_LABELS)])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip")
    parsed = []
    real = tables._json_line_problem
    monkeypatch.setattr(tables, "_json_line_problem", lambda line: parsed.append(line) or real(line))
    corpus = load_corpus(cfg, SyntheticConfig())
    assert len(corpus.train) == len(TRAIN_TEXTS) and parsed == []  # a clean file: pyarrow's parse only
    # pyarrow reads two objects on one line as two records: that line is one bad document, not two.
    write_lines(train, [good[0], good[1] + good[2], *good[2:], json.dumps({"text": "x", "labels": ["zzz"]})])
    corpus = load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip"),
                           SyntheticConfig())
    assert len(corpus.train) == len(TRAIN_TEXTS) and corpus.stats["train_skipped_malformed"] == 1
    assert len(parsed) == len(TRAIN_TEXTS) + 1  # each line once, after pyarrow's count did not match
    with raises(f"{train} line 2 is not valid JSON (Extra data"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())


def test_jsonl_nested_too_deeply_is_a_bad_line_not_a_crash(tmp_path, make_cfg):
    # datasets refuses a whole file for one record nested 64 levels deep, and pyarrow's parser overflows its stack
    # on deeper ones (measured: 10,000 levels read, 30,000 kill the process); such a record is one bad line.
    import subprocess
    import sys

    from xmtc.data.tables import MAX_JSON_DEPTH

    good = [json.dumps({"text": t, "labels": l.split()}) for t, l in zip(TRAIN_TEXTS, TRAIN_LABELS)]
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "apple", "labels": ["a"]})])
    for depth in (MAX_JSON_DEPTH, 100_000):
        deep = '{"text": "x", "labels": ["a"], "deep": ' + "[" * depth + "]" * depth + "}"
        # Within the limit, with more brackets than it in a string: kept.
        shallow = '{"text": "' + "[{" * 40 + '", "labels": ["b"], "deep": ' + "[" * 60 + "]" * 60 + "}"
        train = write_lines(tmp_path / "train.jsonl", [good[0], deep, shallow, *good[1:]])
        script = (
            "import sys; from xmtc.config import DataConfig, DataError, SyntheticConfig; from xmtc.data import load_corpus\n"
            "kw = dict(format='table', train_file=sys.argv[1], test_file=sys.argv[2], cache_dir=sys.argv[3])\n"
            "c = load_corpus(DataConfig(bad_lines='skip', **kw), SyntheticConfig())\n"
            "print(len(c.train), c.stats['train_skipped_malformed'])\n"
            "try:\n    load_corpus(DataConfig(**kw), SyntheticConfig())\nexcept DataError as e:\n    print(e)\n"
        )
        proc = subprocess.run([sys.executable, "-c", script, str(train), str(test), str(tmp_path / f"cache{depth}")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (depth, proc.returncode, proc.stderr[-2000:])
        kept, message = proc.stdout.splitlines()[-2:]
        assert kept == f"{len(good) + 1} 1"
        assert message == f"{train} line 2 nests JSON {depth + 1} levels deep (at most {MAX_JSON_DEPTH} are read); each line must be one JSON object"


def test_the_first_bad_line_is_named_before_a_deeper_one(tmp_path, make_cfg):
    # The crash pre-scan finds line 3 (100,000 levels) before pyarrow runs; line 2 is bad too, and first.
    deep = '{"text": "x", "labels": ["a"], "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    train = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "apple", "labels": ["a"]}), '{"text": "fig",', deep])
    with raises(f"{train} line 2 is not valid JSON ("):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(train)), SyntheticConfig())


@pytest.mark.parametrize("layout", ["lines", "array"])
def test_a_json_file_too_deep_for_pyarrow_is_refused(tmp_path, layout):
    # A .json file in lines layout goes to pyarrow line by line, as JSON Lines does: 100,000 levels killed the
    # process (SIGSEGV, measured). An array is parsed by ujson first, which refuses the depth itself.
    import subprocess
    import sys

    records = [json.dumps({"text": "apple", "labels": ["a"]}),
               '{"text": "x", "labels": ["a"], "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"]
    train = write_lines(tmp_path / "train.json", records if layout == "lines" else ["[" + ",".join(records) + "]"])
    script = (
        "import sys; from xmtc.config import DataConfig, DataError, SyntheticConfig; from xmtc.data import load_corpus\n"
        "kw = dict(format='table', train_file=sys.argv[1], test_file=sys.argv[1], cache_dir=sys.argv[2])\n"
        "try:\n    load_corpus(DataConfig(**kw), SyntheticConfig())\nexcept DataError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(train), str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    said = proc.stdout.splitlines()[-1]
    if layout == "lines":
        assert said == f"{train} line 2 nests JSON 100001 levels deep (at most 63 are read); each line must be one JSON object"
    else:
        assert said.startswith(f"{train} could not be read as json: ValueError: Reached object decoding depth limit")


def test_a_label_with_a_line_break_is_refused(tmp_path, make_cfg):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "apple", "labels": ["a"]}),
                                                   json.dumps({"text": "fig", "labels": ["b", "c\rd"]})])
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "apple", "labels": ["a"]})])
    with raises(f"{train} line 2 has the label 'c\\rd', which holds a line break; a label name must be one line"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip"), SyntheticConfig())


@pytest.mark.parametrize("odd, said", [
    (["x", ["c"]], '["c"], a list'),  # mixed with names: datasets keeps the list as JSON
    ([{"name": "c"}], '{"name": "c"}, an object'),
    ([True], "true, a boolean"),
    ([2.5], "2.5, a floating-point number"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_label_that_is_no_name_is_refused(tmp_path, make_cfg, odd, said, suffix):
    # str() of such a label made up a name no line holds ("['c']", "{'name': 'c'}", "True"), silently.
    records = [{"text": "apple", "labels": ["a"]}, {"text": "fig", "labels": odd}, {"text": "kiwi", "labels": ["b"]}]
    train = write_lines(tmp_path / f"train{suffix}", [json.dumps(r) for r in records])
    test = write_lines(tmp_path / f"test{suffix}", [json.dumps(records[0])])
    where = f"{train} line 2" if suffix == ".jsonl" else f"{train} row 2"
    for bad_lines in ("error", "skip"):
        with raises(f"{where} has the label {said}; each label must be a string or an integer"):
            load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines=bad_lines),
                        SyntheticConfig())


def test_integer_labels_are_names(tmp_path, make_cfg):
    train = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "apple", "labels": [7, 12]}),
                                                   json.dumps({"text": "fig", "labels": [12]})])
    corpus = load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(train)), SyntheticConfig())
    assert corpus.label_names == ["12", "7"] and corpus.train["labels"] == [[1, 0], [0]]


def test_csv_cells_are_read_as_written(tmp_path, make_cfg, cache_dir):
    # pandas would guess numbers ("007" -> 7, differently per file) and missing values ("NA", "null", "").
    train = write_lines(tmp_path / "train.csv", ["text,labels", "apple pie,007", "null,NA", "fig jam,010", "kiwi,007"])
    test = write_lines(tmp_path / "test.csv", ["text,labels", "fig,007 010"])
    corpus = load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())
    assert corpus.label_names == ["007", "010", "NA"] and corpus.test["labels"] == [[0, 1]]
    assert len(corpus.train) == 4 and corpus.train["labels"][1] == [2]  # "null" is a text, "NA" a label
    assert list((Path(cache_dir) / "hf").iterdir()) == []  # datasets' conversion (keyed by mtime) is not kept
    write_lines(train, ["text,labels", "apple pie,7", "fig jam,", "kiwi,3"])
    with raises(f"{train} row 2 (after the header) has no labels"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())


def test_csv_row_with_more_fields_than_its_header_names_its_line(tmp_path, make_cfg):
    # pandas would take the first column as the index: every text replaced by its labels, without a word.
    train = write_lines(tmp_path / "train.csv", ["text,labels", "apple pie,food sweet,0.9", "rust compiler,code,0.7"])
    test = write_lines(tmp_path / "test.csv", ["text,labels", "fig,food"])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), bad_lines="skip")
    with raises(f"{train} line 2 has 3 fields but its header has 2 (text, labels); quote a cell that holds a comma"):
        load_corpus(cfg, SyntheticConfig())
    # Lines, not records: a quoted cell spanning two lines and a blank line come before the broken row.
    write_lines(train, ["text,labels", '"apple\npie, sweet",food', "", "fig,fruit", "rust, compiler,code"])
    with raises(f"{train} line 6 has 3 fields but its header has 2"):
        load_corpus(cfg, SyntheticConfig())
    write_lines(train, ["text,labels", '"apple\npie, sweet",food', "fig,", "kiwi"])  # fewer fields: no labels
    corpus = load_corpus(cfg, SyntheticConfig())
    assert len(corpus.train) == 1 and corpus.stats["train_skipped_no_labels"] == 2 and corpus.label_names == ["food"]


def test_table_undecodable_and_unknown_extension(tmp_path, make_cfg):
    train = write_lines(tmp_path / "train.csv", b"text,labels\napple,a\n" + BAD_BYTES + b",b\n")
    test = write_lines(tmp_path / "test.csv", ["text,labels", "apple,a"])
    with raises(f"{train} line 3 is not valid UTF-8"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())
    with pytest.raises(ConfigError, match="config key 'data.test_file' is .*test.txt, whose extension is not one of"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(tmp_path / "test.txt")), SyntheticConfig())


def test_read_texts(tmp_path):
    path = write_lines(tmp_path / "texts.txt", b"first doc\n\nthird " + BAD_BYTES + b"\nfourth\n")
    with raises(f"{path} line 2 is an empty document"):
        read_texts(path)
    assert read_texts(path, "skip") == (["first doc", "fourth"], [1, 4])
    with raises(f"{tmp_path / 'none.txt'} does not exist"):
        read_texts(tmp_path / "none.txt")
    mac = write_lines(tmp_path / "mac.txt", b"first doc\rsecond doc\r")  # would pair with labels "x\ry\r" as one document
    with raises(f"{mac} ends its lines with carriage returns only (classic Mac OS), so it reads as one line"):
        read_texts(mac)
    assert read_texts(write_lines(tmp_path / "one.txt", b"one doc\r"))[0] == ["one doc"]


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_file_is_named_not_read_as_garbage(tmp_path, encoding, name):
    # Read as UTF-8 it gave NUL-riddled documents (and, for UTF-16, one line more than it holds).
    text = "first doc\nsecond doc\n"
    data = text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode(encoding)
    path = write_lines(tmp_path / "texts.txt", data)
    with raises(f"{path} is {name} (it starts with a {name} byte-order mark), not UTF-8; convert it, e.g. iconv -f {name} -t UTF-8"):
        read_texts(path, "skip")
    assert read_texts(write_lines(tmp_path / "bom8.txt", "\ufeff" .encode("utf-8") + text.encode("utf-8")))[0] == ["first doc", "second doc"]


def test_a_byte_order_mark_inside_a_joined_file_is_not_part_of_a_label(tmp_path, make_cfg):
    # `cat a.txt b.txt` of two files an editor saved with a UTF-8 mark: the second mark starts a line in the middle,
    # where it made the label "\ufeffa", a label of its own that no test document could match.
    bom = "\ufeff"
    write_lines(tmp_path / "train_texts.txt", f"{bom}apple banana\ncherry\n{bom}date apple\n".encode())
    write_lines(tmp_path / "train_labels.txt", f"{bom}a b\n{bom}a\n{bom}b\n".encode())
    write_lines(tmp_path / "test_texts.txt", b"apple\n")
    write_lines(tmp_path / "test_labels.txt", b"a\n")
    corpus = load(make_cfg, tmp_path)
    assert corpus.label_names == ["a", "b"] and corpus.label_counts.tolist() == [2, 2]
    assert corpus.train["labels"] == [[0, 1], [0], [1]]
    # A mark that is not at the start of a line is left to the tokenizer (not a word character: dropped there).
    assert read_lines(write_lines(tmp_path / "mid.txt", f"x{bom}y\n{bom}z\n".encode())) == [f"x{bom}y", "z"]


def test_an_unreadable_file_is_one_sentence(small_xmtc, make_cfg, monkeypatch):
    # A data file without read permission (a shared dataset's group bits) stopped the run with a PermissionError traceback.
    import builtins
    import io

    target = small_xmtc / "train_labels.txt"
    target.chmod(0)
    real_open = io.open

    def deny(file, *args, **kwargs):  # as chmod 0 does for anyone but root, who runs this container's tests
        if isinstance(file, (str, Path)) and Path(file).resolve() == target.resolve():
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", deny)
    monkeypatch.setattr(builtins, "open", deny)
    with raises(f"{target} cannot be read (Permission denied)"):
        load(make_cfg, small_xmtc)
    with raises(f"{target} cannot be read (Permission denied)"):
        read_texts(target)
