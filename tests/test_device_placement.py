"""Two ranks on one GPU (more ranks per node than visible GPUs) stop at start-up with one sentence, said by
rank 0, instead of NCCL's "Duplicate GPU detected" at the first collective. The devices are compared through
the rendezvous store; here two gloo CPU ranks under torchrun stand in, each naming the device it would use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launch_helpers import ROOT, env, launcher

SCRIPT = """
import sys, torch.distributed as dist
from xmtc.config import UserError
from xmtc.distributed import check_one_process_per_device, say_error
dist.init_process_group("gloo")
rank = dist.get_rank()
device = "host-a GPU 1111-aa" if sys.argv[1] == "shared" else f"host-a GPU {rank}-aa"
try:
    check_one_process_per_device(device)
except UserError as e:
    say_error(str(e))  # as launch/train.py does
    sys.exit(2)
sys.stdout.write(f"rank {rank} ok\\n")  # one write: print() writes the newline apart, and two ranks interleave
"""


@pytest.mark.parametrize("devices", ["shared", "own"])
def test_two_ranks_on_one_device_stop_with_one_sentence(tmp_path, devices):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([*launcher("torchrun"), str(script), devices], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if devices == "own":
        assert proc.returncode == 0 and errors == [], proc.stderr[-2000:]
        assert sorted(line for line in lines if line.endswith(" ok")) == ["rank 0 ok", "rank 1 ok"]
    else:
        assert proc.returncode != 0 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert errors[0].startswith("error: ranks 0 and 1 both run on host-a GPU 1111-aa: this node has more ranks than visible GPUs")
