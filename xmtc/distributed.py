"""Process-group set-up for every way the trainer is started, and rank-0 printing.

Launchers covered: `deepspeed` (passes --local_rank and sets RANK/WORLD_SIZE), `torchrun` (env),
`srun` with one process per rank (SLURM_PROCID/SLURM_LOCALID/SLURM_STEP_NUM_TASKS mapped here), and plain
`python` (a one-process group on a free local port).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from xmtc.config import ConfigError, ParallelConfig


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def map_launcher_env(local_rank_arg: int | None = None) -> bool:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from whatever launched us; True for a lone process."""
    env = os.environ
    # Only inside an srun step: sbatch gives the batch script SLURM_PROCID=0 and the allocation's SLURM_NTASKS
    # too, where a plain `python launch/train.py` is one process, not rank 0 of many.
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise ConfigError("srun launch: export MASTER_ADDR and MASTER_PORT in the batch script (see launch/slurm/)")
    if local_rank_arg is not None and "LOCAL_RANK" not in env:
        env["LOCAL_RANK"] = str(local_rank_arg)
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
        return True
    return False


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device' is \"cuda\" but no CUDA device is visible; use \"auto\" or \"cpu\"")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def limit_cpu_threads() -> None:
    """Split the cores between the processes of this node unless OMP_NUM_THREADS already says.

    torch's default (one thread per core in every process) oversubscribes a node running several ranks.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    env = os.environ
    # SLURM_STEP_TASKS_PER_NODE: this srun step's tasks per node, e.g. "4", "4(x2)" or "4,3" (this node's
    # count is not named; the first is the most any node runs).
    local = env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or env.get("SLURM_STEP_TASKS_PER_NODE") or "1"
    first = re.match(r"\d+", local)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, int(first.group()) if first else 1)))


def setup(parallel: ParallelConfig, device: str = "auto", local_rank_arg: int | None = None) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on CUDA) and pick the device."""
    import deepspeed

    alone = map_launcher_env(local_rank_arg)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cpu":
        limit_cpu_threads()
    backend = parallel.dist_backend
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("config key 'parallel.dist_backend' is \"nccl\" but the device is the CPU; use \"gloo\" or \"auto\"")
    if not dist.is_initialized():
        # A lone process rendezvous through a file: no port to race other jobs for.
        init_method = None
        if alone:
            rendezvous = tempfile.mkdtemp(prefix="xmtc-rdzv-")
            atexit.register(shutil.rmtree, rendezvous, ignore_errors=True)  # the store removes only its file
            init_method = f"file://{rendezvous}/store"
        if local_rank == 0 and (build := shm_op_to_build()) is not None:  # one line per machine, not silence
            print(f"building DeepSpeed's CPU shared-memory op in {build} (once per machine and DeepSpeed version: about a minute "
                  "on a small CPU machine)", file=sys.stderr, flush=True)
        with stale_extension_locks_cleared():  # DeepSpeed JIT-loads its CPU shared-memory op in here
            deepspeed.init_distributed(
                dist_backend=backend,
                auto_mpi_discovery=False,
                timeout=datetime.timedelta(minutes=parallel.timeout_minutes),
                init_method=init_method,
                rank=0 if alone else -1,
                world_size=1 if alone else -1,
            )
    if backend == "gloo":  # one launched process gets a workspace too
        release_shm_workspace(dist.get_rank())
    # NCCL only: gloo ranks may share a GPU.
    if backend == "nccl" and (uuid := getattr(torch.cuda.get_device_properties(dev), "uuid", None)) is not None:
        check_one_process_per_device(f"{socket.gethostname()} GPU {uuid}")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def check_one_process_per_device(device: str) -> None:
    """ConfigError on every rank (said once, by rank 0) when two ranks run on one device (`device` names it, host
    included): more processes per node than visible GPUs (`deepspeed --num_gpus 2` on a one-GPU machine) put
    two ranks on cuda:0, which NCCL refuses at the first collective with "Duplicate GPU detected". A rank
    that sees only its own GPU (cgroups, --gpus-per-task) maps local rank k to cuda:0 rightly, so the
    devices themselves are compared, through the rendezvous store (no NCCL call)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # no default store to use: NCCL will say it
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    store.set(f"xmtc/device/{rank}", device)
    devices = [store.get(f"xmtc/device/{r}").decode() for r in range(world)]
    first: dict[str, int] = {}
    for r, d in enumerate(devices):
        if d in first:
            raise ConfigError(
                f"ranks {first[d]} and {r} both run on {d}: this node has more ranks than visible GPUs; start one "
                "rank per GPU (deepspeed --num_gpus, torchrun --nproc_per_node, --ntasks-per-node = the GPUs per node) "
                "or train on the CPU (--train.device cpu)")
        first[d] = r


def teardown() -> None:
    """Destroy the process groups, so that a caller in the same interpreter can set up again.

    This does not stop gloo's worker threads while anything still refers to the groups (DeepSpeed's
    engine and module globals do): measured, a 1-rank gloo group has 4 threads before and after
    destroy_process_group() while a reference is held, none once it is dropped. A launched rank
    therefore ends with `xmtc.process.exit_process`.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


