"""Decoding time and set metrics of a trained SGM run on its test split, per beam width (a table).

    python tests/sgm/bench_sgm_decode.py --run runs/sgm_reuters --beams 1 5 [--threads 2]

One process, the run's eval batch size; the time covers encoding, decoding and metric sums.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the train.output_dir of an SGM run")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam widths to time (1 = greedy)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch

    from xmtc.checkpoint import load_run
    from xmtc.evaluation import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, corpus = load_run(args.run, args.tag)
    print(f"{args.run}: {len(corpus.test)} test documents, {corpus.num_labels} labels, "
          f"{torch.get_num_threads()} threads, eval batch {cfg.eval.batch_size}")
    print(f"{'beam':>4}  {'seconds':>8}  {'docs/s':>7}  {'micro_f1':>8}  {'hamming':>8}  {'precision':>9}  {'recall':>6}  {'P@1':>6}")
    for beam in args.beams:
        model.decoder.beam_size = beam
        start = time.perf_counter()
        m = evaluate(model, corpus.test, cfg, 0, 1, torch.device("cpu"), corpus.label_counts, len(corpus.train))
        took = time.perf_counter() - start
        print(f"{beam:>4}  {took:>8.1f}  {len(corpus.test) / took:>7.1f}  {m['micro_f1']:>8.4f}  {m['hamming_loss']:>8.5f}  "
              f"{m['micro_precision']:>9.4f}  {m['micro_recall']:>6.4f}  {m['P@1']:>6.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
