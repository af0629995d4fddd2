"""Top-k labels for each line of a texts file, from a trained run.

    python -m xmtc.predict --run runs/xml_cnn_reuters --texts test_texts.txt --k 5 --out predictions.txt

Writes one line per line of the texts file, the k best first (for SGM: the whole emitted set, in order, up
to sgm.max_decode_len labels, whatever --k); an empty or undecodable line gets an empty output line, so the
lines stay aligned (counted on stderr). `--format text` (default): `label:score label:score ...`, refused for a
run whose label names hold whitespace; `--format jsonl`: `{"labels": [...], "scores": [...]}`. Only the run
directory is read (config.json, labels.txt, tokenizer/, checkpoints/), not the training data. The model runs on
the first CUDA device when one is visible (--device), in batches of the run's eval.batch_size (--batch-size). Bad
input prints one sentence and exits with 2; an --out file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from xmtc.config import UserError


def predict_pairs(model, corpus, texts: list[str], k: int, max_len: int, batch_size: int = 256,
                  progress: bool = False) -> list[list[tuple[str, float]]]:
    """(label name, score) pairs of each text, best first; the model runs where its parameters are.
    `progress`: a tqdm bar on stderr (documents, documents/s, ETA), shown only on a terminal."""
    from xmtc.data import collate, encode_texts
    from xmtc.evaluation import move, progress_bar

    out = []
    sets = getattr(model, "predicts_sets", False)
    depth = max(k, model.max_set_size) if sets else k  # a set is printed whole, never cut to k
    device = next(model.parameters()).device
    bar = progress_bar(len(texts), "predict") if progress else None
    for start in range(0, len(texts), batch_size):
        ids = encode_texts(corpus.tokenizer, texts[start : start + batch_size], max_len)
        rows = [{"input_ids": row, "labels": []} for row in ids]
        batch = move(collate(rows, max_len), device)
        with torch.no_grad():
            scores, idx = model(batch["input_ids"], lengths=batch["lengths"], topk=depth)
        for s_row, i_row in zip(scores.float().tolist(), idx.tolist()):
            pairs = [(corpus.label_names[i], s) for i, s in zip(i_row, s_row) if i >= 0]
            out.append(pairs[: k if not sets else None])
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    return out


def format_text(pairs: list[tuple[str, float]]) -> str:
    return " ".join(f"{name}:{score:.4f}" for name, score in pairs)


def format_jsonl(pairs: list[tuple[str, float]]) -> str:
    return json.dumps({"labels": [name for name, _ in pairs], "scores": [round(score, 6) for _, score in pairs]}, ensure_ascii=False)


def predict_lines(model, corpus, texts: list[str], k: int, max_len: int, batch_size: int = 256) -> list[str]:
    return [format_text(p) for p in predict_pairs(model, corpus, texts, k, max_len, batch_size)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the train.output_dir of a run")
    p.add_argument("--texts", required=True, help="one document per line")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the selected one, checkpoints/best.json, if the run selected one, else latest)")
    p.add_argument("--out", default="-", help="output file (default: stdout)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text", help="text: label:score ...; jsonl: one JSON object per line")
    from xmtc.checkpoint import add_inference_arguments

    add_inference_arguments(p)
    args = p.parse_args(argv)
    from xmtc.process import stdout_for_results

    with stdout_for_results() as results:  # what the libraries print while loading goes to stderr
        try:
            from xmtc.checkpoint import check_batch_size, inference_device, load_run
            from xmtc.data import read_texts
            from xmtc.data.readers import read_lines
            from xmtc.io import atomic_write_text

            if args.k < 1:
                raise UserError(f"--k must be at least 1, got {args.k}")
            check_batch_size(args.batch_size)
            device = inference_device(args.device)
            texts, numbers = read_texts(args.texts, "skip")
            total = len(read_lines(args.texts))
            cfg, model, corpus = load_run(args.run, args.tag, device=device, need_data=False, announce=True)
            spaced = next((name for name in corpus.label_names if name != "".join(name.split())), None)
            if args.format == "text" and spaced is not None:
                raise UserError(f"label {spaced!r} of {args.run} holds whitespace, which would make `label:score` lines "
                                "ambiguous; pass --format jsonl")
            form = format_text if args.format == "text" else format_jsonl
            lines = [form([])] * total
            for number, pairs in zip(numbers, predict_pairs(model, corpus, texts, args.k, cfg.data.max_len,
                                                                args.batch_size or cfg.eval.batch_size, args.progress)):
                lines[number - 1] = form(pairs)
            if total > len(texts):
                print(f"{args.texts}: {total - len(texts)} empty or undecodable line(s) got empty predictions", file=sys.stderr)
            text = "".join(f"{line}\n" for line in lines)  # one output line per input line: none for an empty file
            if args.out == "-":
                results.write(text)
            else:
                try:
                    atomic_write_text(args.out, text)
                except OSError as e:
                    raise UserError(f"--out {args.out} could not be written: {e.strerror or e}") from None
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