EXTENSION_LOCK_STALE_S = 300.0
"""A torch-extension build lock older than this was left by a killed process: DeepSpeed's CPU op builds in about a minute."""


def _extension_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def shm_op_to_build() -> Path | None:
    """The build directory of DeepSpeed's CPU shared-memory op when `deepspeed.init_distributed` is about to compile it
    (the op is usable here, not installed prebuilt, and its library is not in torch's extensions directory yet), else
    None. The build takes about a minute of a small CPU machine and prints nothing until it ends."""
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import installed_ops
        from torch.utils.cpp_extension import _get_build_directory

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) or installed_ops.get(builder.NAME, False):
            return None
        where = Path(_get_build_directory(builder.NAME, verbose=False))
    except Exception:  # noqa: BLE001 - another DeepSpeed or torch layout: the build goes on unannounced
        return None
    return None if (where / f"{builder.NAME}.so").is_file() else where


def _working_dirs() -> set[str]:
    """The current directories of this machine's processes we may look at (Linux /proc; empty elsewhere).
    torch runs the build (ninja, the compilers) in the op's build directory, so one of them there is a
    build in progress."""
    dirs = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return dirs
    for pid in pids:
        try:
            dirs.add(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:  # gone, or another user's
            continue
    return dirs


def remove_stale_extension_locks(stale_after_s: float = EXTENSION_LOCK_STALE_S, root: Path | None = None,
                                 last_busy: dict[Path, float] | None = None) -> list[Path]:
    """Remove torch-extension build locks under `root` (default: torch's extensions dir) that are older than
    `stale_after_s` and whose op no process of this machine has been building for as long (a long build keeps
    its lock: `last_busy` remembers, across calls, when each lock's build was last seen running); returns the
    ones removed."""
    root = _extension_root() if root is None else root
    last_busy = {} if last_busy is None else last_busy
    removed = []
    now = time.time()
    working: set[str] | None = None
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            if now - max(lock.stat().st_mtime, last_busy.get(lock, 0.0)) <= stale_after_s:
                continue
            if working is None:
                working = _working_dirs()
            build_dir = os.path.realpath(lock.parent)
            if any(d == build_dir or d.startswith(build_dir + os.sep) for d in working):
                last_busy[lock] = now
                continue
            lock.unlink()
            removed.append(lock)
            last_busy.pop(lock, None)
        except FileNotFoundError:  # released meanwhile
            continue
    for lock in removed:
        print(f"warning: removed {lock}, a torch-extension build lock left for over {stale_after_s:.0f} s "
              "by a process that died while loading the op", file=sys.stderr, flush=True)
    return removed


@contextlib.contextmanager
def stale_extension_locks_cleared(stale_after_s: float = EXTENSION_LOCK_STALE_S, poll_s: float = 5.0) -> Iterator[None]:
    """While inside, a thread removes torch-extension build locks older than `stale_after_s`.

    torch's JIT loader takes `<extensions dir>/<op>/lock` on every load, also when there is nothing
    to build, and waits as long as the file exists. DeepSpeed loads its CPU shared-memory op inside
    `init_distributed`, so a rank killed at that moment (a preemption, an OOM kill, a test killing a
    rank) left every later run on the machine waiting forever. Torch polls for the file, so a
    process already waiting goes on once the thread removes it. A build that is still running (a process
    of this machine works in the op's build directory) keeps its lock however long it takes.
    """
    stop = threading.Event()
    # Resolved here, not in the thread: the first import of torch.utils.cpp_extension pulls in
    # setuptools, and importing it in the thread while the main thread imports DeepSpeed's op
    # builders (which import distutils through setuptools' _distutils_hack finder, holding the
    # global import lock) deadlocked a rank for good (seen once in CI: both threads in importlib).
    root = _extension_root()

    def watch() -> None:  # filesystem calls only: no imports in this thread
        last_busy: dict[Path, float] = {}
        while True:
            remove_stale_extension_locks(stale_after_s, root, last_busy)
            if stop.wait(poll_s):
                return

    thread = threading.Thread(target=watch, name="xmtc-extension-locks", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer"


def shm_workspace_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU allreduce (ops/csrc/cpu/comm/shm.cpp) creates for `rank`."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{SHM_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_workspace(rank: int) -> None:
    """Unlink this rank's DeepSpeed shared-memory allreduce workspace once every rank has mapped them all.

    DeepSpeed creates one 69 MB file in /dev/shm per rank when all ranks share a machine and never
    unlinks it, so every CPU run used to leave them behind (measured: 288 files, 19 GB of this
    container's 24 GB tmpfs after two days of test runs, until the machine swapped). Every rank maps
    every workspace inside `init_distributed`; after a barrier no rank opens one by name again, and
    the mappings stay valid after unlinking until the processes exit, crashes included.
    """
    dist.barrier()
    shm_workspace_path(rank).unlink(missing_ok=True)


def print0(*args, **kwargs) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


ERROR_WAIT_S = 20.0
"""How long a rank other than 0 that stopped on a user error waits to learn whether rank 0 said the same (it
hears within a second when every rank meets it); XMTC_ERROR_WAIT_S overrides. Rank 0 keeps the rendezvous
store, which it may host, up for half as long again so that they can read it."""


def _error_wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get("XMTC_ERROR_WAIT_S", ERROR_WAIT_S)))
    except ValueError:
        return ERROR_WAIT_S


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")  # one write: ranks sharing a launcher's pipe do not interleave within a line
    sys.stderr.flush()


