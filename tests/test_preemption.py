"""Preemption and faults, through the command line: a real SIGTERM between two scheduled
checkpoints (checkpoint at that step, exit 75, the rerun ends as an uninterrupted run), a
kill -9 (only the steps since the last checkpoint are lost), the same on two processes
(launch/local.sh 2), a second signal during the save, a damaged newest checkpoint (moved aside, resumed from the
one before), a busy workdir and a stale lock, truncated archives, zero / negative values,
and a disk-full error injected into a checkpoint write (README "Preemption and faults")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env, run_main, tar_tree, write_image_tree
from mecjax.metric_writers import read_metrics

SMOKE = "configs/mec_cifar10.py:smoke"
# 16 steps, scheduled checkpoints at 12 and 16, a row every step (so an interrupted run logs
# the very rows of an uninterrupted one), kNN and probe accuracy at the end. The kernels a
# CPU gets by default (the smoke variant runs the plain ones): these runs are the tests'
# whole training runs on the XLA:CPU kernels, resumed bit for bit.
ARGS = ("--config.total_steps=16", "--config.checkpoint.every_steps=12",
        "--config.log_every_steps=1", "--config.model.kernels=auto")
EXIT_PREEMPTED = 75


def checkpoints(workdir):
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def last_line(proc):
  return proc.stderr.strip().splitlines()[-1]


def ok(proc):
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


def same_metrics(a, b):
  rows_a, rows_b = read_metrics(a), read_metrics(b)
  assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
  for ra, rb in zip(rows_a, rows_b):
    for k, v in ra.items():
      if k in ("examples_per_sec", "eval_seconds"):
        continue
      np.testing.assert_allclose(rb[k], v, rtol=1e-6, atol=1e-7, err_msg=f"{k}@{ra['step']}")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("tree")
  write_image_tree(root, {"train": 26, "test": 13}, top="cifar10")
  return tar_tree(root, tmp_path_factory.mktemp("data") / "cifar10.tar", False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, archive, compile_cache):
  """The uninterrupted run the interrupted ones must end as."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  ok(run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS, cache=compile_cache))
  assert checkpoints(workdir) == [12, 16]
  return workdir


def start(workdir, archive, cache, *extra):
  cmd = [sys.executable, "-m", "mecjax.main", f"--config={SMOKE}", f"--workdir={workdir}",
         f"--config.data.path={archive}", *ARGS, *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=cli_env(1, cache), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, workdir, step, timeout=300):
  """Until metrics.jsonl holds a row of ``step`` or later (the run is training)."""
  deadline = time.time() + timeout
  path = Path(workdir) / "metrics.jsonl"
  while time.time() < deadline and proc.poll() is None:
    if path.exists() and path.read_text().strip() and read_metrics(workdir)[-1]["step"] >= step:
      return
    time.sleep(0.02)
  raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()})")


# The two-process run below saves every 10 steps (10, 16): a stop requested at step 2 lands
# before step 10 even when the processes agree on it late, and a kill -9 once the step-10
# checkpoint exists leaves 6 steps to go, so it lands before the end.
EVERY_10 = "--config.checkpoint.every_steps=10"


