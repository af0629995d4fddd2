"""Start DeepSpeed's per-node launcher on one node of a SLURM allocation (XMTC_LAUNCHER=deepspeed).

train_job.sh runs this through `srun` once per node. It describes the allocation to DeepSpeed
(nodes in order, ranks per node, and this node's own device ids) and runs DeepSpeed's per-node
launcher (`deepspeed.launcher.launch`) in this process; it forks the node's ranks and exits with the
first non-zero exit code among them (75 after a checkpoint on a signal).

SLURM delivers SIGTERM (scancel, preemption, the time limit) and SIGUSR1 to every process of the
step, the ranks included, and the ranks checkpoint on either. The launcher itself ignores both: its
own SIGTERM handler would kill the ranks within 30 s and exit with 1, losing their 75 (requeue).

    deepspeed_node.py HOSTS RANKS_PER_NODE MASTER_ADDR MASTER_PORT LOG_DIR TRAIN_SCRIPT [ARGS...]

HOSTS is the comma-separated node list of the allocation; SLURM_NODEID says which one this is.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def local_device_ids(ranks: int) -> list:
    """The ids DeepSpeed will write into CUDA_VISIBLE_DEVICES: SLURM's own list when it set one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [d for d in visible.split(",") if d and d != "NoDevFiles"]
    if not ids:
        return list(range(ranks))
    if len(ids) < ranks:
        raise SystemExit(f"error: {ranks} ranks per node but this node sees only GPUs {visible}; "
                         "ask for as many GPUs per node as tasks per node")
    return [int(d) if d.isdigit() else d for d in ids[:ranks]]


def main(argv: list[str]) -> int:
    if len(argv) < 6:
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        return 2
    hosts, ranks, master_addr, master_port, log_dir, *train = argv
    hosts, ranks = hosts.split(","), int(ranks)
    node_rank = int(os.environ["SLURM_NODEID"])
    # Only this node's entry is used for devices; the others only need the right length.
    world = {h: (local_device_ids(ranks) if i == node_rank else list(range(ranks))) for i, h in enumerate(hosts)}
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    # The launcher is signalled with its ranks: the signals are for the ranks (they checkpoint), not a reason to die.
    # The ranks inherit the ignoring until the trainer installs its handler, which it does first thing.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.environ["PYTHONUNBUFFERED"] = "1"
    sys.argv = ["deepspeed.launcher.launch", f"--world_info={world_info}", f"--node_rank={node_rank}",
                f"--master_addr={master_addr}", f"--master_port={master_port}", f"--enable_each_rank_log={log_dir}", *train]
    from deepspeed.launcher import launch

    install = signal.signal
    signal.signal = lambda sig, handler: install(sig, signal.SIG_IGN if sig in STOP_SIGNALS else handler)
    try:
        launch.main()  # exits with the first non-zero exit code of the ranks
    finally:
        signal.signal = install
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
