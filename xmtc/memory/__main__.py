"""python -m xmtc.memory --config CONFIG [--world-size N[,N..]] [--zero-stage S[,S..]] [--label-shards K[,K..]]
    [--dtype bf16|fp32] [--batch B] [--max-memory-gb X] [--measure] [--json PATH] [--plot PATH]
    [--section.key value ...]

Prints the parameter table of CONFIG's model (built on the meta device) and, for every layout
(world size x ZeRO stage x label shards), the per-rank bytes of weights, gradients, optimizer
state, activations and DeepSpeed's buffers at the peak. `--measure` trains a few steps on the ranks
it was launched with (plain python: one; torchrun/deepspeed: several) and prints measured beside
predicted. Exit status: 0, 1 when a layout does not fit in --max-memory-gb, 2 on a user error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from xmtc.config import ConfigError, UserError, load_config

EXAMPLES = """examples:
  python -m xmtc.memory --config xml_cnn_670k --world-size 1,2,4,8 --zero-stage 0,1,2,3 --dtype bf16
  python -m xmtc.memory --config xml_cnn_670k --max-memory-gb 16 --plot 670k.png
  python -m xmtc.memory --config debug_xml_cnn --measure --json debug.json
  torchrun --nproc_per_node 2 -m xmtc.memory --config debug_xml_cnn --zero-stage 2 --measure"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence and exit 2, like every other user error
        raise UserError(f"{message} (see python -m xmtc.memory --help)")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    return values


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = _Parser(prog="python -m xmtc.memory", description=__doc__, epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config name in configs/ or a JSON file")
    p.add_argument("--world-size", type=_ints, default=None, help="ranks, e.g. 1,2,4,8 (default 1; --measure: the launched ranks)")
    p.add_argument("--zero-stage", type=_ints, default=None, help="ZeRO stages 0-3 (default: the config's)")
    p.add_argument("--label-shards", type=_ints, default=None, help="label shards (default: the config's parallel.label_shards)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="weights and activations (default: train.precision; \"auto\" is bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="micro-batch per rank (default: the config's)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="device planned for: the optimizer's scratch differs (default cuda; --measure: the run's)")
    p.add_argument("--num-labels", type=int, default=None, help="labels (default: synthetic.num_labels)")
    p.add_argument("--vocab-size", type=int, default=None, help="embedding rows (default: data.vocab_size)")
    p.add_argument("--target-len", type=int, default=None, help="SGM: decoder steps, longest label list + 1 (default sgm.max_decode_len + 1)")
    p.add_argument("--max-memory-gb", type=float, default=None, help="per-rank memory in GiB; report layouts that do not fit and the smallest that does")
    p.add_argument("--measure", action="store_true", help="run a few real training steps and compare")
    p.add_argument("--steps", type=int, default=3, help="--measure: training steps (default 3)")
    p.add_argument("--snapshot", default=None, help="--measure on CUDA: write the allocator's memory snapshot (pickle) here")
    p.add_argument("--json", default=None, help="write everything as JSON here")
    p.add_argument("--plot", default=None, help="write a stacked-bar PNG here")
    p.add_argument("--items", action="store_true", help="print every layout's line items with their formulas")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_known_args(argv)


def _overrides(args, rest: list[str]) -> list[str]:
    """With --measure the layout flags become config overrides of the measured run."""
    out = list(rest)
    if args.measure:
        for flag, values in (("--world-size", args.world_size), ("--zero-stage", args.zero_stage),
                             ("--label-shards", args.label_shards)):
            if values is not None and len(values) > 1:
                raise ConfigError(f"{flag} takes one value with --measure; got {','.join(map(str, values))}")
        if args.zero_stage:
            out += ["--deepspeed.zero_optimization.stage", str(args.zero_stage[0])]
        if args.label_shards:
            out += ["--parallel.label_shards", str(args.label_shards[0])]
        if args.dtype:
            out += ["--train.precision", args.dtype]
        if args.batch:
            out += ["--deepspeed.train_micro_batch_size_per_gpu", str(args.batch)]
        for flag, value, key in (("--num-labels", args.num_labels, "synthetic.num_labels"), ("--vocab-size", args.vocab_size, "data.vocab_size")):
            if value is not None:  # the measured run reads its data: a count of its own would not be measured
                raise ConfigError(f"{flag} shapes a prediction only; --measure trains on the config's data: "
                                  f"give --{key} {value} instead")
    return out


def planned_dtype(cfg, device: str) -> str:
    """The dtype the trainer runs `cfg` in on `device`, as xmtc.trainer.resolve_deepspeed_config decides it
    (train.precision bf16/fp32 wins over a deepspeed bf16 block; "auto" defers to it, else bf16 on CUDA)."""
    from xmtc.trainer import resolve_deepspeed_config

    ds = resolve_deepspeed_config(cfg, 1, device)  # the precision blocks checked, `enabled` read as DeepSpeed reads it
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError("config key 'deepspeed.fp16' is enabled; the planner models bf16 and fp32 only "
                          "(fp16 keeps the bytes of bf16 plus a loss scaler): pass --dtype bf16 for that estimate")
    return "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"


def main(argv: list[str] | None = None) -> int:
    try:
        return run(*parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        from xmtc.distributed import teardown  # --measure's process groups

        teardown()


def _write(flag: str, path: str, write, *args) -> None:
    """write(path, *args); an OSError (a directory, no permission, a full disk) is one sentence, not a traceback."""
    try:
        write(path, *args)
    except OSError as e:
        raise UserError(f"{flag} {path} could not be written: {e.strerror or e}") from None


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from xmtc.memory import model_shape, predict, report
    from xmtc.memory.params import layer_rows, seed_explanation, seed_total
    from xmtc.memory.plan import Layout, fitting_layouts

    for name in ("batch", "num_labels", "vocab_size", "target_len", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.max_memory_gb is not None and not 0 < args.max_memory_gb < math.inf:
        raise ConfigError(f"--max-memory-gb must be a positive number of GiB, got {args.max_memory_gb:g}")
    for flag, values, low in (("--world-size", args.world_size, 1), ("--label-shards", args.label_shards, 1),
                              ("--zero-stage", args.zero_stage, 0)):
        if values and min(values) < low:
            raise ConfigError(f"{flag} values must be at least {low}, got {','.join(map(str, values))}")
    cfg = load_config(args.config, _overrides(args, rest))

    measured, main_rank = None, True
    if args.measure:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if args.world_size and args.world_size[0] != launched:
            raise ConfigError(f"--measure runs on the ranks it was launched with ({launched}), not --world-size "
                              f"{args.world_size[0]}; start it with torchrun --nproc_per_node {args.world_size[0]} -m xmtc.memory ...")
        from xmtc.memory.measure import measure

        m = measure(cfg, steps=args.steps, snapshot=args.snapshot, local_rank_arg=args.local_rank)
        measured = m.to_dict()
        main_rank = int(os.environ.get("RANK", "0")) == 0
        shape = model_shape(cfg, m.num_labels, m.vocab_size, args.target_len or m.max_target_len)
        device, worlds = m.device, [m.world_size]
    else:
        shape = model_shape(cfg, args.num_labels, args.vocab_size, args.target_len or 0)
        device, worlds = args.device or "cuda", args.world_size or [1]
    dtype = args.dtype or planned_dtype(cfg, device)
    stages = args.zero_stage or [int(cfg.deepspeed.get("zero_optimization", {}).get("stage", 0))]
    shards = args.label_shards or [cfg.parallel.label_shards]
    batch = args.batch or cfg.micro_batch_size

    predictions = []
    for n in worlds:
        for s in stages:
            for k in shards:
                layout = Layout(n, s, k, dtype, batch, device)
                possible = n % k == 0 and not (k > 1 and s == 3) and k <= shape.num_labels
                if possible or len(worlds) * len(stages) * len(shards) == 1:
                    predictions.append(predict(shape, layout))  # a single layout is checked; lists skip impossible ones
    if not predictions:
        raise ConfigError("none of the requested layouts is possible: label shards must divide the world size, "
                          "need ZeRO 0-2 and at most one shard per label")
    if not main_rank:
        return 0

    rows = layer_rows(shape.model, cfg.model.name)
    name = os.path.basename(cfg.source)
    source = "" if measured or args.num_labels or cfg.data.format == "synthetic" else \
        f" (synthetic.num_labels: give --num-labels for the {cfg.data.format} data)"
    out = [report.parameter_table(rows, f"{name}: {cfg.model.name}, {shape.num_labels:,} labels{source}, parameters "
                                        "per layer (meta device)"), "", report.layout_table(predictions)]
    estimates = report.estimator_table(predictions)
    if estimates:
        out += ["", estimates]
    if args.items:
        out += [x for p in predictions for x in ("", report.items_table(p))]
    if measured:
        out += ["", report.measurement_table(predictions[0], measured)]

    status, fit_doc = 0, None
    if args.max_memory_gb is not None:
        limit = int(args.max_memory_gb * 2**30)
        too_big = [p for p in predictions if p.peak > limit]
        out.append("")
        for p in predictions:
            verdict = "fits" if p.peak <= limit else "DOES NOT FIT"
            out.append(f"{p.layout.describe()}: peak {report.gib(p.peak)} GiB {verdict} in {args.max_memory_gb:g} GiB")
        # The fewest ranks from one up, whatever was asked: the answer to "how many do I need?".
        fits = fitting_layouts(shape, Layout(1, 0, 1, dtype, batch, device), limit)
        best = fits[0] if fits else None
        fit_doc = {"limit_bytes": limit, "fits": [p.peak <= limit for p in predictions],
                   "smallest_fit": best.to_dict() if best else None}
        if too_big:
            status = 1
            if best is None:
                levers = "lower the batch, " + ("" if dtype == "bf16" else "use bf16, ") + "or set a smaller deepspeed.zero_optimization.reduce_bucket_size"
                out.append(f"nothing up to 1024 ranks fits {args.max_memory_gb:g} GiB at batch {batch} in {dtype}; {levers}")
            else:
                out.append(f"smallest layout that fits: {best.layout.describe()} (peak {report.gib(best.peak)} GiB)")
                others = [f"ZeRO-{p.layout.zero_stage}" + (f" + {p.layout.label_shards} label shards" if p.layout.label_shards > 1 else "")
                          + f" ({report.gib(p.peak)} GiB)" for p in fits[1:]]
                if others:
                    out.append(f"also fits on {best.layout.world_size} ranks: " + ", ".join(others))
    print("\n".join(out), flush=True)

    if args.json:
        _write("--json", args.json, report.write_json, {
            "config": cfg.source, "model": cfg.model.name, "num_labels": shape.num_labels,
            "parameters": {"rows": [vars(r) | {"total": r.total} for r in rows], "total": sum(r.total for r in rows),
                           "seed_total": seed_total(rows), "seed_explanation": seed_explanation(rows)},
            "layouts": [p.to_dict() for p in predictions], "measurement": measured, "fit": fit_doc})
    if args.plot:
        _write("--plot", args.plot, report.write_plot, predictions, f"{name}: per-rank memory at the peak", measured,
               args.max_memory_gb)
    return status


if __name__ == "__main__":
    from xmtc.process import exit_process

    exit_process(main())  # not sys.exit: see exit_process
