"""The metrics table of a trained run on its test split (or on other files).

    python -m xmtc.evaluate --run runs/xml_cnn_reuters [--tag step400] [--json metrics.json]
    python -m xmtc.evaluate --run runs/xml_cnn_reuters --texts other_texts.txt --labels other_labels.txt

The test split is read from the run's data (config.json; relative paths start where the run trained, corpus.json
says where); other files need only the run directory (PSP@k takes the training label counts from corpus.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from xmtc.config import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the train.output_dir of a run")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the selected one, checkpoints/best.json, if the run selected one, else latest)")
    p.add_argument("--texts", default=None, help="texts file (default: the run's test split)")
    p.add_argument("--labels", default=None, help="labels file matching --texts")
    p.add_argument("--json", default=None, help="also write the metrics here")
    p.add_argument("--bad-lines", choices=("error", "skip"), default=None,
                   help="an empty or undecodable line in --texts/--labels: stop (error) or skip it (default: the run's data.bad_lines)")
    from xmtc.checkpoint import add_inference_arguments

    add_inference_arguments(p)
    args = p.parse_args(argv)
    from xmtc.process import stdout_for_results

    with stdout_for_results() as results:  # what the libraries print while loading goes to stderr
        try:
            from xmtc.checkpoint import check_batch_size, inference_device, load_run
            from xmtc.data import encode_labeled_files
            from xmtc.evaluation import evaluate
            from xmtc.io import atomic_write_json
            from xmtc.metrics import format_table

            if (args.texts is None) != (args.labels is None):
                raise UserError("pass --texts and --labels together (or neither, for the run's test split)")
            check_batch_size(args.batch_size)
            device = inference_device(args.device)
            # Other files need only the run directory (labels.txt, tokenizer/, corpus.json); the test split, the data.
            own = args.texts is None
            cfg, model, corpus = load_run(args.run, args.tag, device=device, need_data=own, need_counts=not own, announce=True)
            if args.batch_size is not None:
                cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=args.batch_size))
            if args.texts is None:
                split = corpus.test
            else:
                data = dataclasses.replace(cfg.data, bad_lines=args.bad_lines or cfg.data.bad_lines)
                try:
                    split, stats = encode_labeled_files(corpus, args.texts, args.labels, data)
                except UserError as e:  # the readers' advice names the config key; here it is an option
                    raise UserError(str(e).replace('set data.bad_lines to "skip"', "pass --bad-lines skip")) from None
                skipped = ", ".join(f"{k.removeprefix('eval_skipped_')} {n}" for k, n in stats.items() if k.startswith("eval_skipped_") and n)
                if not len(split):  # metrics of no document would read as a model that gets everything wrong
                    raise UserError(f"{args.texts} and {args.labels} hold no document to evaluate"
                                    + (f" (skipped: {skipped})" if skipped else ""))
                if skipped:
                    total = sum(n for k, n in stats.items() if k.startswith("eval_skipped_"))
                    print(f"{args.texts}: skipped {total} document(s) ({skipped})", file=sys.stderr)
                if stats.get("eval_unseen_labels_dropped"):  # the run cannot predict them: they are left out of the metrics
                    print(f"{args.labels}: dropped {stats['eval_unseen_labels_dropped']} occurrence(s) of labels the run never saw "
                          f"in training ({stats.get('eval_docs_without_labels', 0)} document(s) left without labels, still counted)",
                          file=sys.stderr)
            metrics = evaluate(model, split, cfg, 0, 1, device, corpus.label_counts, corpus.label_counts_docs, progress=args.progress)
            if args.json:
                try:
                    atomic_write_json(args.json, metrics)
                except OSError as e:
                    raise UserError(f"--json {args.json} could not be written: {e.strerror or e}") from None
            results.write(format_table(metrics, title=f"{args.run} ({len(split)} documents)") + "\n")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
