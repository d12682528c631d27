#!/usr/bin/env bash
# Start N mecjax processes on this machine, talking over 127.0.0.1 (CPU: gloo collectives).
# For testing the multi-process path: each process reads its own rows of every global
# batch, checkpoints are written and restored by all of them, logs come from process 0.
#
#   bash launch/local.sh N --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]
#
# Exits non-zero as soon as any process fails, with that process's status (137 for a
# kill -9); the others are stopped, since they would wait at the next collective until the
# heartbeat timeout. MECJAX_PORT picks the coordinator port (default: a free one); PYTHON
# the interpreter; MECJAX_STOP_GRACE the seconds the others get after SIGTERM (default 3)
# before SIGKILL. Each process's pid is printed on stderr ("process I: pid P").
#
# SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 to this launcher is passed to every process (SIGINT
# as SIGTERM: the processes, started in the background, ignore the terminal's SIGINT), and
# the launcher waits for them: they agree on a step, each saves its part of the checkpoint
# there and exits with status 75, which the launcher then exits with. A second signal is
# passed on too (the processes stop at once, the previous checkpoint intact);
# MECJAX_SIGNAL_GRACE (default 300) bounds the wait before SIGKILL.
set -uo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: bash launch/local.sh N --config=... --workdir=... [--config.KEY=VALUE ...]" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python3}
port=${MECJAX_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < n; i++)); do
  MECJAX_COORDINATOR="127.0.0.1:$port" MECJAX_NUM_PROCESSES="$n" MECJAX_PROCESS_ID="$i" \
    JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" "$python" -m mecjax.main "$@" &
  pids+=("$!")
  echo "launch/local.sh: process $i: pid $!" >&2
done

# SIGTERM, then SIGKILL after the grace period: a process inside jax.distributed catches
# SIGTERM (JAX's preemption notifier) and would otherwise hang in its shutdown barrier.
grace=${MECJAX_STOP_GRACE:-3}
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null
  local t pid alive
  for ((t = 0; t < grace * 10; t++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  wait 2>/dev/null
}
forwarded=0 watchdog=""
forward() {
  kill -"$1" "${pids[@]}" 2>/dev/null
  if ((!forwarded)); then
    forwarded=1
    (trap 'kill "$nap" 2>/dev/null; exit 0' TERM
     sleep "${MECJAX_SIGNAL_GRACE:-300}" & nap=$!
     wait "$nap" && kill -KILL "${pids[@]}" 2>/dev/null) &
    watchdog=$!
  fi
}
trap 'forward TERM' TERM INT
trap 'forward USR1' USR1

status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  done_pid=""
  wait -n -p done_pid "${running[@]}"
  rc=$?
  [[ -z ${done_pid:-} ]] && continue   # a trapped signal interrupted the wait
  left=()
  for pid in "${running[@]}"; do [[ $pid != "$done_pid" ]] && left+=("$pid"); done
  running=("${left[@]}")
  if ((forwarded)); then
    # Stopping on a signal: every process saves and exits; keep the first status that is
    # not the orderly 75 (a process that failed to save), else 75.
    if [[ $rc -ne 0 && ( $status -eq 0 || $status -eq 75 ) ]]; then status=$rc; fi
    continue
  fi
  if [[ $rc -ne 0 ]]; then
    for i in "${!pids[@]}"; do [[ ${pids[$i]} == "$done_pid" ]] && break; done
    echo "launch/local.sh: process $i (pid $done_pid) exited with status $rc;" \
      "stopping the others" >&2
    stop_all
    status=$rc
    break
  fi
done
[[ -n $watchdog ]] && kill "$watchdog" 2>/dev/null
exit "$status"
