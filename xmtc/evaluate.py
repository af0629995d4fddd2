"""The metrics table of a trained run on its test split (or on other files).

    python -m xmtc.evaluate --run runs/xml_cnn_reuters [--tag step400] [--json metrics.json]
    python -m xmtc.evaluate --run runs/xml_cnn_reuters --texts other_texts.txt --labels other_labels.txt
"""

from __future__ import annotations

import argparse
import sys

import torch

from xmtc.config import UserError


def encode_files(corpus, texts_path: str, labels_path: str, cfg):
    """A texts + labels file pair tokenized like the run's corpus; unseen labels per data.unseen_labels."""
    import datasets
    from pathlib import Path

    from xmtc.data.loader import encode_split, label_ids
    from xmtc.data.readers import read_paired_files

    stats: dict[str, int] = {}
    raw = read_paired_files("eval", Path(texts_path), Path(labels_path), cfg.data.bad_lines)
    labels = label_ids(raw, corpus.label_index, cfg.data.unseen_labels, stats)
    return datasets.Dataset(encode_split(corpus.tokenizer, raw, labels, cfg.data.max_len, stats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the train.output_dir of a run")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    p.add_argument("--texts", default=None, help="texts file (default: the run's test split)")
    p.add_argument("--labels", default=None, help="labels file matching --texts")
    p.add_argument("--json", default=None, help="also write the metrics here")
    args = p.parse_args(argv)
    try:
        from xmtc.checkpoint import load_run
        from xmtc.evaluation import evaluate
        from xmtc.io import atomic_write_json
        from xmtc.metrics import format_table

        if (args.texts is None) != (args.labels is None):
            raise UserError("pass --texts and --labels together (or neither, for the run's test split)")
        cfg, model, corpus = load_run(args.run, args.tag)
        split = corpus.test if args.texts is None else encode_files(corpus, args.texts, args.labels, cfg)
        metrics = evaluate(model, split, cfg, 0, 1, torch.device("cpu"), corpus.label_counts, len(corpus.train))
        print(format_table(metrics, title=f"{args.run} ({len(split)} documents)"))
        if args.json:
            atomic_write_json(args.json, metrics)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