def wait_for_checkpoint(proc, workdir, after: int, timeout=300):
  """Until a checkpoint later than step ``after`` is complete (orbax renames it into place)."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if checkpoints(workdir) and checkpoints(workdir)[-1] > after:
      return checkpoints(workdir)[-1]
    time.sleep(0.02)
  raise AssertionError(f"no checkpoint after step {after} (exit {proc.poll()}, "
                       f"checkpoints {checkpoints(workdir)})")


@pytest.mark.slow
def test_sigterm_saves_the_current_step_a_kill_9_loses_only_the_steps_since_a_checkpoint(
    reference, tmp_path, archive, compile_cache):
  """SIGTERM between scheduled checkpoints saves that step and exits 75; the rerun resumes
  there; a kill -9 of the rerun once it saved step 12 loses the steps after it; the third run
  resumes from that checkpoint and ends with the uninterrupted run's metrics (rtol 1e-6:
  a resume is bit-for-bit)."""
  workdir = tmp_path / "run"
  proc = start(workdir, archive, compile_cache)
  wait_for_step(proc, workdir, 2)
  # Held (SIGSTOP) while a second run starts on the busy workdir: with a warm compile cache
  # the run reaches step 12 in less time than a second interpreter needs to start, and the
  # SIGTERM below must land between the scheduled checkpoints. A stopped process keeps its
  # lock, so the second run stops at once, naming the live run's pid.
  proc.send_signal(signal.SIGSTOP)
  try:
    busy = run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS, timeout=120)
  finally:   # whatever the second run did, the held one goes on (and is stopped)
    t = time.time()
    proc.send_signal(signal.SIGTERM)   # pending until the run continues
    proc.send_signal(signal.SIGCONT)
  out, err = proc.communicate(timeout=120)
  assert busy.returncode == 2 and "Traceback" not in busy.stderr, busy.stderr[-2000:]
  assert f"pid {proc.pid} on host " in last_line(busy) and "in use by another run" in \
      last_line(busy)
  assert time.time() - t < 120
  assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
  stopped = checkpoints(workdir)[-1]
  assert checkpoints(workdir) == [stopped] and 2 <= stopped < 12, checkpoints(workdir)
  assert f"stopped by SIGTERM at step {stopped}" in err.strip().splitlines()[-1]
  assert read_metrics(workdir)[-1]["step"] == stopped   # flushed up to the saved step

  proc = start(workdir, archive, compile_cache)
  saved = wait_for_checkpoint(proc, workdir, stopped)
  proc.kill()
  out, err = proc.communicate(timeout=60)
  assert f"resumed from {workdir}/checkpoints/{stopped}" in out
  killed_at = checkpoints(workdir)[-1]
  assert saved == 12 and 12 <= killed_at < 16, checkpoints(workdir)

  resumed = ok(run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS,
                        cache=compile_cache))
  assert f"resumed from {workdir}/checkpoints/{killed_at}" in resumed.stdout
  same_metrics(reference, workdir)
  assert checkpoints(workdir)[-2:] == [12, 16]


@pytest.mark.slow
def test_a_second_signal_during_the_save_exits_at_once_keeping_the_previous_checkpoint(
    tmp_path, archive, compile_cache):
  workdir = tmp_path / "run"
  proc = start(workdir, archive, compile_cache, "--config.checkpoint.every_steps=3")
  deadline = time.time() + 300
  while checkpoints(workdir) != [3] and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert checkpoints(workdir) and checkpoints(workdir)[0] == 3, checkpoints(workdir)
  proc.send_signal(signal.SIGUSR1)
  proc.send_signal(signal.SIGTERM)   # straight after: while the step finishes or saves
  proc.communicate(timeout=60)
  assert proc.returncode in (EXIT_PREEMPTED, -signal.SIGTERM), proc.returncode
  # Whatever the second signal interrupted, the newest complete checkpoint restores.
  resumed = ok(run_main(SMOKE, workdir, f"--config.data.path={archive}",
                        *ARGS, "--config.checkpoint.every_steps=3", cache=compile_cache))
  assert "resumed from" in resumed.stdout and "cannot be restored" not in resumed.stdout
  assert read_metrics(workdir)[-1]["step"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_one_before_resumed(
    reference, tmp_path, archive, compile_cache, damage):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / "run.lock").unlink(missing_ok=True)
  arrays = [p for p in (workdir / "checkpoints" / "16" / "state").rglob("*")
            if p.is_file() and p.stat().st_size > 1000]
  assert arrays
  for p in arrays:
    if damage == "truncate":
      with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 3)
    else:
      p.unlink()
  # The run's metrics after step 12 go too, so the rerun must recompute them.
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text(
      "".join(r + "\n" for r in rows if json.loads(r)["step"] <= 12))
  proc = ok(run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS,
                     cache=compile_cache))
  warnings = [line for line in proc.stdout.splitlines() if "cannot be restored" in line]
  assert len(warnings) == 1 and "/checkpoints/16 cannot be restored (" in warnings[0]
  assert f"resumed from {workdir}/checkpoints/12" in proc.stdout
  assert (workdir / "checkpoints" / "16.damaged").is_dir()
  assert checkpoints(workdir) == [12, 16]
  same_metrics(reference, workdir)


@pytest.mark.slow
def test_when_no_checkpoint_restores_the_run_stops_with_one_line(reference, tmp_path, archive):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in (12, 16):
    for p in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
      if p.is_file() and p.stat().st_size > 1000:
        p.unlink()
  proc = run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS, timeout=300)
  assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  line = last_line(proc)
  assert line.startswith("mecjax: error: no checkpoint in ") and "step 16: " in line
  assert "step 12: " in line and checkpoints(workdir) == [12, 16]   # nothing moved


# Disk full in the middle of a checkpoint write: orbax's JSON writer (it runs in orbax's
# background thread) raises ENOSPC for the checkpoint of step MECJAX_TEST_ENOSPC_STEP.
ENOSPC = """
import errno, os
from orbax.checkpoint._src.handlers import json_checkpoint_handler as h
_save = h.JsonCheckpointHandler._save_fn
async def _full(self, x, directory):
  if os.path.basename(os.path.dirname(str(directory))).startswith(
      os.environ["MECJAX_TEST_ENOSPC_STEP"] + "."):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))
  return await _save(self, x, directory)
