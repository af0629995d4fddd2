#!/usr/bin/env bash
# Submit one of the batch scripts with its resources taken from environment variables:
#
#   XMTC_NODES=4 XMTC_GPUS_PER_NODE=8 XMTC_CONFIG=xml_cnn_670k \
#       launch/slurm/submit.sh launch/slurm/multi_node.sbatch [sbatch options ...] [-- --section.key value ...]
#
# XMTC_NODES -> --nodes, XMTC_GPUS_PER_NODE -> --gpus-per-node and --ntasks-per-node (one rank per
# GPU), XMTC_RANKS_PER_NODE -> --ntasks-per-node (needed on CPU-only nodes, XMTC_GPUS_PER_NODE=0),
# XMTC_CPUS_PER_RANK -> --cpus-per-task. Unset variables keep the script's #SBATCH defaults; options
# given here override both. XMTC_ARRAY_ARGS=FILE submits a job array, task N with the overrides on
# line N of FILE (--array=1-<lines> unless an --array option is given). The job reads XMTC_CONFIG,
# XMTC_TRAIN_ARGS, XMTC_ARRAY_ARGS, XMTC_LAUNCHER, XMTC_PYTHON and XMTC_EXIT_GRACE itself (docs/slurm.md).
set -euo pipefail

die() {
    echo "error: $*" >&2
    exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
(($# > 0)) || die "usage: launch/slurm/submit.sh BATCH_SCRIPT [sbatch options ...] [-- trainer overrides ...]"
script=$1
shift
[ -f "$script" ] || die "batch script '$script' not found; use launch/slurm/single_node.sbatch or launch/slurm/multi_node.sbatch"

sbatch_opts=()
while (($# > 0)) && [ "$1" != -- ]; do
    sbatch_opts+=("$1")
    shift
done
(($# > 0)) && shift
train_args=("$@")

count() {  # count NAME VALUE MIN: VALUE must be an integer >= MIN
    [[ $2 =~ ^[0-9]+$ && $2 -ge $3 ]] || die "$1 is '$2'; it must be an integer >= $3"
}
flags=()
if [ -n "${XMTC_NODES:-}" ]; then
    count XMTC_NODES "$XMTC_NODES" 1
    flags+=(--nodes="$XMTC_NODES")
fi
ranks=${XMTC_RANKS_PER_NODE:-}
if [ -n "${XMTC_GPUS_PER_NODE:-}" ]; then
    count XMTC_GPUS_PER_NODE "$XMTC_GPUS_PER_NODE" 0
    flags+=(--gpus-per-node="$XMTC_GPUS_PER_NODE")
    if ((XMTC_GPUS_PER_NODE == 0)) && [ -z "$ranks" ]; then
        die "XMTC_GPUS_PER_NODE=0 needs XMTC_RANKS_PER_NODE: how many CPU processes to run per node"
    fi
    ranks=${ranks:-$XMTC_GPUS_PER_NODE}
fi
if [ -n "$ranks" ]; then
    count XMTC_RANKS_PER_NODE "$ranks" 1
    flags+=(--ntasks-per-node="$ranks")
fi
if [ -n "${XMTC_CPUS_PER_RANK:-}" ]; then
    count XMTC_CPUS_PER_RANK "$XMTC_CPUS_PER_RANK" 1
    flags+=(--cpus-per-task="$XMTC_CPUS_PER_RANK")
fi

# A bad config or override fails here, in a second, rather than after the job has waited for nodes.
# Without XMTC_CONFIG the batch scripts train xml_cnn_670k: the overrides are checked against it.
read -r -a env_args <<<"${XMTC_TRAIN_ARGS:-}"
config_check=("${XMTC_PYTHON:-python3}" launch/slurm/check_config.py)
if [ -n "${XMTC_ARRAY_ARGS:-}" ]; then
    [ -f "$XMTC_ARRAY_ARGS" ] || die "XMTC_ARRAY_ARGS=$XMTC_ARRAY_ARGS is not a file; give one line of trainer overrides per array task"
    XMTC_ARRAY_ARGS=$(realpath "$XMTC_ARRAY_ARGS")  # the job runs from the repository root
    export XMTC_ARRAY_ARGS
    config_check+=(--array-args "$XMTC_ARRAY_ARGS")
fi
checked=$(cd "$root" && "${config_check[@]}" "${XMTC_CONFIG:-xml_cnn_670k}" ${env_args[@]+"${env_args[@]}"} ${train_args[@]+"${train_args[@]}"}) || exit 2
if [ -n "${XMTC_ARRAY_ARGS:-}" ]; then
    given_array=0
    for opt in ${sbatch_opts[@]+"${sbatch_opts[@]}"}; do
        [[ $opt == --array=* || $opt == --array || $opt == -a* ]] && given_array=1
    done
    ((given_array)) || flags+=(--array="1-$checked")
fi

export XMTC_ROOT=$root
exec sbatch ${flags[@]+"${flags[@]}"} ${sbatch_opts[@]+"${sbatch_opts[@]}"} "$script" ${train_args[@]+"${train_args[@]}"}
