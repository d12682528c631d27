#!/usr/bin/env bash
# Run mecjax on every worker of a Cloud TPU pod slice (one process per worker, all started
# at once by `gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed finds the pod
# itself: MECJAX_DISTRIBUTED=auto).
#
#   bash launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--setup [--repo=URL]]
#       [--dir=mecjax] [--python=python3] [--detach] [--dry-run]
#       -- --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]
#
# --setup first puts this repository at the current commit into ~/DIR on every worker (a
#   `git archive` tarball copied with `tpu-vm scp --worker=all`, or with --repo=URL a clone
#   of URL checked out at the commit, which must be pushed there), then builds DIR/.venv
#   with requirements.txt and jax[tpu] at the pinned jax version (the pins need Python 3.11+
#   on the workers: --python names the interpreter).
# The run writes each worker's output to ~/DIR/logs/<hostname>.log (and to this terminal,
#   whose exit status is the job's; --detach leaves it running under nohup instead).
# DIR (--workdir) must be one directory every worker sees (NFS, Filestore, a gcsfuse
#   mount): all processes write the orbax checkpoints there and process 0 the metrics.
# --dry-run (or MECJAX_DRY_RUN=1) prints each command, one per line, shell-quoted for
#   copy-paste, and runs nothing.
set -euo pipefail

die() { echo "launch/tpu_pod.sh: $*" >&2; exit 2; }

tpu="" zone="" project="" setup=0 repo_url="" dir=mecjax python=python3 detach=0
dry=0
[[ ${MECJAX_DRY_RUN:-0} != 0 ]] && dry=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --setup) setup=1 ;;
    --repo=*) repo_url=${1#*=} ;;
    --dir=*) dir=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --detach) detach=1 ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (mecjax.main's arguments go after --)" ;;
  esac
  shift
done
[[ -n $tpu && -n $zone ]] || die "--tpu=NAME and --zone=ZONE are required"
[[ $# -gt 0 || $setup == 1 ]] || die "nothing to do: give --setup and/or -- --config=... --workdir=..."
[[ -z $repo_url || $setup == 1 ]] || die "--repo=URL is used only with --setup"
[[ $dir =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] || die "--dir=$dir: use a plain path relative to the workers' home"
[[ $python =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python=$python: name an interpreter (python3.11, /usr/bin/python3)"
workdir=""
for arg in "$@"; do
  [[ $arg == --workdir=* ]] && workdir=${arg#*=}
done
[[ $# -eq 0 || -n $workdir ]] || die "mecjax.main needs --workdir=DIR (a directory every worker sees)"
# train.py writes its run directory through the file system.
[[ $workdir != gs://* ]] || die "--workdir=$workdir: the run directory must be a path every worker mounts (gcsfuse, NFS), not a gs:// URL"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
commit=$(git -C "$root" rev-parse HEAD)
jax_version=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$root/requirements.txt")
[[ -n $jax_version ]] || die "no 'jax==VERSION' pin in $root/requirements.txt"

# Quoted so that a printed line pastes back as is (launch/quote.sh); inside a remote
# command, which itself sits in single quotes, double quotes where they suffice.
source "$root/launch/quote.sh"
remote_quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  elif [[ ! $1 =~ [\"\$\`\\!] ]]; then printf '"%s"' "$1"
  else quote "$1"; fi
}
remote_words() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(remote_quote "$word")"; done
  printf '%s' "$out"
}
run() {
  if [[ $dry == 1 ]]; then quote_line "$@"; else "$@"; fi
}

gcloud=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")
venv_pip="$python -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -r requirements.txt $(remote_quote "jax[tpu]==$jax_version")"

if [[ $setup == 1 ]]; then
  if [[ -n $repo_url ]]; then
    if [[ -z $(git -C "$root" branch -r --contains "$commit" 2>/dev/null) ]]; then
      echo "launch/tpu_pod.sh: warning: commit $commit is on no remote branch here; push it to $repo_url" >&2
    fi
    remote="set -e; [ -d $dir/.git ] || git clone -q $(remote_quote "$repo_url") $dir; cd $dir"
    remote+="; git fetch -q origin && git checkout -q --detach $commit; $venv_pip"
  else
    if [[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
      echo "launch/tpu_pod.sh: warning: uncommitted changes are not shipped (the tarball is commit $commit)" >&2
    fi
    tarball=mecjax-$commit.tar.gz
    run git -C "$root" archive --format=tar.gz -o "${TMPDIR:-/tmp}/$tarball" "$commit"
    run "${gcloud[@]}" scp "${TMPDIR:-/tmp}/$tarball" "$tpu:$tarball" "${where[@]}" --worker=all
    # A fresh directory: files deleted since the last set-up must not linger.
    remote="set -e; rm -rf $dir; mkdir -p $dir; tar -xzf $tarball -C $dir; rm $tarball; cd $dir"
    remote+="; $venv_pip"
  fi
  run "${gcloud[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$remote"
fi

if [[ $# -gt 0 ]]; then
  main="MECJAX_DISTRIBUTED=auto .venv/bin/python -m mecjax.main $(remote_words "$@")"
  log='logs/$(hostname).log'
  if [[ $detach == 1 ]]; then
    remote="cd $dir && mkdir -p logs && nohup env $main > $log 2>&1 < /dev/null &"
  else
    remote="set -o pipefail; cd $dir && mkdir -p logs && $main 2>&1 | tee $log"
  fi
  run "${gcloud[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$remote"
fi
