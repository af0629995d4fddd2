"""launch/slurm/ on a real SLURM: a one-node cluster on localhost (local_cluster.py), CPU ranks, gloo.

Every job of the module is submitted at once and they run side by side, so the module takes about
as long as its slowest job: a run that is signalled, checkpoints, is requeued and resumes.
  reference            plain `sbatch` with resource flags, srun (one process per rank), runs to the end
  preempted_srun       submit.sh with XMTC_* variables, srun; USR1 to the job steps after its first checkpoint
  preempted_deepspeed  multi_node.sbatch, the DeepSpeed launcher per node; USR1 to the batch shell instead
  terminated_deepspeed the same, SIGTERM to every process of the job steps: DeepSpeed's launcher must pass on 75
  rank_killed          rank 1 is SIGKILLed at start-up; rank 0, left waiting for it, must not keep the job alive
  bad_config           a config that does not exist
  port_taken           its master port is taken (by this test) between the probe and the ranks' bind: starts again
  array_<N>            tasks 1-3 of one job array, one rank each, task N with line N of XMTC_ARRAY_ARGS (2 lines)
`scancel --signal=USR1 JOB` reaches every process of the job steps and not the batch shell, like the
scripts' `#SBATCH --signal=USR1@180` near the time limit: the path users get. `scancel --batch` is the
path of `--signal=B:USR1@...`, which the batch shell forwards to the steps.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from local_cluster import FINISHED

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "launch" / "slurm"
STEPS = 120  # the first checkpoint is at step 20: 100 steps for the signal to land mid-run
ARRAY_STEPS = 10
GRACE_S = 15  # XMTC_EXIT_GRACE of the rank_killed job
TIMEOUT_S = 900


@dataclass
class Job:
    name: str
    out: Path
    job_id: int | str = 0  # ARRAYID_TASK for an array task
    info: dict = field(default_factory=dict)
    acted_at: float = 0.0  # when the test signalled or killed it
    ended_at: float = 0.0
    took_port: bool = False  # port_taken: the test held the job's first port before rank 0 bound it

    def log(self, restart: int, rank: int) -> str:
        """The rank's log of one start of the job (srun's rank<R>.log or DeepSpeed's <time>_rank<R>.log)."""
        found = sorted((self.out / "logs" / f"slurm-{self.slurm_id}" / f"restart{restart}").glob(f"*rank{rank}.log"))
        assert found, f"{self.name}: no log of rank {rank}, restart {restart} under {self.out / 'logs'}"
        return found[0].read_text(errors="replace")

    @property
    def slurm_id(self) -> str:
        """SLURM_JOB_ID inside the job: an array task's own id, not ARRAYID_TASK."""
        return self.info.get("JobId", str(self.job_id))

    def batch_log(self) -> str:
        return (self.out / "logs" / f"slurm-{self.slurm_id}" / "batch.log").read_text()

    def final(self) -> dict:
        return json.loads((self.out / "final_metrics.json").read_text())


def job_env(job: Job, **extra: str) -> dict[str, str]:
    return {
        "XMTC_CONFIG": "debug_xml_cnn",
        "XMTC_TRAIN_ARGS": f"--train.output_dir {job.out} --train.max_steps {STEPS} --parallel.dist_backend gloo",
        "XMTC_PYTHON": sys.executable,
        "XMTC_ROOT": str(REPO),  # plain sbatch runs from the job's directory, not the repository root
        # DeepSpeed JIT-builds its CPU shared-memory op once; share that build with the other tests.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
        **extra,
    }


def submit(cluster, workdir: Path, job: Job, argv: list[str], env: dict[str, str]) -> None:
    done = cluster.run(*argv, cwd=workdir, env={**cluster.env, **env})
    job.job_id = int(done.stdout.strip().split(";")[0])


