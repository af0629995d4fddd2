"""Data pipeline timings, printed as a table (not a test: timings never decide pass or fail).

    python tests/data/bench_data.py            # synthetic Amazon-670K-sized labels, and Reuters if present
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xmtc.config import DataConfig, SyntheticConfig  # noqa: E402
from xmtc.data import generate_synthetic, load_corpus  # noqa: E402

REUTERS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "reuters21578"
AMAZON_670K = SyntheticConfig(num_labels=670_091, labels_per_doc=5.45, num_train=20_000, num_test=2_000, doc_len=250)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    rows = []
    data, s = timed(lambda: generate_synthetic(AMAZON_670K))
    words = sum(len(t.split()) for t in data.splits["train"].texts)
    rows.append(("synthetic generate, 670,091 labels x 22,000 docs", s, f"{words:,} train words"))
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(cache_dir=cache)
        corpus, s = timed(lambda: load_corpus(cfg, AMAZON_670K))
        rows.append(("synthetic 670K: generate + tokenize + cache", s, f"{corpus.num_labels:,} labels, vocab {corpus.vocab_size:,}"))
        corpus, s = timed(lambda: load_corpus(cfg, AMAZON_670K))
        rows.append(("synthetic 670K: cached reload", s, f"cache hit {corpus.cache_hit}"))
        if REUTERS.is_dir():
            for tokenizer, vocab in (("whitespace", 30_000), ("sentencepiece", 8_000)):
                cfg = DataConfig(format="xmtc_text", path=str(REUTERS), cache_dir=cache, tokenizer=tokenizer, vocab_size=vocab)
                corpus, s = timed(lambda: load_corpus(cfg, AMAZON_670K))
                rows.append((f"Reuters-21578 {tokenizer}: read + tokenize + cache", s, f"{len(corpus.train):,}+{len(corpus.test):,} docs, vocab {corpus.vocab_size:,}"))
                corpus, s = timed(lambda: load_corpus(cfg, AMAZON_670K))
                rows.append((f"Reuters-21578 {tokenizer}: cached reload", s, f"cache hit {corpus.cache_hit}"))
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>8}  notes")
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:>8.2f}  {note}")


if __name__ == "__main__":
    main()
