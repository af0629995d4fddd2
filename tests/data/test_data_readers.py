"""Every input format read into the same corpus, checked against ids worked out by hand."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from data_helpers import TEST_LABELS, TEST_TEXTS, TRAIN_LABELS, TRAIN_TEXTS, write_lines, write_xmtc

from xmtc.config import ConfigError, DataError, SyntheticConfig
from xmtc.data import load_corpus

# Labels: a in 3 training docs, b and c in 1 each (tie broken by name) -> a=0, b=1, c=2.
# Words: apple 3 ("Apple!" lower-cased), banana 2, cherry 1, date 1 -> ids 2..5; fig is unknown (1).
NAMES = ["a", "b", "c"]
TRAIN_IDS = [[2, 3, 2], [3, 4], [2, 5]]
TRAIN_LABEL_IDS = [[1, 0], [0], [2, 0]]  # file order kept; doc 2's repeated "a" removed
TEST_IDS = [[2, 1], [4]]
TEST_LABEL_IDS = [[0], [2, 1]]


def check_small(corpus) -> None:
    assert corpus.label_names == NAMES
    assert corpus.label_counts.tolist() == [3, 1, 1] and corpus.label_counts.dtype == np.int64
    assert corpus.label_index == {"a": 0, "b": 1, "c": 2}
    assert corpus.vocab_size == 6 and corpus.tokenizer.vocab_size == 6 and corpus.pad_id == 0
    assert corpus.train["input_ids"] == TRAIN_IDS and corpus.train["labels"] == TRAIN_LABEL_IDS
    assert corpus.test["input_ids"] == TEST_IDS and corpus.test["labels"] == TEST_LABEL_IDS
    assert corpus.stats["train_duplicate_labels"] == 1 and corpus.stats["test_unk_tokens"] == 1
    assert corpus.train.features["input_ids"].feature.dtype == "int32"


def test_xmtc_text(small_xmtc, make_cfg):
    corpus = load_corpus(make_cfg(format="xmtc_text", path=str(small_xmtc)), SyntheticConfig())
    check_small(corpus)
    assert corpus.valid is None and corpus.num_labels == 3
    assert corpus.stats["train_docs"] == 3 and corpus.stats["test_docs"] == 2 and corpus.stats["train_tokens"] == 7
    assert corpus.tokenizer.encode("Banana, DATE! kiwi") == [3, 5, 1]


def test_truncation_to_max_len(small_xmtc, make_cfg):
    corpus = load_corpus(make_cfg(format="xmtc_text", path=str(small_xmtc), max_len=2), SyntheticConfig())
    assert corpus.train["input_ids"] == [[2, 3], [3, 4], [2, 5]]
    assert corpus.stats["train_truncated"] == 1 and corpus.stats["train_tokens"] == 6
    # The trainer's data line: tokens, the unknown share, and only the counts that are not zero (it printed the whole
    # dict, two dozen keys of zeros).
    from xmtc.data import stats_summary

    test_tokens = corpus.stats["test_tokens"]
    assert stats_summary(corpus.stats) == (
        "train 6 tokens (0.0% unknown), 1 documents truncated at data.max_len, 1 repeated labels removed; "
        f"test {test_tokens} tokens ({100 / test_tokens:.1f}% unknown)")


def test_min_count_and_vocab_size(small_xmtc, make_cfg):
    rare_unknown = load_corpus(make_cfg(format="xmtc_text", path=str(small_xmtc), min_count=2), SyntheticConfig())
    assert rare_unknown.vocab_size == 4 and rare_unknown.train["input_ids"] == [[2, 3, 2], [3, 1], [2, 1]]
    capped = load_corpus(make_cfg(format="xmtc_text", path=str(small_xmtc), vocab_size=3), SyntheticConfig())
    assert capped.vocab_size == 3 and capped.train["input_ids"] == [[2, 1, 2], [1, 1], [2, 1]]


def test_reuters(reuters, make_cfg):
    corpus = load_corpus(make_cfg(format="xmtc_text", path=str(reuters)), SyntheticConfig())
    assert (len(corpus.train), len(corpus.test), corpus.num_labels) == (7723, 3005, 90)
    assert corpus.label_names[:3] == ["earn", "acq", "money-fx"]
    assert corpus.label_counts[:3].tolist() == [2861, 1648, 534]
    assert corpus.label_counts.sum() == 9530 - 1  # label occurrences in train_labels.txt minus one repeat
    assert corpus.train[0]["labels"] == [corpus.label_index["cocoa"]]  # line 1: "BAHIA COCOA REVIEW ..."
    assert corpus.stats["test_unseen_labels_dropped"] == 0 and corpus.stats["train_duplicate_labels"] == 1
    assert corpus.train[0]["input_ids"][:3] == corpus.tokenizer.encode("bahia cocoa review")
    assert max(len(x) for x in corpus.train["input_ids"]) == 500


def write_tables(root: Path, fmt: str) -> tuple[Path, Path]:
    import pandas as pd

    paths = []
    for split, texts, labels in (("train", TRAIN_TEXTS, TRAIN_LABELS), ("test", TEST_TEXTS, TEST_LABELS)):
        frame = pd.DataFrame({"body": texts, "tags": [line.split() for line in labels]})
        path = root / f"{split}.{fmt}"
        if fmt == "jsonl":
            write_lines(path, [json.dumps(row) for row in frame.to_dict("records")])
        elif fmt == "csv":
            frame.assign(tags=labels).to_csv(path, index=False)  # one space-separated string per row
        else:
            frame.to_parquet(path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_table(tmp_path, make_cfg, fmt):
    train, test = write_tables(tmp_path, fmt)
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(test), text_column="body", labels_column="tags")
    check_small(load_corpus(cfg, SyntheticConfig()))


def test_hub_from_local_directory(tmp_path, make_cfg, monkeypatch):
    """The "hub" code path: load_dataset(name) on a script-free directory of data files, offline."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    root = tmp_path / "hubdata"
    root.mkdir()
    write_tables(root, "jsonl")
    cfg = make_cfg(format="hub", hub_name=str(root), text_column="body", labels_column="tags")
    first = load_corpus(cfg, SyntheticConfig())
    check_small(first)
    assert list((Path(cfg.cache_dir) / "hf").iterdir()) == [] and not (tmp_path / "hf").exists()  # no conversion kept
    # An edit that keeps the size and the modification time (cp -p, rsync -t) is a new corpus.
    train = root / "train.jsonl"
    st = train.stat()
    train.write_text(train.read_text().replace('"a', '"z'))
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert train.stat().st_size == st.st_size
    edited = load_corpus(cfg, SyntheticConfig())
    assert edited.cache_path != first.cache_path and not edited.cache_hit
    assert "a" in first.label_names and "a" not in edited.label_names and "z" in edited.label_names
    assert load_corpus(cfg, SyntheticConfig()).cache_hit
    with pytest.raises(DataError, match=r"has no split 'validation' \(config key 'data.test_split'\); it has: train, test"):
        load_corpus(make_cfg(format="hub", hub_name=str(root), test_split="validation"), SyntheticConfig())