def _launched_rank_world() -> tuple[int, int] | None:
    """(rank, world size) that a launcher gave this process, read without changing the environment (as
    `map_launcher_env` reads it); None for a lone process."""
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"])
        if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
            return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"])
    except ValueError:
        pass
    return None


def _rendezvous_store(rank: int, wait_s: float):
    """A store at the run's rendezvous address (MASTER_ADDR:MASTER_PORT) for an error met before the process
    group exists (a config error): rank 0 hosts it, as it would the group's, except under torchrun, whose agent
    already hosts one there. None where there is no address or it cannot be reached within `wait_s`."""
    env = os.environ
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    host = rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    try:
        port = int(env["MASTER_PORT"])
        # A client first waits for something to listen there with a plain socket: torch's own client retries
        # with a warning per attempt, which a rank arriving after rank 0 has gone would print around its sentence.
        if not host and not _listening(env["MASTER_ADDR"], port, wait_s):
            return None
        return dist.TCPStore(env["MASTER_ADDR"], port, None, is_master=host,
                             timeout=datetime.timedelta(seconds=max(1.0, wait_s)), wait_for_workers=False)
    except (RuntimeError, ValueError, OverflowError):  # the port is taken, or rank 0 never came up
        return None


def _listening(host: str, port: int, wait_s: float) -> bool:
    """Whether something accepts connections at host:port within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def say_error(message: str) -> None:
    """Print `error: message` once for the run however many ranks stop on it: rank 0 says its own, and posts
    it in the rendezvous store; another rank says its own (as "rank N: ...") only when rank 0 did not say the
    same within `ERROR_WAIT_S`: an error met by one rank alone (a file missing on one node) is said too.
    Before the process group exists (a config error) the ranks meet in a store at the group's address;
    a lone process simply prints. Call before the process group is destroyed."""
    store, wait_s, rank_of_lone = None, _error_wait_s(), None
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world > 1:
            with contextlib.suppress(AttributeError, RuntimeError, ValueError):
                store = dist.distributed_c10d._get_default_store()
    elif (launched := _launched_rank_world()) is not None and launched[1] > 1:
        rank, world = launched
        store = _rendezvous_store(rank, wait_s)
        if store is None and rank != 0:
            rank_of_lone = rank
    if store is None:  # a lone process, or a rank that could not reach rank 0: it says its own, with its rank
        _say(f"error: {message}" if rank_of_lone is None else f"error: rank {rank_of_lone}: {message}")
        return
    if rank == 0:
        _say(f"error: {message}")
        try:
            store.set("xmtc/error/0", message)
            deadline = time.monotonic() + 1.5 * wait_s
            while store.add("xmtc/error/heard", 0) < world - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        except RuntimeError:  # the store is gone (its host exited): nobody is left to hear
            pass
        return
    said = None
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if store.check(["xmtc/error/0"]):
                said = store.get("xmtc/error/0").decode()
                store.add("xmtc/error/heard", 1)
                break
            time.sleep(0.05)
    except RuntimeError:  # rank 0, hosting the store, exited without posting: it said something else
        said = None
    if said != message:
        _say(f"error: rank {rank}: {message}")


def from_main(obj, device: torch.device):
    """Rank 0's `obj` (anything picklable) on every rank; `obj` itself without a multi-rank group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if dist.get_backend() == "nccl" else None)
    return box[0]


