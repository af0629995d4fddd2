"""Data: readers of every input format, tokenizers, synthetic corpora, the corpus cache, batching.

    corpus = load_corpus(cfg.data, cfg.synthetic)          # tokenized, cached, memory-mapped
    sampler = TrainBatchSampler(len(corpus.train), micro, rank, world, seed, grad_accum)
    for idx in sampler.micro_batches(epoch, start_micro_batch):
        batch = collate(corpus.train[idx], cfg.data.max_len)   # input_ids, lengths, label_idx, label_offsets
    for lo in eval_range(len(corpus.test), rank, world)[::bs]: ...

Prediction on a plain texts file: `texts, lines = read_texts(path, bad_lines)`, then
`encode_texts(corpus, texts, max_len)`. Evaluation on another texts + labels pair:
`dataset, stats = encode_labeled_files(corpus, texts_path, labels_path, cfg.data)`.
"""

from xmtc.data.batching import TrainBatchSampler, collate, eval_range
from xmtc.data.loader import Corpus, encode_labeled_files, encode_texts, load_corpus, stats_summary, whole_train_token_ids
from xmtc.data.readers import read_texts
from xmtc.data.synthetic import generate_synthetic
from xmtc.data.tokenizer import load_tokenizer

__all__ = [
    "Corpus",
    "TrainBatchSampler",
    "collate",
    "encode_labeled_files",
    "encode_texts",
    "eval_range",
    "generate_synthetic",
    "load_corpus",
    "whole_train_token_ids",
    "load_tokenizer",
    "read_texts",
    "stats_summary",
]
