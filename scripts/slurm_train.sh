#!/usr/bin/env bash
# Multi-node training of a sciprior prior on SLURM, with Lightning's automatic requeue.
#
#   sbatch scripts/slurm_train.sh configs/mri/train.yaml [--key value ...]
#
# (the same as `sciprior train CONFIG ...` on every task; python -m sciprior.training.cli is its module form)
#
# How it works:
# - srun starts one task per GPU (ntasks-per-node = GPUs per node). Lightning detects SLURM
#   (SLURMEnvironment: rank, world size and master address come from SLURM_* variables), so the
#   trainer's devices / num_nodes must match the allocation; they are passed below from SLURM's own
#   variables, overriding the config.
# - `#SBATCH --signal=SIGUSR1@90` makes SLURM send SIGUSR1 90 s before the time limit. Lightning's
#   SLURMEnvironment(auto_requeue=True) (the default) catches it, saves an "hpc" checkpoint
#   (hpc_ckpt_<n>.ckpt in the run's default_root_dir) and requeues the job (scontrol requeue). On
#   restart Lightning loads that checkpoint automatically before any other, so the run continues: the
#   data modules resume mid-epoch exactly (see sciprior/datasets/module.py).
# - `--requeue` allows requeueing; `--open-mode=append` keeps the log of every restart in one file.
# - Give the run a fixed default_root_dir (ROOT below) so the requeued job finds its checkpoint.
#
# Adjust the #SBATCH lines to your cluster (partition, account, GPUs, time).

#SBATCH --job-name=sciprior-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG.yaml [--key value ...]}
shift
ROOT=${SCIPRIOR_RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$ROOT"

# One data-loading worker pool per task; keep torch's intra-op threads to the task's CPUs.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# NCCL diagnostics on failure (harmless otherwise).
export NCCL_ASYNC_ERROR_HANDLING=1

echo "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES} nodes x ${SLURM_NTASKS_PER_NODE} tasks"

srun --kill-on-bad-exit=1 "$PYTHON" -m sciprior.training.cli "$CONFIG" \
    --trainer.accelerator gpu \
    --trainer.strategy ddp \
    --trainer.devices "${SLURM_NTASKS_PER_NODE}" \
    --trainer.num_nodes "${SLURM_NNODES}" \
    --trainer.default_root_dir "$ROOT" \
    --checkpoint.dirpath "$ROOT/checkpoints" \
    --trainer.precision bf16-mixed \
    "$@"
