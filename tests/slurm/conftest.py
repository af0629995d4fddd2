"""The SLURM cluster fixture: one node on localhost, up for the whole tests/slurm module."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from local_cluster import ClusterUnavailable, LocalSlurm

# Room for the test module's jobs to run side by side (2 ranks each); slurmd accepts more CPUs than
# the machine has (config_overrides), the jobs only share the real cores.
CLUSTER_CPUS = 18


@pytest.fixture(scope="module")
def slurm_cluster():
    # Not under pytest's tmp_path: munged insists that every directory above its socket is world-traversable.
    root = Path(tempfile.mkdtemp(prefix="xmtc-slurm-"))
    cluster = LocalSlurm(root, cpus=CLUSTER_CPUS)
    try:
        cluster.start()
    except ClusterUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no SLURM on this machine: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
