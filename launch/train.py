"""Train and evaluate an XMTC model.

One device or CPU:       python launch/train.py --config debug_xml_cnn
Several processes/GPUs:  deepspeed --num_gpus 2 launch/train.py --config xml_cnn_reuters
                         torchrun --nproc_per_node 2 launch/train.py --config xml_cnn_reuters
Several nodes:           see launch/slurm/ (sbatch) or deepspeed --hostfile
Overrides:               ... --train.max_steps 20 --deepspeed.zero_optimization.stage 2

A bare config name is looked up in configs/; a path works too. User errors (bad config key, missing
data file) print one sentence and exit with 2; a run checkpointed on SIGUSR1/SIGTERM exits with 75 (SLURM's
scripts requeue it), on Ctrl-C with 130 (a second Ctrl-C, or one before training starts: 130 without a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xmtc.config import UserError, load_config  # noqa: E402
from xmtc.config_checks import check_deepspeed_schema  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name in configs/ or path to a JSON file")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, rest)
        check_deepspeed_schema(cfg.deepspeed)
    except UserError as e:
        from xmtc.distributed import say_error

        say_error(str(e))  # once for the run: before any process group, through a store at its address
        return 2
    from xmtc.distributed import say_error, teardown
    from xmtc.stopping import EXIT_INTERRUPTED, Preempted, StopSignal
    from xmtc.trainer import train

    try:
        train(cfg, args.local_rank)
    except Preempted as e:
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the training loop, or twice (one in the loop checkpoints: Preempted)
        if os.environ.get("RANK", "0") == "0":
            latest = os.path.join(cfg.train.output_dir, "checkpoints", "latest")
            kept = (f"the newest checkpoint is the one {latest} names (continue with --train.resume true)"
                    if os.path.isfile(latest) else "no checkpoint was written")
            print(f"error: interrupted (Ctrl-C) without a checkpoint of this step; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as e:
        say_error(str(e))  # once for the run, through the process group's store
        return 2
    finally:
        StopSignal.ignore_further()  # the run is over: a late SIGUSR1/SIGTERM must not turn its exit into 138/143
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python has it (a caller in this interpreter)
        teardown()
    return 0


if __name__ == "__main__":
    from xmtc.process import exit_process

    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C while the config is read or the modules load, before the trainer has handlers
        print("error: interrupted (Ctrl-C) before training started", file=sys.stderr)
        code = 130
    exit_process(code)  # not sys.exit: see exit_process
