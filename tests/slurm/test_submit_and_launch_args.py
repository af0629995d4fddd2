"""What launch/slurm/ decides before SLURM is involved: submit.sh's flags and refusals, DeepSpeed's device ids.

submit.sh runs against a stand-in `sbatch` that records its arguments; the real sbatch takes the
same scripts in test_batch_scripts.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "launch" / "slurm" / "submit.sh"
SINGLE = "launch/slurm/single_node.sbatch"


@pytest.fixture
def submit(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorded = tmp_path / "sbatch_args"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "XMTC_ROOT=$XMTC_ROOT" "$@" > {recorded}\nenv > {tmp_path / "sbatch_env"}\n')
    fake.chmod(0o755)

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str] | None]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("XMTC_", "SBATCH_"))}
        done = subprocess.run([str(SUBMIT), *args], cwd=REPO, capture_output=True, text=True,
                              env={**clean, "PATH": f"{bin_dir}:{clean['PATH']}", **env})
        return done, (recorded.read_text().splitlines() if recorded.exists() else None)

    return run


def test_environment_becomes_sbatch_flags(submit):
    done, argv = submit(SINGLE, "--time=1:00:00", "--", "--train.max_steps", "5",
                        XMTC_NODES="4", XMTC_GPUS_PER_NODE="8", XMTC_CPUS_PER_RANK="6", XMTC_CONFIG="debug_xml_cnn")
    assert done.returncode == 0, done.stderr
    assert argv == [f"XMTC_ROOT={REPO}", "--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=6",
                    "--time=1:00:00", SINGLE, "--train.max_steps", "5"]


def test_cpu_nodes_take_ranks_per_node(submit):
    done, argv = submit(SINGLE, XMTC_GPUS_PER_NODE="0", XMTC_RANKS_PER_NODE="2")
    assert done.returncode == 0, done.stderr
    assert argv[1:] == ["--gpus-per-node=0", "--ntasks-per-node=2", SINGLE]


def test_unset_variables_keep_the_script_defaults(submit):
    done, argv = submit(SINGLE)
    assert done.returncode == 0, done.stderr
    assert argv[1:] == [SINGLE]


@pytest.mark.parametrize("env, message", [
    ({"XMTC_CONFIG": "no_such_config"}, "error: config 'no_such_config' is neither a file nor a config in"),
    ({"XMTC_CONFIG": "debug_xml_cnn", "XMTC_TRAIN_ARGS": "--train.no_such_key 1"}, "train.no_such_key"),
    ({"XMTC_TRAIN_ARGS": "--train.no_such_key 1"}, "train.no_such_key"),  # against the scripts' default config
    ({"XMTC_GPUS_PER_NODE": "0"}, "error: XMTC_GPUS_PER_NODE=0 needs XMTC_RANKS_PER_NODE"),
    ({"XMTC_NODES": "two"}, "error: XMTC_NODES is 'two'; it must be an integer >= 1"),
    # Settings that contradict each other are refused here too, not by every rank once the job has its nodes.
    ({"XMTC_CONFIG": "debug_xml_cnn", "XMTC_TRAIN_ARGS": '--train.precision fp32 --deepspeed.bf16.enabled true'},
     "error: config key 'train.precision' is \"fp32\" but deepspeed.bf16.enabled is true; set one of them"),
    ({"XMTC_CONFIG": "debug_xml_cnn", "XMTC_TRAIN_ARGS": '--deepspeed.fp16.enabled maybe'},
     "error: config key 'deepspeed.fp16.enabled' is \"maybe\"; DeepSpeed reads it as a boolean"),
])
def test_bad_input_is_refused_before_submitting(submit, env, message):
    done, argv = submit(SINGLE, **env)
    assert done.returncode == 2
    assert argv is None, "sbatch ran although the input was refused"
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_array_args_become_a_checked_job_array(submit, tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("--train.lr 0.01\n--train.lr 0.02 --train.seed 3\r\n--train.weight_decay 0.5\n")
    done, argv = submit(SINGLE, "--", "--train.max_steps", "5", XMTC_CONFIG="debug_xml_cnn", XMTC_ARRAY_ARGS=str(sweep))
    assert done.returncode == 0, done.stderr
    assert argv[1:] == ["--array=1-3", SINGLE, "--train.max_steps", "5"]
    assert f"XMTC_ARRAY_ARGS={sweep}" in (tmp_path / "sbatch_env").read_text().splitlines()
    # An --array of the user's (a subset, a concurrency limit) is kept as given.
    done, argv = submit(SINGLE, "--array=2-3%1", XMTC_CONFIG="debug_xml_cnn", XMTC_ARRAY_ARGS=str(sweep))
    assert done.returncode == 0, done.stderr
    assert argv[1:] == ["--array=2-3%1", SINGLE]


@pytest.mark.parametrize("lines, message", [
    ("--train.lr 0.01\n--train.lr_typo 0.02\n", "line 2: config key 'train.lr_typo' is unknown"),
    ("--train.lr 0.01\n\n--train.lr 0.03\n", "line 2 is empty; line N holds the overrides of array task N"),
    ("", "is empty; give one line of trainer overrides per array task"),
    # The job reads lines as grep/sed do and splits them as `read -a` does: other white space would differ there.
    ("--train.lr 0.001\r--train.lr 0.002\r", "line 1 holds the white space '\\r' (U+000D)"),
    ("--train.lr 0.01\n--train.lr\u00a00.02\n", "line 2 holds the white space '\\xa0' (U+00A0)"),
])
def test_a_bad_array_line_is_refused_before_submitting(submit, tmp_path, lines, message):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text(lines)
    done, argv = submit(SINGLE, XMTC_CONFIG="debug_xml_cnn", XMTC_ARRAY_ARGS=str(sweep))
    assert done.returncode == 2 and argv is None
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_batch_script_is_refused(submit):
    done, argv = submit("launch/slurm/no_such.sbatch")
    assert done.returncode == 2 and argv is None
    assert done.stderr.startswith("error: batch script 'launch/slurm/no_such.sbatch' not found")


@pytest.fixture
def deepspeed_node():
    spec = importlib.util.spec_from_file_location("deepspeed_node", REPO / "launch" / "slurm" / "deepspeed_node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("visible, expected", [
    (None, [0, 1]),  # CPU nodes, or SLURM without GPU binding
    ("4,5", [4, 5]),  # a node shared with another job: keep SLURM's GPUs, not 0 and 1
    ("0,1,2,3", [0, 1]),
    ("GPU-a1,GPU-b2", ["GPU-a1", "GPU-b2"]),
])
def test_deepspeed_gets_the_gpus_slurm_gave_the_node(deepspeed_node, monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert deepspeed_node.local_device_ids(2) == expected


def test_deepspeed_node_refuses_fewer_gpus_than_ranks(deepspeed_node, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(SystemExit, match="2 ranks per node but this node sees only GPUs 3"):
        deepspeed_node.local_device_ids(2)


def test_srun_variables_map_to_ranks_inside_a_step_only(monkeypatch):
    from xmtc.config import ConfigError
    from xmtc.distributed import map_launcher_env

    # map_launcher_env writes os.environ itself: register every key it writes with monkeypatch first, so that
    # the test leaves them as it found them (a leaked RANK sent later subprocess runs to a stale rendezvous).
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    # The batch script of an 8-task allocation (sbatch sets these there too): a plain python run is one process.
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert map_launcher_env() is True and (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key)
    # Task 5 of a 6-task srun step in that allocation: the step's count is the world size.
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "6")
    with pytest.raises(ConfigError, match="srun launch: export MASTER_ADDR and MASTER_PORT"):
        map_launcher_env()
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert map_launcher_env() is False
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("5", "1", "6")


@pytest.mark.parametrize("per_node, threads", [("4", 2), ("2(x3)", 4), ("4,3", 2), (None, 8)])
def test_threads_split_between_a_steps_tasks_on_a_node(monkeypatch, per_node, threads):
    import torch

    from xmtc import distributed

    for key in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")  # the allocation's: not what this step runs
    if per_node is not None:
        monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", per_node)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    before = torch.get_num_threads()
    try:
        distributed.limit_cpu_threads()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_scripts_run_under_the_bash_of_older_clusters():
    # Bash before 4.4 (CentOS 7 and RHEL 7 ship 4.2) calls "${a[@]}" of an empty array an unbound variable under
    # `set -u`, and bash before 4.3 has no negative subscripts: submit.sh without overrides stopped there. Every
    # expansion of an array that can be empty goes through ${a[@]+"${a[@]}"} (or ${a[*]-}), which any bash takes.
    import re

    may_be_empty = {"train_args", "env_args", "sbatch_opts", "flags"}  # task_args: checked non-empty before use
    for script in sorted((REPO / "launch" / "slurm").glob("*.sh")):
        text = script.read_text()
        bare = [m.group(0) for m in re.finditer(r'(?<![+])"\$\{(\w+)\[[@*]\]\}"|\$\{(\w+)\[\*\]\}', text)
                if (m.group(1) or m.group(2)) in may_be_empty]
        assert not bare, f"{script.name}: {bare}"
        assert not re.search(r"\$\{\w+\[-\d+\]\}", text), f"{script.name}: a negative subscript needs bash 4.3"
    # The guarded forms expand to nothing, and to the words unchanged, in the bash at hand.
    probe = 'set -u; a=(); printf "<%s>" ${a[@]+"${a[@]}"} "${a[*]-}"; a=("x y" z); printf "<%s>" ${a[@]+"${a[@]}"}'
    assert subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout == "<><x y><z>"
