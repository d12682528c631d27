"""The launchers: TPU pod and SLURM commands (dry-run lines, and the same words when run
against stand-in gcloud / sbatch), the SLURM environment -> process layout function (and
two processes started with it), and launch/local.sh's exit status and clean-up when one
process fails. The 2-process training run, killed and resumed, is in test_train.py."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli_env
from mecjax import parallel
from mecjax.configlib import ConfigError

MAIN_ARGS = ["--config=configs/mec_imagenet.py", "--workdir=/shared/runs/mec",
             "--config.data.path=/data/image net", "--config.projector.hidden=(1024,)",
             "--config.name=it's $HOME"]   # a space, parentheses, a quote and a dollar
COMMIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout.strip()
JAX_PIN = re.search(r"^jax==([\d.]+)", (REPO / "requirements.txt").read_text(), re.M).group(1)


def launch(script, *args, env=None, path_bin=None):
  full = {k: v for k, v in os.environ.items() if k != "MECJAX_DRY_RUN"}
  full.update(env or {})
  if path_bin:
    full["PATH"] = f"{path_bin}{os.pathsep}{full['PATH']}"
  return subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, env=full,
                        capture_output=True, text=True, timeout=60)


def lines(proc):
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def remote_words(argv):
  """The shell words of a `tpu-vm ssh ... --command=...` line's remote command."""
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def stand_ins(tmp_path, *names):
  """Executables that record their argv, one line each, in tmp_path/calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in names:
    exe = bin_dir / name
    exe.write_text(f'#!/usr/bin/env bash\n{{ printf %q {name}; printf " %q" "$@"; echo; }}'
                   f' >> {tmp_path}/calls\n')
    exe.chmod(0o755)
  return bin_dir


def calls(tmp_path):
  path = tmp_path / "calls"
  return [shlex.split(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------- TPU pod

TPU = ["--tpu=pod1", "--zone=us-central2-b", "--project=proj"]
WHERE = ["--zone=us-central2-b", "--project=proj", "--worker=all"]


def test_tpu_pod_dry_run_ships_the_commit_sets_up_every_worker_and_runs_main(tmp_path):
  bin_dir = stand_ins(tmp_path, "gcloud")
  out = lines(launch("tpu_pod.sh", *TPU, "--setup", "--dry-run", "--", *MAIN_ARGS,
                     path_bin=bin_dir))
  assert calls(tmp_path) == [], "the dry run ran a command"
  tarball = f"mecjax-{COMMIT}.tar.gz"
  archive, scp, setup, run = out
  assert archive[:4] == ["git", "-C", str(REPO), "archive"] and archive[-1] == COMMIT
  assert archive[archive.index("-o") + 1].endswith("/" + tarball)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5].endswith("/" + tarball) and scp[6] == f"pod1:{tarball}" and scp[7:] == WHERE
  assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
  assert setup[6:9] == WHERE
  words = remote_words(setup)
  assert ["tar", "-xzf", tarball, "-C", "mecjax"] == words[words.index("tar"):][:5]
  venv = words.index("venv")
  assert words[venv - 2:venv + 2] == ["python3", "-m", "venv", ".venv"]
  pip = words[len(words) - words[::-1].index(".venv/bin/pip") - 1:]
  assert pip == [".venv/bin/pip", "install", "-q", "-r", "requirements.txt",
                 f"jax[tpu]=={JAX_PIN}"]
  assert run[:9] == setup[:9]
  words = remote_words(run)
  main = words.index("MECJAX_DISTRIBUTED=auto")
  assert words[main:main + 4 + len(MAIN_ARGS)] == [
      "MECJAX_DISTRIBUTED=auto", ".venv/bin/python", "-m", "mecjax.main", *MAIN_ARGS]
  assert words[main + 4 + len(MAIN_ARGS):][:4] == ["2", ">&", "1", "|"]
  assert "".join(words[-5:]) == "logs/$(hostname).log"   # one log per worker
  assert words[:3] == ["set", "-o", "pipefail"]          # the job's exit status comes back


def test_tpu_pod_repo_checkout_and_detach_then_the_real_run_issues_the_printed_words(
    tmp_path):
  args = [*TPU, "--setup", "--repo=https://example.org/mecjax.git", "--detach", "--",
          *MAIN_ARGS]
  out = lines(launch("tpu_pod.sh", *args, env={"MECJAX_DRY_RUN": "1"}))
  assert len(out) == 2
  setup = " ".join(remote_words(out[0]))
  assert "git clone -q https://example.org/mecjax.git mecjax" in setup
  assert f"git checkout -q --detach {COMMIT}" in setup
  assert f"requirements.txt jax[tpu]=={JAX_PIN}" in setup
  words = remote_words(out[1])
  assert words[words.index("nohup"):][:5] == ["nohup", "env", "MECJAX_DISTRIBUTED=auto",
                                               ".venv/bin/python", "-m"]
  assert words[-1] == "&" and "tee" not in words
  # Run for real against a stand-in gcloud: the very argv the dry run printed.
  bin_dir = stand_ins(tmp_path, "gcloud")
  assert launch("tpu_pod.sh", *args, path_bin=bin_dir).returncode == 0
  assert calls(tmp_path) == out


@pytest.mark.parametrize("args,message", [
    (["--zone=z", "--", "--workdir=/w"], "--tpu=NAME and --zone=ZONE are required"),
    (["--tpu=a", "--zone=z", "--", "--config=c", "--workdir=gs://b/run"], "not a gs:// URL"),
    (["--tpu=a", "--zone=z", "--", "--config=c"], "needs --workdir=DIR"),
    (["--tpu=a", "--zone=z", "--bogus", "--", "--workdir=/w"], "unknown option '--bogus'"),
])
def test_tpu_pod_bad_arguments_stop_with_one_line(args, message):
  proc = launch("tpu_pod.sh", "--dry-run", *args)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.count("\n") == 1 and message in proc.stderr


# ------------------------------------------------------------------------------ SLURM

@pytest.mark.parametrize("mode,tasks", [("--per-gpu", "8"), ("--per-node", "1")])
def test_slurm_dry_run_prints_the_sbatch_options_of_the_mode_and_the_srun_line(
    tmp_path, mode, tasks):
  bin_dir = stand_ins(tmp_path, "sbatch", "srun")
  args = ["--nodes=2", "--gpus-per-node=8", mode, "--partition=gpu", "--", *MAIN_ARGS]
  out = lines(launch("slurm.sh", "--dry-run", *args, env={"PYTHON": "/venv/bin/python"},
                     path_bin=bin_dir))
  assert calls(tmp_path) == [], "the dry run ran a command"
  sbatch, srun = out
  assert sbatch == ["sbatch", f"--chdir={REPO}", "--nodes=2", "--gpus-per-node=8",
                    f"--ntasks-per-node={tasks}", "--export=ALL,PYTHON=/venv/bin/python",
                    "--partition=gpu", f"{REPO}/launch/slurm.sbatch", *MAIN_ARGS]
  assert srun == ["srun", "--kill-on-bad-exit=1", "--label",
                  "--export=ALL,MECJAX_DISTRIBUTED=slurm", "/venv/bin/python", "-m",
                  "mecjax.main", *MAIN_ARGS]
  # Submitted for real (a stand-in sbatch), then the job script run as SLURM would run it.
  assert launch("slurm.sh", *args, env={"PYTHON": "/venv/bin/python"},
                path_bin=bin_dir).returncode == 0
  assert launch("slurm.sbatch", *MAIN_ARGS, env={"PYTHON": "/venv/bin/python"},
                path_bin=bin_dir).returncode == 0
  assert calls(tmp_path) == [sbatch, srun]


def test_slurm_header_defaults_to_one_process_per_gpu_and_bad_arguments_stop():
  header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", (REPO / "launch/slurm.sbatch")
                           .read_text(), re.M))
  assert header["ntasks-per-node"] == header["gpus-per-node"]
  for args, message in [(["--", "--workdir=w"], "--gpus-per-node=G is required"),
                        (["--gpus-per-node=8", "--ntasks-per-node=2", "--", "--workdir=w"],
                         "the mode sets the tasks"),
                        (["--gpus-per-node=8"], "no arguments for mecjax.main")]:
    proc = launch("slurm.sh", "--dry-run", *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def slurm_env(**overrides):
  """One task of a 2-node job, 8 tasks (one per GPU) on each node, every GPU visible."""
  env = {"SLURM_JOB_ID": "4321", "SLURM_STEP_NODELIST": "gpu[007-008]",
         "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
         "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
         "SLURM_GPUS_ON_NODE": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  env.update(overrides)
  return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize("env,expected", [
    # One process per GPU: task 3 of node 1 takes GPU 3; the port is a function of the job.
    (slurm_env(), ("gpu007:24321", 16, 11, [3])),
    # One process per node: every GPU of the node.
    (slurm_env(SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_PROCID="1",
               SLURM_LOCALID="0"), ("gpu007:24321", 2, 1, None)),
    # Two tasks sharing a node's 8 GPUs: consecutive blocks of 4.
    (slurm_env(SLURM_STEP_NUM_TASKS="4", SLURM_STEP_TASKS_PER_NODE="2(x2)", SLURM_PROCID="3",
               SLURM_LOCALID="1"), ("gpu007:24321", 4, 3, [4, 5, 6, 7])),
    # SLURM already bound one GPU to the task (--gpus-per-task): nothing left to narrow.
    (slurm_env(CUDA_VISIBLE_DEVICES="3"), ("gpu007:24321", 16, 11, None)),
    # No GPU information (CPU nodes): one device per task, as JAX's own detection does.
    (slurm_env(CUDA_VISIBLE_DEVICES=None, SLURM_GPUS_ON_NODE=None),
     ("gpu007:24321", 16, 11, [3])),
    # Outside a step (batch script variables), uneven tasks per node, a chosen port.
    (slurm_env(SLURM_STEP_NODELIST=None, SLURM_JOB_NODELIST="a-n[01,05-09],b2",
               SLURM_STEP_NUM_TASKS=None, SLURM_NTASKS="9", SLURM_STEP_TASKS_PER_NODE=None,
               SLURM_TASKS_PER_NODE="8,1", SLURM_PROCID="8", SLURM_LOCALID="0",
               MECJAX_PORT="1234"), ("a-n01:1234", 9, 8, None)),
])
def test_slurm_layout_from_the_task_environment(env, expected):
  assert tuple(parallel.slurm_layout(env)) == expected


@pytest.mark.parametrize("nodelist,first", [
    ("node001", "node001"), ("node[001-004,007]", "node001"), ("a,b", "a"),
    ("gpu[07,09],cpu3", "gpu07"), ("rack[2-3]-n[010-012]", "rack2-n010"), ("x[5]", "x5")])
def test_first_host_of_a_node_list(nodelist, first):
  assert parallel.first_host(nodelist) == first


def test_tasks_per_node_and_bad_slurm_environments_name_the_variable():
  assert [parallel.tasks_on_node("2(x3),1", i) for i in range(4)] == [2, 2, 2, 1]
  for env, message in [
      (slurm_env(SLURM_PROCID=None), "SLURM_PROCID is not set"),
      (slurm_env(SLURM_STEP_NODELIST="node[01-02"), "node list 'node[01-02'"),
      (slurm_env(SLURM_NODEID="2"), "SLURM_NODEID=2 is outside the 2 node(s)"),
      (slurm_env(CUDA_VISIBLE_DEVICES="0,1,2,3,4,5", SLURM_GPUS_ON_NODE="6"),
       "6 GPUs do not split over the 8 tasks"),
      (slurm_env(SLURM_JOB_ID="x"), "SLURM_JOB_ID='x' is not an integer")]:
    with pytest.raises(ConfigError, match=re.escape(message)):
      parallel.slurm_layout(env)


def test_slurm_mode_starts_jax_distributed_from_the_task_environment(tmp_path):
  """Two processes on this machine, as two one-task nodes of a SLURM step."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  probe = ("from mecjax import parallel; parallel.initialize_distributed(); import jax; "
           "print(jax.process_index(), jax.process_count(), jax.device_count())")
  procs = []
  for node in (0, 1):
    env = cli_env(1, extra={"MECJAX_DISTRIBUTED": "slurm", "MECJAX_PORT": str(port),
                            **slurm_env(SLURM_STEP_NODELIST="localhost,localhost",
                                        SLURM_STEP_NUM_TASKS="2",
                                        SLURM_STEP_TASKS_PER_NODE="1(x2)",
                                        SLURM_NODEID=str(node), SLURM_PROCID=str(node),
                                        SLURM_LOCALID="0")})
    procs.append(subprocess.Popen([sys.executable, "-c", probe], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert [out.split() for out, _ in outs] == [["0", "2", "2"], ["1", "2", "2"]]


# ------------------------------------------------------------------------- local.sh

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python -m mecjax.main: process 1 fails, process 0 waits (as at a
# collective) and, like a process inside jax.distributed, ignores SIGTERM.
if [ "$MECJAX_PROCESS_ID" = 1 ]; then sleep 0.3; {failure}; fi
trap '' TERM
exec sleep 300
"""


@pytest.mark.parametrize("failure,status", [("exit 3", 3), ("kill -9 $$", 137)])
def test_local_launcher_fails_with_the_status_of_a_failed_process_and_stops_the_rest(
    tmp_path, failure, status):
  fake = tmp_path / "python"
  fake.write_text(FAKE_PYTHON.format(failure=failure))
  fake.chmod(0o755)
  start = time.time()
  proc = launch("local.sh", "2", "--config=c", "--workdir=w",
                env={"PYTHON": str(fake), "MECJAX_PORT": "1", "MECJAX_STOP_GRACE": "1"})
  assert proc.returncode == status
  assert time.time() - start < 30
  pids = dict(re.findall(r"process (\d+): pid (\d+)", proc.stderr))
  assert sorted(pids) == ["0", "1"]
  assert f"process 1 (pid {pids['1']}) exited with status {status}" in proc.stderr
  assert not Path(f"/proc/{pids['0']}").exists(), "process 0 outlived the launcher"


# ------------------------------------------------------- SLURM time limit and requeue

FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for srun running mecjax: saves and exits 75 on SIGUSR1 or SIGTERM.
sleep 60 & nap=$!
trap 'echo "srun got USR1" >> {calls}; kill $nap; exit 75' USR1
trap 'echo "srun got TERM" >> {calls}; kill $nap; exit 75' TERM
touch {ready}
wait
"""


@pytest.mark.parametrize("sig,requeued", [("USR1", True), ("TERM", False)])
def test_slurm_job_passes_the_time_limit_warning_on_and_requeues_after_the_checkpoint(
    tmp_path, sig, requeued):
  """--signal=B:USR1@...: the job script passes USR1 to srun and, when the run exits 75
  (checkpoint saved), requeues the job; a plain SIGTERM (scancel, or a preemption that
  SLURM requeues itself) is not passed on (SLURM signals every task) and not requeued."""
  header = (REPO / "launch/slurm.sbatch").read_text()
  assert re.search(r"^#SBATCH --signal=B:USR1@\d+$", header, re.M)
  assert re.search(r"^#SBATCH --requeue$", header, re.M)
  bin_dir = stand_ins(tmp_path, "scontrol")
  ready = tmp_path / "ready"
  srun = bin_dir / "srun"
  srun.write_text(FAKE_SRUN.replace("{calls}", str(tmp_path / "calls"))
                  .replace("{ready}", str(ready)))
  srun.chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
         "SLURM_JOB_ID": "4321"}
  env.pop("MECJAX_DRY_RUN", None)
  job = subprocess.Popen(["bash", "launch/slurm.sbatch", *MAIN_ARGS], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while not ready.exists() and time.time() < deadline:
    time.sleep(0.05)
  if sig == "USR1":
    job.send_signal(signal.SIGUSR1)
  else:   # SLURM signals the batch shell and the tasks alike
    job.send_signal(signal.SIGTERM)
    os.kill(int(subprocess.run(["pgrep", "-P", str(job.pid), "-f", "srun"], capture_output=True,
                               text=True).stdout.split()[0]), signal.SIGTERM)
  out, err = job.communicate(timeout=30)
  assert job.returncode == 75, err
  recorded = (tmp_path / "calls").read_text().splitlines()
  assert recorded.count(f"srun got {sig}") == 1, recorded   # one signal, not two
  assert ("scontrol requeue 4321" in recorded) == requeued, recorded
