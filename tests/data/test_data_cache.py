"""The corpus cache: hit without re-tokenizing, key sensitivity, crash safety, one build across processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
from pathlib import Path

import numpy as np
import pytest
from data_helpers import load_after_barrier, write_lines, write_xmtc

import xmtc.data.loader as loader
from xmtc.config import ConfigError, DataError, SyntheticConfig
from xmtc.data import encode_labeled_files, encode_texts, load_corpus, load_tokenizer


def load(make_cfg, root, **kw):
    return load_corpus(make_cfg(format="xmtc_text", path=str(root), **kw), SyntheticConfig())


def test_second_load_reads_the_cache(small_xmtc, make_cfg, cache_dir, monkeypatch):
    first = load(make_cfg, small_xmtc)
    assert not first.cache_hit

    def no_build(*args, **kwargs):
        raise AssertionError("the corpus was read and tokenized again")

    monkeypatch.setattr(loader, "build_corpus", no_build)
    second = load(make_cfg, small_xmtc)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert second.train["input_ids"] == first.train["input_ids"] and second.label_names == first.label_names
    # Memory-mapped from the cache directory rather than held in memory.
    assert all(Path(f["filename"]).is_relative_to(second.cache_path) for f in second.train.cache_files)
    assert second.cache_path.parent == Path(cache_dir)


def test_key_follows_data_and_settings(small_xmtc, make_cfg):
    base = load(make_cfg, small_xmtc).cache_path
    assert load(make_cfg, small_xmtc, hub_name="unused by xmtc_text").cache_path == base
    changed = {
        load(make_cfg, small_xmtc, vocab_size=4).cache_path,
        load(make_cfg, small_xmtc, min_count=2).cache_path,
        load(make_cfg, small_xmtc, max_len=2).cache_path,
        load(make_cfg, small_xmtc, bad_lines="skip").cache_path,
        load(make_cfg, small_xmtc, tokenizer="sentencepiece").cache_path,
    }
    assert len(changed) == 5 and base not in changed
    write_lines(small_xmtc / "test_texts.txt", ["kiwi apple", "date"])
    edited = load(make_cfg, small_xmtc)
    assert edited.cache_path != base and not edited.cache_hit
    assert edited.test["input_ids"] == [[1, 2], [5]]


def test_key_follows_content_not_place_or_mtime(small_xmtc, make_cfg, tmp_path):
    import os
    import shutil

    base = load(make_cfg, small_xmtc)
    copy = shutil.copytree(small_xmtc, tmp_path / "elsewhere")
    moved = load(make_cfg, copy)
    assert moved.cache_hit and moved.cache_path == base.cache_path  # the same data elsewhere
    labels = copy / "train_labels.txt"
    old, st = labels.read_text(), os.stat(labels)
    swapped = old.replace("a", "\0").replace("b", "a").replace("\0", "b")
    assert swapped != old and len(swapped) == len(old)
    labels.write_text(swapped)
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -t and tar x leave it
    edited = load(make_cfg, copy)
    assert not edited.cache_hit and edited.cache_path != base.cache_path


def test_synthetic_key_follows_its_section(make_cfg):
    small = SyntheticConfig(num_labels=50, num_train=40, num_test=10, doc_len=20)
    a = load_corpus(make_cfg(), small)
    b = load_corpus(make_cfg(), SyntheticConfig(num_labels=50, num_train=40, num_test=10, doc_len=20, seed=7))
    again = load_corpus(make_cfg(), SyntheticConfig(num_labels=50, num_train=40, num_test=10, doc_len=20))
    assert a.cache_path != b.cache_path and again.cache_hit and again.cache_path == a.cache_path


def test_crash_leaves_no_half_cache(small_xmtc, make_cfg, cache_dir, monkeypatch):
    real = loader.encode_split

    def crash_on_test(tokenizer, split, *args):
        if split.name == "test":
            raise KeyboardInterrupt  # after the train split was saved
        return real(tokenizer, split, *args)

    monkeypatch.setattr(loader, "encode_split", crash_on_test)
    with pytest.raises(KeyboardInterrupt):
        load(make_cfg, small_xmtc)
    assert [p.name for p in Path(cache_dir).iterdir() if not p.name.endswith(".lock")] == ["file_hashes"]
    monkeypatch.setattr(loader, "encode_split", real)
    corpus = load(make_cfg, small_xmtc)
    assert not corpus.cache_hit and len(corpus.test) == 2


def test_every_file_of_a_cache_reaches_the_disk_before_the_rename_publishes_it(small_xmtc, make_cfg, cache_dir, monkeypatch):
    # The rename was the only ordering: after a power cut it could reach the disk before the Arrow files did,
    # leaving a cache marked complete with a file cut short, which later loads would serve.
    import os

    import xmtc.data.cache as cache

    events, real_fsync, real_rename = [], os.fsync, os.rename
    monkeypatch.setattr(cache.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(cache.os, "rename", lambda a, b: events.append(("rename", str(a), str(b))) or real_rename(a, b))
    corpus = load(make_cfg, small_xmtc)
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) == 1 and not corpus.cache_hit
    tmp, final = events[renames[0]][1:]
    synced = {e[1] for e in events[: renames[0]] if e[0] == "fsync"}
    written = {str(p) for p in Path(final).rglob("*")} | {final}
    assert {w.replace(final, tmp, 1) for w in written} <= synced, sorted(written)
    assert ("fsync", str(Path(final).parent)) in events[renames[0]:]  # and the rename itself


def test_stale_temporary_directory_is_removed(small_xmtc, make_cfg, cache_dir):
    import shutil

    path = load(make_cfg, small_xmtc).cache_path
    shutil.rmtree(path)
    stale = Path(cache_dir) / f".tmp-{path.name}-deadbeef"
    (stale / "train").mkdir(parents=True)  # what a killed build leaves
    assert not load(make_cfg, small_xmtc).cache_hit
    assert not stale.exists()


def test_an_unwritable_cache_serves_what_it_holds_and_refuses_to_build(tmp_path):
    import tempfile

    from xmtc.config import DataConfig
    from xmtc.data.tables import scratch_dir

    make_cfg = DataConfig

    train = write_lines(tmp_path / "train.jsonl", ['{"text": "apple fig", "labels": ["a"]}', '{"text": "kiwi", "labels": ["b"]}'])
    cfg = make_cfg(format="table", train_file=str(train), test_file=str(train), cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(cfg, SyntheticConfig())
    # A read-only cache (here: where datasets' scratch directory would go is a file) still reads the texts again.
    (tmp_path / "cache" / "hf").rmdir()
    (tmp_path / "cache" / "hf").write_text("")
    assert list(loader.whole_train_token_ids(load_corpus(cfg, SyntheticConfig()), cfg, SyntheticConfig())) == [[2, 3], [4]]
    fallback = Path(scratch_dir(str(tmp_path / "cache" / "hf")))  # not beside the cache: in the system's temporary directory
    assert fallback.parent == Path(tempfile.gettempdir()) and fallback.name.startswith("xmtc-read-") and fallback.is_dir()
    fallback.rmdir()
    # What a killed read left a day ago is removed by the next read; a recent one (another process's) is not.
    import os
    import time

    hf = tmp_path / "hf2"
    old, recent = hf / "read-killed", hf / "read-running"
    (old / "x").mkdir(parents=True)
    (recent / "x").mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    fresh = Path(scratch_dir(str(hf)))
    assert not old.exists() and recent.is_dir() and fresh.parent == hf
    # A cache that cannot be written and lacks the corpus: one sentence, not a traceback.
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=f"^the cache directory {tmp_path / 'file' / 'c'} \\(config key 'data.cache_dir'\\) cannot be "
                                        r"written \(Not a directory\) and holds no complete copy"):
        load_corpus(make_cfg(format="table", train_file=str(train), test_file=str(train), cache_dir=str(tmp_path / "file" / "c")),
                    SyntheticConfig())
    assert corpus.num_labels == 2


def test_concurrent_processes_build_once(small_xmtc, make_cfg, tmp_path):
    import datasets  # noqa: F401  (imported once here rather than in each child)

    ctx = mp.get_context("fork")  # separate processes and lock handles, without re-importing torch in each
    barrier, results, log = ctx.Barrier(2), ctx.Queue(), tmp_path / "builds.log"
    cfg = make_cfg(format="xmtc_text", path=str(small_xmtc))
    procs = [ctx.Process(target=load_after_barrier, args=(barrier, cfg, results, log)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert len({path for path, _ in outcomes}) == 1, outcomes
    assert sorted(hit for _, hit in outcomes) == [False, True]
    assert log.read_text() == "built\n"  # without the lock both would build


def test_sentencepiece_tokenizer(tmp_path, make_cfg, monkeypatch):
    words = "the quick brown fox jumps over lazy dogs while seven wizards quietly hex jolly kings".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(30)) for i in range(60)]
    root = write_xmtc(tmp_path / "d", train_texts=texts, train_labels=["a"] * 60, test_texts=["quick foxes", "zzz"], test_labels=["a", "a"])
    corpus = load(make_cfg, root, tokenizer="sentencepiece", vocab_size=60)
    tok = corpus.tokenizer
    assert tok.sp.id_to_piece(0) == "<pad>" and tok.sp.id_to_piece(1) == "<unk>" and tok.sp.bos_id() == -1
    assert 3 <= corpus.vocab_size <= 60 and corpus.vocab_size == tok.vocab_size
    assert tok.sp.decode(tok.encode(texts[0])) == texts[0]
    assert all(0 not in ids for ids in corpus.train["input_ids"])
    reloaded = load_tokenizer(corpus.cache_path)
    assert reloaded.encode("lazy wizards") == tok.encode("lazy wizards") and reloaded.kind == "sentencepiece"
    # A batch encodes on the cores this process may use (a SLURM job's share), not on every core of the node.
    asked, real_encode = [], type(tok.sp).encode
    monkeypatch.setattr(type(tok.sp), "encode", lambda self, *a, **kw: asked.append(kw.get("num_threads")) or real_encode(self, *a, **kw))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert tok.encode_batch(["lazy wizards", "quick foxes"]) == [real_encode(tok.sp, "lazy wizards"), real_encode(tok.sp, "quick foxes")]
    assert asked == [1]


def test_sentencepiece_lines_fit_its_cap_and_lose_nothing():
    from xmtc.data import tokenizer as tok

    rng = np.random.default_rng(0)
    cjk = "".join(chr(0x4E00 + i) for i in rng.integers(0, 300, 2500))  # 7,500 bytes, no spaces
    words = " ".join("w" * int(n) for n in rng.integers(1, 30, 700))  # over 200 words and 4,000 bytes
    lines = list(tok._spm_lines([cjk, words], seed=0))
    assert all(len(line.encode("utf-8")) <= tok.SPM_LINE_BYTES and len(line.split()) <= tok.SPM_LINE_WORDS for line in lines)
    assert "".join("".join(line.split()) for line in lines) in ("".join(cjk.split()) + "".join(words.split()), "".join(words.split()) + "".join(cjk.split()))
    assert len(lines) > 4


def test_sentencepiece_trains_on_text_without_spaces(tmp_path, make_cfg):
    rng = np.random.default_rng(1)
    texts = ["".join(chr(0x4E00 + i) for i in rng.integers(0, 200, 1500)) for _ in range(40)]  # 4,500 bytes each
    root = write_xmtc(tmp_path / "d", train_texts=texts, train_labels=["a"] * 40, test_texts=[texts[0][:50], texts[1][:50]], test_labels=["a", "a"])
    corpus = load(make_cfg, root, tokenizer="sentencepiece", vocab_size=300)
    assert corpus.vocab_size > 200  # one line over SentencePiece's 4,192-byte cap used to stop the run
    assert corpus.tokenizer.sp.decode(corpus.tokenizer.encode(texts[2])) == texts[2]


def test_sentencepiece_model_is_the_same_on_any_machine(monkeypatch):
    from xmtc.data.tokenizer import SentencePieceTokenizer

    words = [f"w{i}x{i % 7}" for i in range(400)]
    rng = np.random.default_rng(2)
    texts = [" ".join(words[j] for j in rng.integers(0, 400, 80)) for _ in range(300)]
    models = []
    for cores in (1, 4):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        models.append(SentencePieceTokenizer.train(texts, 300).model_proto)
    assert models[0] == models[1]  # SentencePiece's result depends on its thread count: it is fixed


def test_encode_texts_and_tokenless_documents(tmp_path, make_cfg):
    root = write_xmtc(tmp_path / "d", test_texts=["apple fig", "!!! ---"])
    corpus = load(make_cfg, root)
    assert corpus.test["input_ids"] == [[2, 1], [1]] and corpus.stats["test_docs_without_tokens"] == 1
    assert encode_texts(corpus, ["banana apple cherry", "...", "date"], max_len=2) == [[3, 2], [1], [5]]
    assert load_tokenizer(corpus.cache_path).encode("Cherry apple") == [4, 2]


def test_encode_labeled_files_like_the_corpus(small_xmtc, make_cfg, tmp_path):
    cfg = make_cfg(format="xmtc_text", path=str(small_xmtc), max_len=2)
    corpus = load_corpus(cfg, SyntheticConfig())
    texts = write_lines(tmp_path / "t.txt", ["cherry apple banana", "", "fig"])
    labels = write_lines(tmp_path / "l.txt", ["c new a", "a", "new"])
    with pytest.raises(DataError, match=f"^{texts} line 2 is an empty document"):
        encode_labeled_files(corpus, texts, labels, cfg)
    cfg.bad_lines = "skip"
    dataset, stats = encode_labeled_files(corpus, texts, labels, cfg)
    assert dataset["input_ids"] == [[4, 2], [1]] and dataset["labels"] == [[2, 0], []]
    assert stats["eval_unseen_labels_dropped"] == 2 and stats["eval_docs_without_labels"] == 1
    assert stats["eval_skipped_empty"] == 1 and stats["eval_truncated"] == 1


def test_valid_fraction_holds_out_a_seeded_part_of_train(small_xmtc, make_cfg):
    whole = load(make_cfg, small_xmtc)
    split = load(make_cfg, small_xmtc, valid_fraction=0.34)
    again = load(make_cfg, small_xmtc, valid_fraction=0.34)
    # One cache for both (the hold-out is drawn after loading), one label space and vocabulary.
    assert split.cache_path == whole.cache_path and split.cache_hit
    assert split.label_names == whole.label_names and split.vocab_size == whole.vocab_size
    assert len(split.train) == 2 and len(split.valid) == 1 and whole.valid is None
    rows = sorted(list(split.train["input_ids"]) + list(split.valid["input_ids"]))
    assert rows == sorted(whole.train["input_ids"])  # a partition of train: nothing lost, nothing doubled
    assert list(again.valid["input_ids"]) == list(split.valid["input_ids"])  # the same seed holds out the same documents
    assert split.stats["valid_held_out_of_train"] == 1 and split.stats["train_docs"] == 2
    # Propensities keep counting over the whole training file.
    assert split.label_counts_docs == 3 and list(split.label_counts) == list(whole.label_counts)
    assert list(split.test["input_ids"]) == list(whole.test["input_ids"])


def test_validation_indices_are_a_seeded_partition():
    kept, held = loader.validation_indices(1000, 0.1, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert sorted(set(kept) | set(held)) == list(range(1000)) and not set(kept) & set(held)
    assert list(held) == sorted(held) and list(kept) == sorted(kept)
    other_kept, other_held = loader.validation_indices(1000, 0.1, seed=4)
    assert set(other_held) != set(held) and list(loader.validation_indices(1000, 0.1, seed=3)[1]) == list(held)
    assert len(loader.validation_indices(5, 0.01, seed=0)[1]) == 1  # at least one document
    with pytest.raises(ConfigError, match="would hold out all 2 training documents"):
        loader.validation_indices(2, 0.9, seed=0)


def test_a_full_disk_during_the_build_is_one_sentence(small_xmtc, make_cfg, cache_dir, monkeypatch):
    # A write that fails while the corpus is saved (ENOSPC, a quota, EFBIG) stopped the run with an OSError traceback.
    import errno
    import re

    import datasets

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with pytest.raises(DataError, match=f"^the cache directory {re.escape(cache_dir)} \\(config key 'data.cache_dir'\\) could "
                                        r"not be written \(No space left on device\); free space there or point"):
        load(make_cfg, small_xmtc)
    assert [p.name for p in Path(cache_dir).iterdir() if not p.name.endswith(".lock")] == ["file_hashes"]  # no half-built copy
    monkeypatch.undo()
    assert not load(make_cfg, small_xmtc).cache_hit


def test_a_corpus_build_says_its_phases_and_shows_a_bar_on_a_terminal(tmp_path):
    # Building Amazon-670K's cache takes minutes; it was silent. Each phase of a second or more is a line (every phase
    # here, with the threshold at 0), and on a terminal a bar counts the documents being encoded.
    import subprocess
    import sys

    from launch_helpers import ROOT, env, stderr_on_a_terminal

    script = ("from xmtc.config import load_config\nfrom xmtc.data import load_corpus\nfrom xmtc.data.loader import BuildProgress\n"
              "BuildProgress.SHOWN_S = 0.0\n"
              f"cfg = load_config('debug_xml_cnn', ['--data.cache_dir', {str(tmp_path / 'cache')!r}])\n"
              "load_corpus(cfg.data, cfg.synthetic)\nload_corpus(cfg.data, cfg.synthetic)\n")
    rc, seen = stderr_on_a_terminal([sys.executable, "-c", script])
    assert rc == 0, seen[-2000:]
    lines = [line.strip() for line in seen.replace("\r", "\n").splitlines() if line.strip().startswith("corpus:")]
    phases = [line.split(" in ")[0] for line in lines if re.search(r" in [0-9.]+ s$", line)]
    assert phases == ["corpus: read 1,600 train / 200 test documents", "corpus: label vocabulary of 200 labels",
                      "corpus: whitespace tokenizer of 2,186 tokens trained", "corpus: train encoded and written",
                      "corpus: test encoded and written"], lines  # once: the second load is a cache hit
    assert any(line.startswith("corpus: encode train") and "/1600 [" in line for line in lines), lines
    # In a log file (a pipe here): the phase lines, no bar.
    piped = subprocess.run([sys.executable, "-c", script.replace(str(tmp_path / "cache"), str(tmp_path / "cache2"))],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and "corpus: read 1,600 train / 200 test documents in " in piped.stderr, piped.stderr
    assert "corpus: encode" not in piped.stderr, piped.stderr
