#!/usr/bin/env bash
# The body of launch/slurm/single_node.sbatch and multi_node.sbatch; docs/slurm.md explains the knobs.
#
# Runs once per start of the job, on the first node of the allocation: checks the config, finds
# the head node and a free port, starts the ranks (one per task with srun, or one DeepSpeed
# launcher per node), and when the ranks exit with 75 (checkpointed on SIGUSR1/SIGTERM) requeues
# the job, whose next start resumes from the checkpoint. Any other failure exits non-zero with
# the reason in the log.
set -uo pipefail

readonly EXIT_REQUEUE=75

die() {
    echo "error: $*" >&2
    [ -z "${batch_log:-}" ] || echo "error: $*" >>"$batch_log"
    exit 2
}

[ -n "${SLURM_JOB_ID:-}" ] || die "train_job.sh runs inside a SLURM job: sbatch launch/slurm/single_node.sbatch (or multi_node.sbatch)"
root=${XMTC_ROOT:-$SLURM_SUBMIT_DIR}
cd "$root" || die "cannot enter XMTC_ROOT=$root"

python=${XMTC_PYTHON:-python3}
launcher=${XMTC_LAUNCHER:-srun}
grace=${XMTC_EXIT_GRACE:-120}
restart=${SLURM_RESTART_COUNT:-0}
config=${XMTC_CONFIG:-}
command -v "$python" >/dev/null || die "XMTC_PYTHON=$python is not an executable on $(hostname)"
[[ $launcher == srun || $launcher == deepspeed ]] || die "XMTC_LAUNCHER is '$launcher'; use 'srun' (one process per rank) or 'deepspeed' (one launcher per node)"
[[ $grace =~ ^[0-9]+$ && $grace -gt 0 ]] || die "XMTC_EXIT_GRACE is '$grace'; give the seconds the other ranks get once one has exited (e.g. 120)"
[ -n "$config" ] || die "XMTC_CONFIG is empty; set it to a config name in configs/ or a JSON path"

