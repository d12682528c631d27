"""metrics.jsonl and the TensorBoard events hold the same scalars, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import json, sys
from pathlib import Path
from mecjax.metric_writers import MetricWriter, read_metrics
workdir = Path(sys.argv[1])
w = MetricWriter(str(workdir))
w.write(1, {"loss": 0.5, "knn_top1": 0.25})
w.write(2, {"loss": float("nan")})
w.close()
tf_loaded = "tensorflow" in sys.modules
import struct
from tensorboard.compat.proto import event_pb2
scalars = []
for f in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
  data = f.read_bytes()
  while data:   # TFRecord framing: u64 length, u32 crc, payload, u32 crc
    (n,) = struct.unpack("<Q", data[:8])
    event = event_pb2.Event.FromString(data[12:12 + n])
    data = data[16 + n:]
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
print(json.dumps({"tf": tf_loaded, "rows": read_metrics(str(workdir)),
                  "scalars": [list(s) for s in scalars if s[2] == s[2]]}))
"""


def test_scalars_reach_jsonl_and_tensorboard_without_importing_tensorflow(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={"PATH": "/usr/bin:/bin"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  import json
  out = json.loads(proc.stdout.splitlines()[-1])
  assert out["tf"] is False   # TensorFlow costs ~5 s per start: never imported for scalars
  assert out["rows"] == [{"step": 1, "loss": 0.5, "knn_top1": 0.25}, {"step": 2, "loss": "nan"}]
  assert sorted(out["scalars"]) == [[1, "knn_top1", 0.25], [1, "loss", 0.5]]
