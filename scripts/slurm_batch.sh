#!/bin/bash
# Multi-node batch reconstruction on SLURM with the sciprior batch engine (sciprior/app/batch/).
#
#   sbatch scripts/slurm_batch.sh configs/my_batch.yaml            # submit
#   sbatch --nodes=4 scripts/slurm_batch.sh configs/my_batch.yaml  # more nodes: nothing else to change
#
# The config names its per-input processor by registered name, never by import path: `process_item: reconstruct`
# (process_kwargs: {config: RECONSTRUCTION.yaml, overrides: {...}}) or a name an installed package declares in
# the entry-point group `sciprior.processors`. The whole config is checked before srun's tasks compute anything
# (exit code 2 and the key named on a config error).
#
# How it works
# - srun starts one task per device on every node (--ntasks-per-node = GPUs per node). Lightning's
#   SLURMEnvironment reads the ranks from SLURM; `devices` and `num_nodes` are passed on the command
#   line from the allocation so they always match it (Lightning checks that they do).
# - Every input is processed by exactly one rank; outputs are written atomically (temp + rename) and each
#   finished input leaves a record in OUTPUT_DIR/.sciprior_batch/items/. OUTPUT_DIR must be on a file
#   system shared by all nodes.
# - Requeue: `--signal=SIGUSR1@90` makes SLURM send SIGUSR1 to every task 90 s before the time limit;
#   Lightning's SLURM plugin (auto_requeue, on by default under srun) catches it and runs
#   `scontrol requeue $SLURM_JOB_ID`. The requeued job starts the same command, skips every input that
#   is already done, deletes the temp files of the inputs that were cut off, and goes on. A job killed
#   for any other reason (node failure, scancel, preemption) resumes the same way when resubmitted.
# - The summary (OUTPUT_DIR/summary.csv: status ok/failed/skipped, error, wall time, rank, metrics per
#   input) is rewritten at the end of every run; the exit code is 1 when some input failed.
#
# Adapt: partition/account, GPUs per node (keep --ntasks-per-node equal to --gres=gpu:N), time, the
# environment activation. CPU-only cluster: drop --gres, set --ntasks-per-node to the number of
# processes per node and pass `--accelerator cpu` below.

#SBATCH --job-name=sciprior-batch
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # one task per GPU
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0                      # all memory of the node
#SBATCH --time=04:00:00
#SBATCH --signal=SIGUSR1@90          # warn 90 s before the time limit -> Lightning requeues the job
#SBATCH --requeue                    # allow `scontrol requeue`
#SBATCH --open-mode=append           # requeued runs append to the same log
#SBATCH --output=logs/%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=myproject

set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_batch.sh CONFIG.yaml [--key value ...]}
shift

# environment: adapt to the cluster (module load ..., conda activate ...)
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"
mkdir -p logs
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# export NCCL_DEBUG=WARN

echo "job ${SLURM_JOB_ID} (restart count ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s):" \
     "$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | paste -sd, -)"

# `python -m sciprior.app.batch` is the engine's own entry point (the same as `sciprior batch CONFIG.yaml`);
# settings after the config override it, e.g. --accelerator cpu, --base_seed 1, --overwrite true.
srun --kill-on-bad-exit=1 "$PY" -m sciprior.app.batch "$CONFIG" \
    --accelerator gpu \
    --devices "${SLURM_NTASKS_PER_NODE}" \
    --num_nodes "${SLURM_JOB_NUM_NODES}" \
    --strategy ddp \
    --progress false \
    "$@"
