"""One run per workdir: an exclusive lock on ``DIR/run.lock``, held while the run lives.

Two runs writing one workdir would interleave metrics and race on checkpoints. The lock is
an ``fcntl.flock`` on ``DIR/run.lock``, which the kernel (or the NFS server, whose lock
leases expire when a client host dies) drops with the process that held it: a run killed
with ``kill -9``, or on a host that crashed, never blocks the next one, so there is no
stale-lock clean-up to get wrong. The file itself names the holder (host, pid, start
time) for the message a second run stops with. On a file system without ``flock`` the lock
falls back to the pid in the file: held while that pid is alive on this host, or for a
holder on another host, while the file's lease (rewritten every minute by a background
thread) is younger than ``LEASE_SECONDS``.

Multi-process runs take the lock once, in process 0, and every process learns the answer
through one collective, so they all stop together with the same line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time

from mecjax.configlib import ConfigError

LOCK_FILE = "run.lock"
LEASE_SECONDS = 300
_REFRESH_SECONDS = 60


class WorkdirBusy(ConfigError):
  """Another live run holds the workdir; the message names its host and pid."""


def _describe(info: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
          f"(started {started})")


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """``WorkdirLock(workdir).acquire()`` or ``WorkdirBusy``; ``release()`` at the end."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      lease = False
    except BlockingIOError:
      os.close(fd)
      raise self._busy(_read(self.path)) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      lease = True   # no flock here: the pid / lease in the file decide
      holder = _read(self.path)
      if holder and holder.get("pid") != os.getpid() and self._held_by(holder):
        os.close(fd)
        raise self._busy(holder) from None
    self._fd = fd
    self._write()
    if lease:
      self._thread = threading.Thread(target=self._refresh, daemon=True)
      self._thread.start()

  def _held_by(self, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname():
      return _alive(int(holder.get("pid", -1)))
    return time.time() - float(holder.get("renewed", 0)) < LEASE_SECONDS

  def _busy(self, holder: dict) -> WorkdirBusy:
    who = _describe(holder) if holder else "a process that has not written its name yet"
    return WorkdirBusy(f"workdir {os.path.dirname(self.path)} is in use by another run, "
                       f"{who}: stop that run, or use another --workdir")

  def _write(self) -> None:
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": getattr(self, "_started", now), "renewed": now}
    self._started = info["started"]
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(info).encode(), 0)

  def _refresh(self) -> None:
    while not self._stop.wait(_REFRESH_SECONDS):
      self._write()

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    # The file stays (removing it would race with a run opening it); an unlocked file is free.
    if self._thread is None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    else:
      os.ftruncate(self._fd, 0)
    os.close(self._fd)
    self._fd = None


# Locks this process holds, by workdir: a run that stopped on an error before releasing
# its lock (bad data, say) does not block the next run of the same process (a notebook).
_HELD: dict[str, WorkdirLock] = {}


def lock(workdir: str) -> WorkdirLock | None:
  """Take ``workdir``'s lock in process 0 (the lock object; None in the other processes);
  every process raises ``WorkdirBusy`` with process 0's line when another run holds it.
  Re-entrant within one process; ``release(workdir)`` gives it back."""
  import jax
  key = os.path.realpath(workdir)
  if key in _HELD:
    return _HELD[key]
  if jax.process_count() == 1:
    held = WorkdirLock(workdir)
    held.acquire()
    _HELD[key] = held
    return held
  import numpy as np
  from jax.experimental import multihost_utils
  held, message = None, ""
  if jax.process_index() == 0:
    held = WorkdirLock(workdir)
    try:
      held.acquire()
    except WorkdirBusy as e:
      held, message = None, str(e)
  encoded = np.zeros(512, np.uint8)
  raw = message.encode()[:512]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  encoded = multihost_utils.broadcast_one_to_all(encoded)
  message = bytes(np.asarray(encoded)).rstrip(b"\0").decode(errors="replace")
  if message:
    raise WorkdirBusy(message)
  if held is not None:
    _HELD[key] = held
  return held


def release(workdir: str) -> None:
  held = _HELD.pop(os.path.realpath(workdir), None)
  if held is not None:
    held.release()