h.JsonCheckpointHandler._save_fn = _full
"""


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_stops_with_one_line_and_keeps_the_previous(
    tmp_path, archive, compile_cache):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(ENOSPC)
  workdir = tmp_path / "run"
  env = {"PYTHONPATH": f"{site}{os.pathsep}{REPO}", "MECJAX_TEST_ENOSPC_STEP": "12"}
  proc = run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS,
                  "--config.checkpoint.every_steps=6", cache=compile_cache, env=env)
  assert proc.returncode == 4, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  line = last_line(proc)
  assert line.startswith("mecjax: error: checkpoint of step 12 could not be written")
  assert "No space left on device" in line and "step 6, is intact" in line
  assert checkpoints(workdir) == [6]
  resumed = ok(run_main(SMOKE, workdir, f"--config.data.path={archive}", *ARGS,
                        "--config.checkpoint.every_steps=6", cache=compile_cache))
  assert f"resumed from {workdir}/checkpoints/6" in resumed.stdout
  assert checkpoints(workdir) == [6, 12, 16]


# ------------------------------------------------------------------- bad input, lock


@pytest.mark.parametrize("cut", ["gz-half", "tar-half", "tar-at-member"])
def test_a_truncated_archive_stops_with_one_line_naming_the_file(tmp_path, archive, cut):
  data = archive.read_bytes()
  if cut.startswith("gz"):
    import gzip
    data = gzip.compress(data)
  bad = tmp_path / ("cut.tar.gz" if cut.startswith("gz") else "cut.tar")
  n = len(data) // 2 if cut.endswith("half") else (len(data) // 2) // 512 * 512
  bad.write_bytes(data[:n])
  proc = run_main(SMOKE, tmp_path / "run", f"--config.data.path={bad}", timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  line = last_line(proc)
  assert line.startswith(f"mecjax: error: config.data.path='{bad}'") and "truncated" in line


@pytest.mark.parametrize("arg,key", [
    ("--config.optim.base_lr=-0.1", "config.optim.base_lr=-0.1"),
    ("--config.optim.base_lr=0.0", "config.optim.base_lr=0.0"),
    ("--config.batch_size=0", "config.batch_size=0"),
    ("--config.total_steps=-5", "config.total_steps=-5"),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps=0")])
def test_zero_or_negative_values_stop_with_one_line_naming_the_key(tmp_path, archive, arg, key):
  proc = run_main(SMOKE, tmp_path / "run", f"--config.data.path={archive}", arg, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert last_line(proc) == f"mecjax: error: {key}: expected a number > 0"
  assert not (tmp_path / "run" / "config.json").exists()


def test_the_offline_evaluations_validate_too(tmp_path):
  from mecjax import configlib
  from mecjax.evaluators import downstream
  config = configlib.load("configs/linear_cifar10.py:smoke")
  config.optim.base_lr = -1.0
  with pytest.raises(configlib.ConfigError, match=r"config.optim.base_lr=-1.0: expected"):
    downstream.prepare(config, str(tmp_path / "run"), "linear")


HOLD = """
import sys, time
from mecjax import workdir
workdir.lock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_is_exclusive_while_held_and_free_once_its_holder_was_killed(tmp_path):
  from mecjax import workdir
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO,
                            env=cli_env(1), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirBusy, match=rf"pid {holder.pid} on host "):
      workdir.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()   # kill -9: no clean-up ran
    holder.wait()
  lock = workdir.WorkdirLock(str(tmp_path))
  lock.acquire()   # the kernel dropped the dead holder's lock
  lock.release()
  # Re-entrant in one process (a notebook rerunning train.run); released after release().
  assert workdir.lock(str(tmp_path)) is workdir.lock(str(tmp_path))
  workdir.release(str(tmp_path))
  workdir.WorkdirLock(str(tmp_path)).acquire()