# Extra trainer arguments: XMTC_TRAIN_ARGS (split on spaces), then the batch script's own arguments,
# then, in a job array, line N of XMTC_ARRAY_ARGS for task N.
read -r -a train_args <<<"${XMTC_TRAIN_ARGS:-}"
train_args+=("$@")
task=${SLURM_ARRAY_TASK_ID:-}
if [ -n "$task" ] && [ -n "${XMTC_ARRAY_ARGS:-}" ]; then
    array_args=$XMTC_ARRAY_ARGS
    [ -f "$array_args" ] || die "XMTC_ARRAY_ARGS=$array_args is not a file (relative paths are from $root); give one line of trainer overrides per array task"
    lines=$(grep -c '' "$array_args")
    ((task >= 1 && task <= lines)) || die "array task $task has no line in XMTC_ARRAY_ARGS=$array_args, which has $lines: line N holds the overrides of task N (submit with --array=1-$lines)"
    line=$(sed -n "${task}p" "$array_args")
    line=${line%$'\r'}
    read -r -a task_args <<<"$line"
    ((${#task_args[@]} > 0)) || die "XMTC_ARRAY_ARGS=$array_args line $task is empty; line N holds the overrides of array task N"
    train_args+=("${task_args[@]}")
fi
if ((restart > 0)); then
    # A requeued start continues from DIR/checkpoints/latest; the last override wins.
    train_args+=(--train.resume true)
fi

output_dir=$("$python" launch/slurm/check_config.py "$config" ${train_args[@]+"${train_args[@]}"}) || exit 2
[[ $output_dir == /* ]] || output_dir=$root/$output_dir
# The tasks of a job array run side by side: each has its own directory (one run per directory: xmtc.runlock).
[ -z "$task" ] || output_dir=$output_dir/task$task
log_dir=$output_dir/logs/slurm-$SLURM_JOB_ID
rank_log_dir=$log_dir/restart$restart
mkdir -p "$rank_log_dir" || die "cannot create the log directory $rank_log_dir"
batch_log=$log_dir/batch.log

log() {
    printf '%s [job %s restart %s] %s\n' "$(date '+%F %T')" "$SLURM_JOB_ID" "$restart" "$*" | tee -a "$batch_log"
}

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
((${#hosts[@]} > 0)) || die "scontrol show hostnames returned no node for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
nodes=${#hosts[@]}
if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
    ranks_per_node=${SLURM_NTASKS_PER_NODE%%(*}
elif ((SLURM_NTASKS % nodes == 0)); then
    ranks_per_node=$((SLURM_NTASKS / nodes))
else
    die "$SLURM_NTASKS tasks do not split evenly over $nodes nodes; submit with --ntasks-per-node"
fi
gpus_per_node=${SLURM_GPUS_ON_NODE:-0}
if ((gpus_per_node > 0 && gpus_per_node != ranks_per_node)); then
    die "the job has $ranks_per_node tasks but $gpus_per_node GPUs per node; submit with --ntasks-per-node equal to --gpus-per-node"
fi

# The batch script runs on the first node of the allocation, so a port free here is free on the head node.
export MASTER_ADDR=${hosts[0]}
pick_port() {  # pick_port [TAKEN ...]: a port free now on this node, none of TAKEN
    "$python" - "$SLURM_JOB_ID" "$@" <<'EOF'
import random, socket, sys
# Job id mod 1000 owns 10 ports below the ephemeral range: jobs sharing a head node do not race for
# one port, and a requeued start that finds its last port in TIME_WAIT takes the next.
own = 20000 + int(sys.argv[1]) % 1000 * 10
taken = {int(p) for p in sys.argv[2:]}
for port in [*range(own, own + 10), *random.sample(range(20000, 30000), 200)]:
    if port in taken:
        continue
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            continue
    print(port)
    break
else:
    sys.exit("error: no free TCP port found between 20000 and 29999 on the head node")
EOF
}
MASTER_PORT=$(pick_port) || exit 2
export MASTER_PORT
cpus_per_rank=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cpus_per_rank}
hostlist=$(IFS=,; echo "${hosts[*]}")

launch_ranks() {  # launch_ranks LOG_DIR: start the ranks on $MASTER_PORT, logging into LOG_DIR; sets rc
    local dir=$1 srun_opts cmd
    # Once one rank (or node launcher) has exited, the others get $grace seconds before SLURM kills them,
    # so a dead rank never leaves the rest waiting in a collective for the whole process-group timeout.
    # --kill-on-bad-exit=0 because 75 is not a failure: every rank exits with it after the checkpoint.
    srun_opts=(--kill-on-bad-exit=0 --wait="$grace")
    if [ "$launcher" = srun ]; then
        # srun since 22.05 no longer takes --cpus-per-task from the allocation by itself.
        srun_opts+=(--cpus-per-task="$cpus_per_rank" --output="$dir/rank%t.log")
        # Until the trainer installs its handler, USR1 would kill a rank; ignoring it then loses nothing.
        cmd=(bash -c 'trap "" USR1; exec "$@"' xmtc-rank "$python" -u launch/train.py)
    else
        srun_opts+=(--nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1
            --cpus-per-task=$((cpus_per_rank * ranks_per_node)) --output="$dir/node%n.log")
        cmd=("$python" launch/slurm/deepspeed_node.py "$hostlist" "$ranks_per_node" "$MASTER_ADDR" "$MASTER_PORT"
            "$dir" launch/train.py)
    fi
    # In the background, so that the traps run at once rather than when srun has ended.
    # The output directory last: the last override wins, and an array task's is OUTPUT_DIR/task<N>.
    srun "${srun_opts[@]}" "${cmd[@]}" --config "$config" ${train_args[@]+"${train_args[@]}"} --train.output_dir "$output_dir" &
    srun_pid=$!
    # A trapped signal interrupts wait; keep waiting until srun itself has exited.
    while true; do
        wait "$srun_pid"
        kill -0 "$srun_pid" 2>/dev/null || break
    done
    # srun's own status: a wait that a trap interrupted returned 128+signal, even when srun exited meanwhile
    # (bash keeps the status of a reaped child, so this wait returns it).
    wait "$srun_pid"
    rc=$?
}

if [ "$launcher" = srun ]; then
    rank_logs="$rank_log_dir/rank<R>.log"
else
    rank_logs="$rank_log_dir/node<N>.log and <time>_rank<R>.log"
fi
log "start on $nodes node(s) [${hosts[*]}] x $ranks_per_node rank(s), launcher $launcher, master $MASTER_ADDR:$MASTER_PORT"
log "config $config ${train_args[*]-}"
log "output $output_dir; rank logs $rank_logs"
# SIGTERM (scancel, preemption, time limit) also reaches the ranks; this shell waits for their checkpoint.
trap 'log "batch shell received SIGTERM; waiting for the ranks"' TERM
# With --signal=B:USR1@... the warning comes to this shell only: hand it to every process of the step.
trap 'log "batch shell received SIGUSR1; passing it to the ranks"; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
started=$(date +%s)
attempt_dir=$rank_log_dir
tried=("$MASTER_PORT")
launch_ranks "$attempt_dir"
# The port was free when probed, but another process took it before rank 0's rendezvous store bound it
# (the ranks take seconds to import torch). A rank that got as far as reading data was past the rendezvous;
# before that nothing is written, so the ranks start again on another port (twice at most).
while ((rc != 0 && rc != EXIT_REQUEUE && ${#tried[@]} < 3)) \
    && grep -q -E 'EADDRINUSE|[Aa]ddress already in use' "$attempt_dir"/*.log 2>/dev/null \
    && ! grep -q -E '^data: ' "$attempt_dir"/*.log 2>/dev/null; do
    MASTER_PORT=$(pick_port "${tried[@]}") || exit 2
    tried+=("$MASTER_PORT")
    attempt_dir=$rank_log_dir/port-retry$((${#tried[@]} - 1))
    mkdir -p "$attempt_dir" || die "cannot create the log directory $attempt_dir"
    log "port ${tried[${#tried[@]}-2]} was taken before the ranks bound it (address in use); starting again on port $MASTER_PORT, rank logs in $attempt_dir"
    launch_ranks "$attempt_dir"
done

# A rank that has checkpointed and is already exiting has no handler left, so a late USR1 kills it:
# srun reports that as 128+10, DeepSpeed's launcher as 256-10. With a checkpoint from this start, requeue.
latest=$output_dir/checkpoints/latest
if ((rc == 128 + 10 || rc == 256 - 10)) && [ -f "$latest" ] && (($(stat -c %Y "$latest") >= started)); then
    log "a rank died of SIGUSR1 while exiting after the checkpoint (srun exit $rc)"
    rc=$EXIT_REQUEUE
fi

if ((rc == 0)); then
    log "training finished; final metrics in $output_dir/final_metrics.json"
    exit 0
fi
if ((rc == EXIT_REQUEUE)); then
    log "ranks checkpointed in $output_dir/checkpoints and exited with $EXIT_REQUEUE; requeueing"
    # SLURM ends this start of the job right after the requeue; nothing is left to wait for.
    trap '' TERM
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0
    fi
    log "scontrol requeue failed (job cancelled, or submitted with --no-requeue); resubmit with --train.resume true to continue"
    exit "$EXIT_REQUEUE"
fi
why=""
((rc > 128 && rc < 160)) && why=" (a rank was killed by signal $((rc - 128)))"
((rc > 192)) && why=" (a rank was killed by signal $((256 - rc)))"  # DeepSpeed's launcher exits with -signal
log "training failed: srun exited with $rc$why"
first_error=$(grep -l -m1 -E '^(error:|Traceback)' "$attempt_dir"/*.log 2>/dev/null | head -n 1)
if [ -n "$first_error" ]; then
    log "last lines of $first_error:"
    tail -n 6 "$first_error" | tee -a "$batch_log"
fi
exit "$rc"