def rank_pid(cluster, job_id: int, rank: int) -> int | None:
    """PID of one rank of the job's step, from SLURM's own process tracking."""
    for line in cluster.run("scontrol", "listpids", str(job_id), check=False).stdout.splitlines()[1:]:
        pid, _, step, _, global_id = (line.split() + [""] * 5)[:5]
        if step == "0" and global_id == str(rank):
            return int(pid)
    return None


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory) -> dict[str, Job]:
    cluster = slurm_cluster
    work = tmp_path_factory.mktemp("slurm_jobs")
    names = ("reference", "preempted_srun", "preempted_deepspeed", "terminated_deepspeed", "rank_killed", "bad_config",
             "port_taken")
    jobs = {n: Job(n, work / n) for n in names}
    cpu_node = {"XMTC_GPUS_PER_NODE": "0", "XMTC_RANKS_PER_NODE": "2", "XMTC_CPUS_PER_RANK": "1"}
    sbatch = ["sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=20"]
    submit_sh = str(SLURM_DIR / "submit.sh")
    single, multi = str(SLURM_DIR / "single_node.sbatch"), str(SLURM_DIR / "multi_node.sbatch")

    j = jobs["reference"]
    submit(cluster, work, j, [*sbatch, single], job_env(j))
    j = jobs["preempted_srun"]
    submit(cluster, work, j, [submit_sh, single, "--parsable", "--time=20"], job_env(j, **cpu_node))
    j = jobs["preempted_deepspeed"]
    submit(cluster, work, j, [submit_sh, multi, "--parsable", "--time=20"],
           job_env(j, XMTC_NODES="1", XMTC_LAUNCHER="deepspeed", **cpu_node))
    j = jobs["terminated_deepspeed"]
    submit(cluster, work, j, [submit_sh, multi, "--parsable", "--time=20"],
           job_env(j, XMTC_NODES="1", XMTC_LAUNCHER="deepspeed", **cpu_node))
    j = jobs["rank_killed"]
    submit(cluster, work, j, [submit_sh, single, "--parsable", "--time=20"],
           job_env(j, XMTC_EXIT_GRACE=str(GRACE_S), **cpu_node))
    j = jobs["bad_config"]
    submit(cluster, work, j, [*sbatch, single], job_env(j, XMTC_CONFIG="no_such_config"))
    j = jobs["port_taken"]
    submit(cluster, work, j, [*sbatch, single, "--train.max_steps", str(ARRAY_STEPS)], job_env(j, XMTC_EXIT_GRACE=str(GRACE_S)))
    squatters: list[socket.socket] = []  # the port_taken job's first port, held until every job has ended
    sweep = work / "sweep.txt"
    sweep.write_text(f"--train.max_steps {ARRAY_STEPS} --train.lr 0.01\n--train.max_steps {ARRAY_STEPS} --train.lr 0.02\n")
    array = Job("array", work / "array")
    submit(cluster, work, array, ["sbatch", "--parsable", "--array=1-3", "--gpus-per-node=0", "--ntasks-per-node=1",
                                  "--cpus-per-task=1", "--time=20", single], job_env(array, XMTC_ARRAY_ARGS=str(sweep)))
    for task in (1, 2, 3):  # train_job.sh gives each task its own directory
        jobs[f"array_{task}"] = Job(f"array_{task}", array.out / f"task{task}", job_id=f"{array.job_id}_{task}")

    deadline = time.monotonic() + TIMEOUT_S
    running = dict(jobs)
    while running:
        for j in list(running.values()):
            if not j.acted_at and j.name.startswith(("preempted", "terminated")) and (j.out / "checkpoints" / "latest").is_file():
                how = {"preempted_srun": ["--signal=USR1"], "preempted_deepspeed": ["--batch", "--signal=USR1"],
                       "terminated_deepspeed": ["--signal=TERM"]}[j.name]
                cluster.run("scancel", *how, str(j.job_id))
                j.acted_at = time.monotonic()
            if not j.acted_at and j.name == "port_taken" and (j.out / "logs").is_dir():
                # The batch log names the port as the ranks start; they need seconds of imports before binding it.
                found = re.search(r"master \S+:(\d+)", "".join(f.read_text() for f in (j.out / "logs").glob("*/batch.log")))
                if found:
                    squatter = socket.socket()
                    try:
                        squatter.bind(("", int(found.group(1))))
                        squatter.listen()
                        squatters.append(squatter)
                        j.took_port = True
                    except OSError:  # rank 0 was faster than the imports ever are: the test says so below
                        squatter.close()
                    j.acted_at = time.monotonic()
            if not j.acted_at and j.name == "rank_killed":
                pid = rank_pid(cluster, j.job_id, rank=1)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    j.acted_at = time.monotonic()
            j.info = cluster.job(j.job_id)
            if j.info["JobState"] in FINISHED:
                j.ended_at = time.monotonic()
                del running[j.name]
        if time.monotonic() > deadline:
            for j in running.values():
                cluster.run("scancel", str(j.job_id), check=False)
            pytest.fail(f"jobs {sorted(running)} did not finish within {TIMEOUT_S} s")
        time.sleep(0.5)
    for squatter in squatters:
        squatter.close()
    return jobs


def assert_completed(job: Job, restarts: int) -> None:
    info = job.info
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), (
        f"{job.name}: {info['JobState']} exit {info['ExitCode']} after {info['Restarts']} restarts; "
        f"batch log:\n{job.batch_log()}")


