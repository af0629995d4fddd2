"""scripts/device_checks.sh, the one command a lent GPU machine runs, end to end at CPU sizes (SMOKE=1).

A GPU lease is minutes long and starts bare: a wrong argument or a lost file there costs the lease.
This runs every stage's real command line on the CPU and checks what comes back.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "kernel_gpu", "bench_kernels", "output_layer", "memory", "e2e_torch", "e2e_auto", "kernel_tests",
          "memory_bench")


@pytest.mark.slow
def test_device_checks_smoke(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, SMOKE="1", PY=sys.executable, OUT=str(out), DEADLINE_S="400")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    from xmtc.distributed import SHM_DIR, SHM_PREFIX

    def workspaces():
        return set(SHM_DIR.glob(f"{SHM_PREFIX}_*")) if SHM_DIR.is_dir() else set()

    before = workspaces()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_checks.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # DeepSpeed's CPU allreduce makes a 69 MB workspace even for a lone launched rank: the trainer unlinks it.
    leaked = workspaces() - before
    assert not leaked, f"left in /dev/shm: {sorted(map(str, leaked))}"
    summary = (out / "summary.txt").read_text()
    for stage in STAGES:
        assert re.search(rf"^{stage}: rc 0 in \d+ s$", summary, re.M), f"{stage} did not pass:\n{summary}"
    # The headline numbers are read back from the files the stages wrote, not from their logs.
    for backend in ("torch", "auto"):
        assert re.search(rf"^e2e_{backend}: last window [1-9]\d* samples/s", summary, re.M), summary
    assert re.search(r"^output layer fused: [1-9]\d* samples/s", summary, re.M), summary
    assert "peak (live tensors)" in summary

    with tarfile.open(out / "device_checks.tar.gz") as tar:
        names = set(tar.getnames())
        final = json.load(tar.extractfile("device_checks/e2e_torch/final_metrics.json"))
    for stage in STAGES:
        assert f"device_checks/{stage}.log" in names
    assert {"device_checks/memory.json", "device_checks/memory.png", "device_checks/output_layer.json",
            "device_checks/bench_kernels/masked_softmax.json", "device_checks/bench_kernels/summary.json",
            "device_checks/memory_bench/debug_xml_cnn-zero0-n1.json"} <= names
    assert not any("/checkpoints" in n for n in names), "checkpoints must not travel back"
    assert final["step"] == 4 and final["num_docs"] > 0