def test_lease_fallback_where_flock_is_missing(tmp_path, monkeypatch):
  """Without flock: a live pid on this host holds the lock, a dead one does not."""
  import errno
  import fcntl
  import json
  import socket
  from mecjax import workdir

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(fcntl, "flock", no_flock)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  path = tmp_path / workdir.LOCK_FILE
  path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "started": 0,
                              "renewed": time.time()}))
  lock = workdir.WorkdirLock(str(tmp_path))
  lock.acquire()   # the holder's pid is gone
  assert json.loads(path.read_text())["pid"] == os.getpid()
  path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                              "started": 0, "renewed": time.time()}))
  with pytest.raises(workdir.WorkdirBusy, match=rf"pid {os.getppid()} on host"):
    workdir.WorkdirLock(str(tmp_path)).acquire()
  path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0,
                              "renewed": time.time() - 2 * workdir.LEASE_SECONDS}))
  workdir.WorkdirLock(str(tmp_path)).acquire()   # an expired lease of another host
  lock.release()


@pytest.mark.parametrize("raised,status,line", [
    ("preempted", EXIT_PREEMPTED, "mecjax: stopped by SIGTERM at step 6: checkpoint w/c/6 "
                                  "saved; rerun the same command to resume\n"),
    ("checkpoint-error", 4, "mecjax: error: disk full\n")])
def test_each_exit_line_reaches_stderr_in_one_write(monkeypatch, raised, status, line):
  """The processes of one launch share its stderr and end together; where Python's stderr is
  unbuffered (PYTHONUNBUFFERED=1), ``print`` writes a line's text and its newline in two
  calls, and two processes' last lines ran into one (the two-process test below saw one
  "stopped by" line where there were two). Each exit line must be one write."""
  from types import SimpleNamespace
  from mecjax import checkpoint, main, parallel, preemption
  writes = []
  monkeypatch.setattr(sys, "stderr", SimpleNamespace(write=writes.append, flush=lambda: None))
  monkeypatch.setattr(main, "_WORKDIR", SimpleNamespace(value="w"))
  monkeypatch.setattr(main, "_CONFIG", SimpleNamespace(value={"method": "mec"}))
  monkeypatch.setattr(main, "setup_logging", lambda: None)
  monkeypatch.setattr(parallel, "initialize_distributed", lambda: None)

  def run_task(config, workdir):
    if raised == "preempted":
      raise preemption.Preempted(signal.SIGTERM, 6, "w/c")
    raise checkpoint.CheckpointError("disk full")
  monkeypatch.setattr(main, "run_task", run_task)
  with pytest.raises(SystemExit) as exit_:
    main.main(["mecjax"])
  assert exit_.value.code == status and writes == [line]


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_error_lines_are_one_write(monkeypatch, tmp_path, command):
  """The other two commands end on a bad workdir with the same one-write line."""
  from types import SimpleNamespace
  from mecjax import evaluate, export
  writes = []
  monkeypatch.setattr(sys, "stderr", SimpleNamespace(write=writes.append, flush=lambda: None))
  missing = tmp_path / "none"
  if command == "evaluate":
    status = evaluate.main(["curves", "--runs", str(missing), f"--out={tmp_path / 'x.png'}"])
  else:
    status = export.main([f"--workdir={missing}", "--format=torchvision",
                          f"--out={tmp_path / 'x.pth'}"])
  assert status == 2 and len(writes) == 1
  assert writes[0].startswith("mecjax: error: ") and writes[0].endswith("\n")
  assert writes[0].count("\n") == 1 and str(missing.name) in writes[0]