SHARED_WAIT_S = 60.0
"""How long a rank on another host looks for rank 0's probe (XMTC_SHARED_WAIT_S): an NFS client may keep a stale
view of a directory for its attribute-cache time (acdirmax, 60 s by default)."""


def check_same_directory(path: str | Path, key: str, device: torch.device) -> None:
    """ConfigError on every rank (said once) when `path` is not one directory for all ranks: rank 0 writes a probe
    file into the deepest directory of `path` that exists, every rank looks for it there by its own view of `path`
    (ranks on another host for up to XMTC_SHARED_WAIT_S seconds), and rank 0 removes it. A node-local path (/tmp, a
    node's scratch disk) or a relative one from different working directories gave every node its own run directory:
    checkpoints split across nodes, a `latest` that only node 0 has, and a resume that hangs or starts over."""
    import uuid

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    path = where = Path(path)
    missing = 0  # levels of `path` that do not exist yet (rank 0's view); every rank goes up as many
    if dist.get_rank() == 0:
        while not where.exists() and where != where.parent:
            where, missing = where.parent, missing + 1
    home = socket.gethostname()
    probe_name, missing, host0 = from_main((f".xmtc-shared-{uuid.uuid4().hex}", missing, home), device)
    where = path
    for _ in range(missing):
        where = where.parent
    probe = where / probe_name
    wrote = False
    if dist.get_rank() == 0:
        try:
            with open(probe, "x") as f:
                f.write(probe_name)
                f.flush()
                os.fsync(f.fileno())
            wrote = True
        except OSError:  # not writable: the run's own writes there will say so, with their reason
            pass
    wrote = from_main(wrote, device)
    seen, waited = True, 0.0
    if wrote and dist.get_rank() != 0:
        wait_s = float(os.environ.get("XMTC_SHARED_WAIT_S", SHARED_WAIT_S)) if home != host0 else 0.0
        started = time.monotonic()
        while not (seen := probe.is_file()) and time.monotonic() - started < wait_s:
            time.sleep(0.5)
        waited = time.monotonic() - started
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, (dist.get_rank(), home, seen, waited))
    if dist.get_rank() == 0 and wrote:
        probe.unlink(missing_ok=True)
    blind = [v for v in views if not v[2]]
    if blind:
        rank, host, _, waited = blind[0]
        others = f" (and {len(blind) - 1} other rank{'s' if len(blind) > 2 else ''})" if len(blind) > 1 else ""
        raise ConfigError(
            f"config key '{key}' ({path}) is not one directory for all ranks: rank {rank} on {host}{others} does not see the "
            f"file rank 0 on {host0} wrote into {where} (looked for {waited:.0f} s); a node-local path (/tmp, a node's "
            "scratch disk) or a relative path from different working directories gives ranks different directories: "
            "use an absolute path on a filesystem every node mounts"
        )


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        # NCCL reduces device tensors only.
        moved = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=op)
        t.copy_(moved.cpu())
    else:
        dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In place, on any device; a no-op without a multi-rank group."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)
