"""A one-node SLURM cluster on localhost for the batch-script tests: real slurmctld, slurmd and munged.

Debian's packages are installed with apt when missing; every piece of state (munge key and socket,
slurm.conf, spool, logs, pid files) lives in one directory, and the daemons run in the foreground as
children of this process, so stopping them is a kill by PID. No systemd, no cgroups
(proctrack/linuxproc, task/none). Run it by hand to get a cluster to play with:

    python tests/slurm/local_cluster.py /tmp/slurm     # prints `export SLURM_CONF=...`, Ctrl-C stops it
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo"]
NODE = "localhost"
# Job states after which a job does not run again (a requeued job passes through PENDING instead).
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


class ClusterUnavailable(Exception):
    """This machine cannot run SLURM (the message says why); tests skip on it."""


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports: the sockets stay open together so the kernel cannot hand one out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ensure_installed() -> None:
    """Install Debian's SLURM and MUNGE packages unless their binaries are already on PATH."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if sys.platform != "linux":
        raise ClusterUnavailable(f"SLURM needs Linux, this is {sys.platform}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM is not installed and installing it (apt-get) needs root")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        # A fresh machine has empty package lists; fetch them once and retry.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise ClusterUnavailable(f"apt-get could not install {' '.join(PACKAGES)}: {' '.join(tail)}")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise ClusterUnavailable(f"installed {' '.join(PACKAGES)} but {', '.join(missing)} is still not on PATH")


class LocalSlurm:
    """slurmctld + slurmd + munged for one node named `localhost` with `cpus` CPUs, state under `root`."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.daemons: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM commands (and, through sbatch, for the jobs)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("slurmd and slurmctld need root (this test runs them as SlurmUser=root)")
        ensure_installed()
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket whose directories others cannot traverse, and a key others can read.
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(self._slurm_conf())
        try:
            socket_path = self.root / "munge" / "munge.socket"
            self._spawn("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={socket_path}",
                                   f"--pid-file={self.root / 'munge/munged.pid'}",
                                   f"--log-file={self.root / 'log/munged.log'}",
                                   f"--seed-file={self.root / 'munge/munged.seed'}"])
            self._wait_for(lambda: socket_path.exists(), timeout, "munged did not create its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait_for(lambda: self.node_state() == "idle", timeout, "the node did not become idle")
        except BaseException:
            self.stop()
            raise

    def _slurm_conf(self) -> str:
        r = self.root
        ctld_port, slurmd_port = _free_ports(2)
        return f"""\
ClusterName=xmtc-test
SlurmctldHost={NODE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s);
# sched_interval=1 then starts it within a second.
AuthInfo=socket={r}/munge/munge.socket,cred_expire=5
SchedulerParameters=sched_interval=1
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
MinJobAge=3600
# Declared CPUs may exceed the machine's: the tests run several 2-task jobs side by side.
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        # Own session: a Ctrl-C to the test must leave the daemons to stop() (jobs first), not kill them.
        self.daemons[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                              start_new_session=True)
        log.close()

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.daemons.items() if p.poll() is not None]
            if dead:
                name = dead[0]
                raise RuntimeError(f"{name} exited with {self.daemons[name].returncode}; {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:.0f} s; {self.log_tail('slurmctld')} {self.log_tail('slurmd')}")

    def log_tail(self, name: str, lines: int = 5) -> str:
        text = ""
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdout"):
            if path.exists():
                text += path.read_text(errors="replace")
        return f"{name} log: " + " | ".join(text.strip().splitlines()[-lines:])

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), env=kw.pop("env", self.env), capture_output=True, text=True, **kw)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
        return done

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        text = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def stop(self) -> None:
        """Cancel what is left of the jobs, then stop slurmd, slurmctld and munged by PID."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", check=False, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = self.run("squeue", "-h", "-t", "running,completing", check=False, timeout=30)
                if done.returncode != 0 or not done.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    cluster = LocalSlurm(Path(argv[0]).resolve())
    t0 = time.monotonic()
    try:
        cluster.start()
    except ClusterUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cluster up in {time.monotonic() - t0:.1f} s; elsewhere: export SLURM_CONF={cluster.conf}", flush=True)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        signal.sigwait(stop_signals)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
