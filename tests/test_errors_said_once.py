"""A user error met by several ranks is said once, by rank 0; one met by a rank other than 0 alone (or worded
differently there) is said by that rank too, as "rank N: ...". Real ranks under both launchers: under
`deepspeed` rank 0 hosts the rendezvous store, under torchrun the agent does; before the process group exists
too (a config error), through a store at the group's address."""

from __future__ import annotations

import subprocess

import pytest

from launch_helpers import ROOT, env, launcher

SCRIPT = """
import os, sys, torch.distributed as dist
from xmtc.config import DataError
from xmtc.distributed import say_error, teardown
from xmtc.process import exit_process
case = sys.argv[-1]  # deepspeed puts --local_rank first
# "-early": met before the process group exists (as a config error is); a rank that meets nothing goes on to it.
early, case = case.endswith("-early"), case.removesuffix("-early")
if not early:
    dist.init_process_group("gloo")
rank = int(os.environ["RANK"])
messages = {
    "same": ["train.txt line 3 is empty", "train.txt line 3 is empty"],
    "rank1": [None, "/node-b/train.txt does not exist"],
    "rank0": ["/node-a/train.txt does not exist", None],
    "different": ["train.txt line 3 is empty", "train.txt line 9 is empty"],
}[case]
code = 0
try:
    if messages[rank] is None:
        if early:
            dist.init_process_group("gloo")
        dist.barrier()  # the rank that met nothing waits for the others, as a training step would
    else:
        raise DataError(messages[rank])
except DataError as e:
    say_error(str(e))  # as launch/train.py does
    code = 2
finally:
    teardown()
exit_process(code)
"""

CASES = [
    ("same", "deepspeed", ["error: train.txt line 3 is empty"]),
    ("same", "torchrun", ["error: train.txt line 3 is empty"]),
    ("rank1", "deepspeed", ["error: rank 1: /node-b/train.txt does not exist"]),
    ("rank1", "torchrun", ["error: rank 1: /node-b/train.txt does not exist"]),
    ("rank0", "deepspeed", ["error: /node-a/train.txt does not exist"]),
    ("different", "torchrun", ["error: rank 1: train.txt line 9 is empty", "error: train.txt line 3 is empty"]),
    # Before the process group: rank 0 hosts a store at its address (deepspeed), or the torchrun agent's is used.
    ("same-early", "deepspeed", ["error: train.txt line 3 is empty"]),
    ("same-early", "torchrun", ["error: train.txt line 3 is empty"]),
    # Rank 0 goes on into the process group, whose store rank 1 reaches at the same address.
    ("rank1-early", "deepspeed", ["error: rank 1: /node-b/train.txt does not exist"]),
    ("rank1-early", "torchrun", ["error: rank 1: /node-b/train.txt does not exist"]),
    ("different-early", "deepspeed", ["error: rank 1: train.txt line 9 is empty", "error: train.txt line 3 is empty"]),
]


@pytest.mark.parametrize("case, kind, expected", CASES, ids=[f"{c}-{k}" for c, k, _ in CASES])
def test_a_user_error_is_said_once_per_run(tmp_path, case, kind, expected):
    script = tmp_path / "say.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([*launcher(kind), str(script), case], cwd=ROOT, env={**env(), "XMTC_ERROR_WAIT_S": "3"},
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    errors = sorted(line for line in output.splitlines() if line.startswith("error: "))
    assert proc.returncode != 0 and errors == expected, output[-3000:]
    assert "DistNetworkError" not in output and "Connection was likely closed" not in output, output[-3000:]


def test_a_rank_that_cannot_reach_rank_0_says_its_own_error_and_nothing_else():
    # Rank 0 had said the error and left (or never came up): torch's store client retried with a warning per
    # attempt around the rank's own sentence.
    import sys

    from xmtc.distributed import free_port

    e = dict(env(), RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), XMTC_ERROR_WAIT_S="1")
    e.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    proc = subprocess.run([sys.executable, "-c", "from xmtc.distributed import say_error; say_error('train.txt line 3 is empty')"],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "error: rank 1: train.txt line 3 is empty\n", proc.stderr