def test_hub_unknown_dataset(tmp_path, make_cfg, monkeypatch):
    import datasets
    import huggingface_hub

    # Offline (read when the libraries are imported, so set on them): the Hub's answer without a network, at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DataError, match="Hub dataset 'xmtc-nobody/nothing' could not be loaded .*check the name and network"):
        load_corpus(make_cfg(format="hub", hub_name="xmtc-nobody/nothing"), SyntheticConfig())


def test_hub_name_that_is_a_missing_path_is_a_config_error_naming_it(tmp_path, make_cfg):
    # A local directory's name mistyped was asked of the Hub, and its failure said "check the name and network".
    (tmp_path / "my_dataset").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"config key 'data.hub_name' is the path {tmp_path}/my_dataest, but there is no "
                                                    f"directory {tmp_path}/my_dataest; did you mean {tmp_path}/my_dataset?")):
        load_corpus(make_cfg(format="hub", hub_name=str(tmp_path / "my_dataest")), SyntheticConfig())
    with pytest.raises(ConfigError, match=re.escape(f"there is no directory {tmp_path}/a/b ({tmp_path} is the nearest one that exists)")):
        load_corpus(make_cfg(format="hub", hub_name=str(tmp_path / "a" / "b")), SyntheticConfig())
    (tmp_path / "t.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=re.escape(f"config key 'data.hub_name' is {tmp_path}/t.jsonl, a file;")):
        load_corpus(make_cfg(format="hub", hub_name=str(tmp_path / "t.jsonl")), SyntheticConfig())


def test_sgm(tmp_path, make_cfg):
    root = tmp_path / "sgm"
    write_lines(root / "train.src", ["u.s. rates rose", "the u.s. dollar fell", "rates rose again"])
    write_lines(root / "train.tgt", ["econ money", "money", "econ"])
    write_lines(root / "valid.src", ["u.s. gold"])
    write_lines(root / "valid.tgt", ["gold money"])
    write_lines(root / "test.src", ["dollar rates"])
    write_lines(root / "test.tgt", ["money econ"])
    corpus = load_corpus(make_cfg(format="sgm", path=str(root)), SyntheticConfig())
    assert corpus.label_names == ["econ", "money"]  # both in 2 documents: tie broken by name
    assert corpus.train["labels"] == [[0, 1], [1], [0]] and corpus.test["labels"] == [[1, 0]]
    # Pre-tokenized: "u.s." stays one token (a regex word split would give "u" and "s").
    assert corpus.tokenizer.split("u.s. rates") == ["u.s.", "rates"]
    words = ["rates", "rose", "u.s.", "dollar", "again", "fell", "the"]  # counts 2,2,2 then 1s, ties by word
    assert corpus.tokenizer.words == sorted(words[:3]) + sorted(words[3:])
    assert corpus.valid["labels"] == [[1]] and corpus.stats["valid_unseen_labels_dropped"] == 1
    assert corpus.valid["input_ids"] == [[corpus.tokenizer.index["u.s."], 1]]
    # The corpus's own validation split wins over a hold-out of train.
    held = load_corpus(make_cfg(format="sgm", path=str(root), valid_fraction=0.5), SyntheticConfig())
    assert len(held.train) == 3 and held.valid["labels"] == [[1]]


def test_sgm_without_valid(tmp_path, make_cfg):
    root = tmp_path / "sgm"
    for split in ("train", "test"):
        write_lines(root / f"{split}.src", ["a b"])
        write_lines(root / f"{split}.tgt", ["x"])
    assert load_corpus(make_cfg(format="sgm", path=str(root)), SyntheticConfig()).valid is None


def test_csv_with_one_numeric_label_per_row(tmp_path, make_cfg):
    train = write_lines(tmp_path / "train.csv", ["text,labels", "apple pie,7", "apple tart,7", "fig jam,12"])
    test = write_lines(tmp_path / "test.csv", ["text,labels", "fig,12"])
    corpus = load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test)), SyntheticConfig())
    assert corpus.label_names == ["7", "12"] and corpus.test["labels"] == [[1]]