def test_batch_job_trains_to_the_end(jobs):
    job = jobs["reference"]
    assert_completed(job, restarts=0)
    assert (job.info["NumNodes"], job.info["NumTasks"]) == ("1", "2")
    final = job.final()
    assert final["step"] == STEPS and math.isfinite(final["train_loss"])
    evals = [json.loads(line) for line in (job.out / "metrics.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == STEPS and evals[-1]["train_loss"] == final["train_loss"]
    assert "training finished" in job.batch_log()
    for rank in (0, 1):
        assert "Traceback" not in job.log(restart=0, rank=rank)
    assert f"final metrics (step {STEPS}" in job.log(restart=0, rank=0)


@pytest.mark.parametrize("name", ["preempted_srun", "preempted_deepspeed", "terminated_deepspeed"])
def test_signal_checkpoints_requeues_and_resumes_exactly(jobs, name):
    job, reference = jobs[name], jobs["reference"]
    assert job.acted_at, f"{name} never wrote a checkpoint, so it was never signalled"
    assert_completed(job, restarts=1)
    first, second = job.log(restart=0, rank=0), job.log(restart=1, rank=0)
    stopped = [line for line in first.splitlines() if line.startswith("signal received: checkpoint at step ")]
    assert stopped, f"{name}: the first start did not checkpoint on the signal:\n{first[-2000:]}"
    step = int(stopped[0].split()[5])
    assert 0 < step < STEPS
    assert f"resumed from {job.out / 'checkpoints'} at step {step}" in second
    assert "requeueing" in job.batch_log()
    assert ("passing it to the ranks" in job.batch_log()) == (name == "preempted_deepspeed")
    final = job.final()
    assert final["step"] == STEPS
    assert final["train_loss"] == pytest.approx(reference.final()["train_loss"], abs=1e-6)


def test_dead_rank_fails_the_job_within_the_grace_period(jobs):
    job = jobs["rank_killed"]
    assert job.acted_at, "rank 1 of rank_killed never appeared, so it was never killed"
    assert job.info["JobState"] == "FAILED" and job.info["ExitCode"] != "0:0", job.info
    assert job.info["Restarts"] == "0"
    # Rank 0 would wait in the rendezvous for the 30-minute process-group timeout; srun --wait ends
    # it GRACE_S after rank 1 died (plus SLURM's kill and clean-up, slow on a loaded machine).
    assert job.ended_at - job.acted_at < GRACE_S + 60
    assert "training failed: srun exited with" in job.batch_log()
    assert not (job.out / "final_metrics.json").exists()


def test_missing_config_fails_the_job_with_one_sentence(jobs):
    job = jobs["bad_config"]
    assert (job.info["JobState"], job.info["ExitCode"]) == ("FAILED", "2:0"), job.info
    output = Path(job.info["StdOut"]).read_text()
    assert "error: config 'no_such_config' is neither a file nor a config in" in output
    assert "Traceback" not in output


def test_array_tasks_train_their_own_lines_in_their_own_directories(jobs):
    losses = []
    for task, lr in ((1, 0.01), (2, 0.02)):
        job = jobs[f"array_{task}"]
        assert_completed(job, restarts=0)
        config = json.loads((job.out / "config.json").read_text())
        assert (config["train"]["lr"], config["train"]["max_steps"]) == (lr, ARRAY_STEPS)
        assert job.final()["step"] == ARRAY_STEPS
        losses.append(job.final()["train_loss"])
        assert f"output {job.out};" in job.batch_log()
    assert losses[0] != losses[1]
    job = jobs["array_3"]  # the file has two lines
    assert (job.info["JobState"], job.info["ExitCode"]) == ("FAILED", "2:0"), job.info
    output = Path(job.info["StdOut"]).read_text()
    assert "error: array task 3 has no line in XMTC_ARRAY_ARGS=" in output and "(submit with --array=1-2)" in output
    assert not job.out.exists()


def test_a_port_taken_before_the_ranks_bind_it_starts_them_again(jobs):
    job = jobs["port_taken"]
    assert job.acted_at, "port_taken's batch log never named its port, so it was never taken"
    assert job.took_port, "rank 0 bound its port before this test could take it"
    assert_completed(job, restarts=0)
    batch = job.batch_log()
    retried = re.search(r"port (\d+) was taken before the ranks bound it \(address in use\); starting again on port (\d+)", batch)
    assert retried and retried.group(1) != retried.group(2), batch
    first = job.log(restart=0, rank=0)
    assert "EADDRINUSE" in first or "ddress already in use" in first, first[-2000:]
    retry = (job.out / "logs" / f"slurm-{job.slurm_id}" / "restart0" / "port-retry1" / "rank0.log").read_text()
    assert f"final metrics (step {ARRAY_STEPS}" in retry
    assert job.final()["step"] == ARRAY_STEPS
