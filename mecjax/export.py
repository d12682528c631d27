r"""Export a run's ResNet encoder for other tools:

  python -m mecjax.export --workdir=RUN --format=torchvision|safetensors|detectron2 \
      --out=PATH [--target] [--step=N]

- ``torchvision``: a ``torch.save``d state dict for torchvision's ``resnet50`` / ``resnet18``
  (every backbone key; ``fc`` is not part of a pre-trained encoder, so load it with
  ``strict=False`` and expect exactly ``fc.weight`` and ``fc.bias`` missing).
- ``safetensors``: the same tensors in a safetensors file.
- ``detectron2``: the pickled ``{"model": ..., "__author__": ..., "matching_heuristics":
  True}`` that the MoCo / SimSiam detection recipes load (``MODEL.WEIGHTS``), keys renamed as
  their ``convert-pretrain-to-detectron2.py`` does: stem -> ``stem.conv1`` (+``.norm``),
  ``layer{i}`` -> ``res{i+1}``, ``bn{j}`` -> ``conv{j}.norm``, ``downsample.0/1`` ->
  ``shortcut`` / ``shortcut.norm``; numpy arrays in PyTorch layout (OIHW).

``--target`` exports the EMA teacher (the target parameters in the optimiser state, with the
teacher's BN statistics) instead of the online encoder. The weights come from RUN's latest
checkpoint (or ``--step``). torch is needed for ``torchvision``; safetensors for
``safetensors`` (``pip install -r requirements-torch.txt``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys

import numpy as np

from mecjax import entry  # first: the default XLA flags, before JAX starts its backend

FORMATS = ("torchvision", "safetensors", "detectron2")


class ExportError(ValueError):
  """The run cannot be exported as asked; the message says why."""


def check_torchvision_layout(workdir: str, model: dict) -> None:
  """Raise ExportError unless the run's encoder (its ``config.model`` as stored) is a ResNet
  of one of torchvision's depths: only those load into torchvision's modules."""
  name = str(model.get("name", ""))
  if not name.startswith("resnet"):
    raise ExportError(f"{workdir}: encoder {model.get('name')!r} is not a ResNet: only "
                      "torchvision-layout ResNets export")
  from mecjax.models import resnet
  default, sizes = resnet.STAGES[name.removesuffix("_cifar")], model.get("stage_sizes")
  if sizes and tuple(sizes) != default:
    raise ExportError(f"{workdir}: config.model.stage_sizes={tuple(sizes)} is not {name}'s "
                      f"{default}: only torchvision's ResNet depths export")


def encoder_weights(workdir: str, *, target: bool = False, step: int | None = None):
  """(params, batch_stats, meta) of a run's encoder (the online one, or the EMA teacher)."""
  from mecjax import checkpoint as ckpt_lib
  state = ckpt_lib.read_state(workdir, step)
  meta = state["meta"]
  check_torchvision_layout(workdir, meta.get("model", {}))
  if not target:
    return state["params"]["encoder"], state["model_state"]["batch_stats"]["encoder"], meta
  from mecjax.methods import teacher
  found = teacher.of(state)
  if found is None:
    raise ExportError(f"{workdir}: method {meta.get('method')!r} keeps no EMA target "
                      "(--target is for MEC, BYOL, ...): export the online encoder")
  return found["params"]["encoder"], found["batch_stats"]["encoder"], meta


def detectron2_keys(state: dict) -> dict:
  """torchvision ResNet keys -> Detectron2 ResNet keys (MoCo's conversion)."""
  out = {}
  for key, value in state.items():
    if key.endswith("num_batches_tracked"):
      continue   # Detectron2's FrozenBN has no counter
    k = key if key.startswith("layer") else "stem." + key
    k = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", k)
    k = re.sub(r"bn(\d)", r"conv\1.norm", k)
    k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    out[k] = np.asarray(value)
  return out


def export(workdir: str, fmt: str, out: str, *, target: bool = False,
           step: int | None = None) -> dict:
  """Write the encoder of ``workdir`` to ``out`` in format ``fmt``; returns the state dict
  written (torchvision keys, or Detectron2 keys for ``detectron2``)."""
  from mecjax import torch_port
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt!r}: expected one of {list(FORMATS)}")
  params, stats, meta = encoder_weights(workdir, target=target, step=step)
  state = torch_port.encoder_to_torch(params, stats)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  if fmt == "torchvision":
    import torch
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, tmp)
  elif fmt == "safetensors":
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp,
              metadata={"format": "pt", "source": f"mecjax {meta.get('method')} run"})
  else:
    state = detectron2_keys(state)
    with open(tmp, "wb") as f:
      pickle.dump({"model": state, "__author__": f"mecjax ({meta.get('method')})",
                   "matching_heuristics": True}, f)
  os.replace(tmp, out)   # never a half-written file under the final name
  return state


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m mecjax.export", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a mecjax run directory")
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--out", required=True, help="file to write")
  p.add_argument("--target", action="store_true", help="the EMA teacher, not the online net")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  args = p.parse_args(argv)
  from mecjax import configlib
  try:
    state = export(args.workdir, args.format, args.out, target=args.target, step=args.step)
  except (ExportError, configlib.ConfigError) as e:
    entry.say(f"mecjax: error: {e}")
    return 2
  which = "EMA target" if args.target else "online"
  print(f"wrote {args.out}: {which} encoder, {len(state)} arrays, {args.format} layout")
  return 0


if __name__ == "__main__":
  sys.exit(main())
