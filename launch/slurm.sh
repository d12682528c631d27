#!/usr/bin/env bash
# Submit launch/slurm.sbatch: N nodes of G GPUs, one process per GPU (default) or per node.
#
#   bash launch/slurm.sh --gpus-per-node=G [--nodes=N] [--per-gpu | --per-node] [--dry-run]
#       [other sbatch options: --partition=P --time=T --account=A ...]
#       -- --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]
#
# The job runs from this repository's root with this shell's PYTHON (default: the python3
# on PATH, e.g. an activated venv) and environment. --dry-run (or MECJAX_DRY_RUN=1) prints
# the sbatch command and the srun line the job would run, and submits nothing.
set -euo pipefail

die() { echo "launch/slurm.sh: $*" >&2; exit 2; }

nodes=1 gpus="" mode=gpu dry=0 extra=()
[[ ${MECJAX_DRY_RUN:-0} != 0 ]] && dry=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --per-gpu) mode=gpu ;;
    --per-node) mode=node ;;
    --dry-run) dry=1 ;;
    --ntasks-per-node=* | --ntasks=*) die "$1: the mode sets the tasks (--per-gpu or --per-node)" ;;
    --) shift; break ;;
    -*) extra+=("$1") ;;
    *) die "unexpected '$1' (mecjax.main's arguments go after --)" ;;
  esac
  shift
done
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes=$nodes: give a positive number"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node=G is required (a positive number)"
[[ $# -gt 0 ]] || die "no arguments for mecjax.main after --"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/launch/quote.sh"
python=${PYTHON:-$(command -v python3 || echo python3)}
if [[ $mode == gpu ]]; then tasks=$gpus; else tasks=1; fi

sbatch=(sbatch --chdir="$root" --nodes="$nodes" --gpus-per-node="$gpus"
        --ntasks-per-node="$tasks" --export="ALL,PYTHON=$python" "${extra[@]}"
        "$root/launch/slurm.sbatch" "$@")
if [[ $dry == 1 ]]; then
  quote_line "${sbatch[@]}"
  cd "$root" && MECJAX_DRY_RUN=1 PYTHON="$python" bash launch/slurm.sbatch "$@"
else
  "${sbatch[@]}"
fi