def test_a_csv_list_column_written_by_pandas_is_refused_not_split_into_made_up_labels(tmp_path, make_cfg):
    # DataFrame.to_csv writes a list column as "['a', 'b']": split on spaces it made the labels "['a'," and "'b']".
    import pandas as pd

    pd.DataFrame({"text": ["apple pie", "fig jam"], "labels": [["a", "b"], ["c"]]}).to_csv(tmp_path / "train.csv", index=False)
    write_lines(tmp_path / "test.csv", ["text,labels", "fig,c"])
    cfg = make_cfg(format="table", train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"))
    with pytest.raises(DataError, match=r"train.csv row 1 \(after the header\) is \"\['a', 'b'\]\", the text of a list .* save the table as "
                                        r"JSON Lines or Parquet, which keep lists$"):
        load_corpus(cfg, SyntheticConfig())
    # A label that merely holds brackets is a label.
    write_lines(tmp_path / "train.csv", ["text,labels", "apple pie,[x]", "fig jam,c [x]"])
    assert load_corpus(cfg, SyntheticConfig()).label_names == ["[x]", "c"]


def test_words_keep_their_combining_marks(tmp_path, make_cfg):
    # `\w` holds no combining mark (Unicode category M): `\w+` cut "हिन्दी" into "ह", "न", "द", dropping its vowel
    # signs and virama, and split a decomposed "é" (e + U+0301) off its word.
    import unicodedata

    from xmtc.data import load_tokenizer

    french = unicodedata.normalize("NFD", "Café naïve café")
    root = write_xmtc(tmp_path / "d", train_texts=["हिन्दी भाषा", "தமிழ் மொழி", french], train_labels=["hi", "ta", "fr"],
                      test_texts=["हिन्दी", "भष cafe"], test_labels=["hi", "hi"])
    corpus = load_corpus(make_cfg(format="xmtc_text", path=str(root)), SyntheticConfig())
    cafe, naive = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFD", "naïve")
    assert corpus.tokenizer.words == [cafe] + sorted([naive, "தமிழ்", "மொழி", "हिन्दी", "भाषा"])  # café twice
    assert corpus.train["input_ids"][0] == [corpus.tokenizer.index["हिन्दी"], corpus.tokenizer.index["भाषा"]]
    assert corpus.train["input_ids"][2] == [2, corpus.tokenizer.index[naive], 2]
    assert corpus.test["input_ids"] == [[corpus.tokenizer.index["हिन्दी"]], [1, 1]]  # "भष", "cafe": other words
    assert corpus.tokenizer.split("don't e-mail") == ["don", "t", "e", "mail"]  # punctuation still splits
    assert load_tokenizer(corpus.cache_path).encode("भाषा हिन्दी") == [corpus.tokenizer.index["भाषा"], corpus.tokenizer.index["हिन्दी"]]
    # The split rule is in the cache key: a corpus cached by the `\w+` split (a key without it) is not served.
    assert json.loads((corpus.cache_path / "key.json").read_text())["word_marks"] is True
    # A tokenizer saved before marks were kept (a run's tokenizer/) splits as it did when that run trained.
    old = tmp_path / "old"
    old.mkdir()
    (old / "tokenizer.json").write_text(json.dumps({"kind": "whitespace", "pretokenized": False, "words": ["ह", "न"]}))
    assert load_tokenizer(old).encode("हिन्दी") == [2, 3, 1]


def test_csv_with_a_document_longer_than_the_csv_modules_field_limit(tmp_path, make_cfg):
    # The row check read the file with Python's csv module, whose cells stop at 131,072 characters by default:
    # a long document (a paper, a book chapter) stopped the run with `_csv.Error: field larger than field limit`.
    import csv

    long_text = " ".join(["apple"] * 30_000 + ["fig"] * 10_000)  # 229,999 characters
    train = write_lines(tmp_path / "train.csv", ["text,labels", f"{long_text},a", "fig,b"])
    test = write_lines(tmp_path / "test.csv", ["text,labels", "fig apple,b"])
    limit = csv.field_size_limit()
    corpus = load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(test), max_len=3), SyntheticConfig())
    assert corpus.train["input_ids"] == [[2, 2, 2], [3]] and corpus.stats["train_truncated"] == 1
    assert corpus.tokenizer.words == ["apple", "fig"] and corpus.test["input_ids"] == [[3, 2]]
    assert csv.field_size_limit() == limit  # the process-wide limit is left as it was