@pytest.mark.slow
def test_two_processes_stop_together_and_a_kill_9_of_one_stops_the_other(
    reference, tmp_path, archive, compile_cache):
  """launch/local.sh 2, each process feeding half of the global batch. (1) kill -TERM of the
  launcher: both processes save the same step and exit 75, the launcher with them. (2) The
  relaunch resumes both; a kill -9 of process 1 once a scheduled checkpoint exists fails the
  launch (exit 137) and stops process 0. (3) The same command resumes both again and the run
  ends as the 1-process run (to another reduction order's tolerance)."""
  workdir = tmp_path / "two"
  cmd = ["bash", "launch/local.sh", "2", f"--config={SMOKE}", f"--workdir={workdir}",
         f"--config.data.path={archive}", *ARGS, EVERY_10,
         "--config.checkpoint.stop_check_every_steps=2"]
  env = {**cli_env(1, compile_cache), "PYTHON": sys.executable}
  launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
  wait_for_step(launcher, workdir, 2, timeout=600)
  t = time.time()
  launcher.send_signal(signal.SIGTERM)
  out, err = launcher.communicate(timeout=120)
  assert time.time() - t < 120
  assert launcher.returncode == EXIT_PREEMPTED, err[-3000:]
  stops = [line for line in err.splitlines() if "stopped by SIGTERM at step" in line]
  assert len(stops) == 2 and len({s.split("at step ")[1].split(":")[0] for s in stops}) == 1
  stopped = checkpoints(workdir)[-1]
  assert checkpoints(workdir) == [stopped] and stopped < 10 and f"step {stopped}:" in stops[0]

  err_path = tmp_path / "second_launch.err"
  with open(err_path, "w") as err_file:
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=err_file)
    wait_for_checkpoint(launcher, workdir, stopped, timeout=600)
    # local.sh prints "launch/local.sh: process I: pid P" for each process it starts.
    pids = dict(line.split("process ", 1)[1].split(": pid ")
                for line in err_path.read_text().splitlines() if ": pid " in line)
    os.kill(int(pids["1"]), signal.SIGKILL)
    launcher.wait(timeout=120)
  assert launcher.returncode == 137, err_path.read_text()[-3000:]
  assert not Path(f"/proc/{pids['0']}").exists(), "process 0 outlived the launcher"
  killed_at = checkpoints(workdir)[-1]
  assert 10 <= killed_at < 16, checkpoints(workdir)

  resumed = ok(subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900))
  assert "2 process(es), 2 device(s)" in resumed.stdout
  assert f"resumed from {workdir}/checkpoints/{killed_at}" in resumed.stdout
  rows_a, rows_b = read_metrics(reference), read_metrics(workdir)
  assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
  for k in ("loss", "lr", "ema_momentum"):
    np.testing.assert_allclose([r[k] for r in rows_b], [r[k] for r in rows_a], rtol=5e-3)
  np.testing.assert_allclose(rows_b[-1]["knn_top1"], rows_a[-1]["knn_top1"], atol=2 / 128)
  assert checkpoints(workdir)[-2:] == [10, 16]
