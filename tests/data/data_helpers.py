"""Helpers shared by the data tests: tiny corpora written to tmp dirs, and where the real data lives."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REUTERS = SHARED / "data" / "reuters21578"

# A corpus small enough to work out by hand (see test_data_readers.py for the expected ids).
TRAIN_TEXTS = ["apple banana apple", "banana cherry", "Apple! date"]
TRAIN_LABELS = ["b a", "a", "c a a"]
TEST_TEXTS = ["apple fig", "cherry"]
TEST_LABELS = ["a", "c b"]


def write_lines(path: Path, lines: list[str] | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lines if isinstance(lines, bytes) else "".join(f"{x}\n" for x in lines).encode())
    return path


def write_xmtc(root: Path, train_texts=TRAIN_TEXTS, train_labels=TRAIN_LABELS, test_texts=TEST_TEXTS, test_labels=TEST_LABELS) -> Path:
    for name, lines in (("train_texts", train_texts), ("train_labels", train_labels), ("test_texts", test_texts), ("test_labels", test_labels)):
        write_lines(root / f"{name}.txt", lines)
    return root


def load_after_barrier(barrier, data_cfg, results, build_log: Path) -> None:
    """A process that starts loading at the same moment as its siblings; appends to build_log per build."""
    import xmtc.data.loader as loader
    from xmtc.config import SyntheticConfig

    real_build = loader.build_corpus

    def counted_build(*args):
        with open(build_log, "a") as f:
            f.write("built\n")
        return real_build(*args)

    loader.build_corpus = counted_build
    barrier.wait()
    try:
        corpus = loader.load_corpus(data_cfg, SyntheticConfig())
        results.put((str(corpus.cache_path), corpus.cache_hit))
    except BaseException as e:  # reported to the test rather than left as a silent dead child
        results.put(("error", repr(e)))
