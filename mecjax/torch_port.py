"""PyTorch <-> mecjax weights: torchvision-layout ResNets and the SSL heads.

Releases understood (``split_release`` recognises them by their key prefixes, after
stripping DistributedDataParallel's ``module.``):

- plain torchvision ResNet state dicts (``conv1.weight``, ``layer1.0.conv1.weight``, ...,
  ``fc.*``), which is also VICReg's ``resnet50.pth``;
- VICReg's full checkpoint ``{"epoch", "model", "optimizer"}``: ``backbone.*`` (the ResNet)
  and ``projector.*`` (``Linear(bias)-BN-ReLU-Linear(bias)-BN-ReLU-Linear(no bias)``);
- SimSiam's ``checkpoint_0099.pth.tar`` ``{"epoch", "arch", "state_dict", "optimizer"}``:
  ``encoder.*`` (a torchvision ResNet whose ``fc`` is the projector:
  ``Linear(no bias)-BN-ReLU-Linear(no bias)-BN-ReLU-Linear(bias)-BN(affine=False)``) and
  ``predictor.*`` (``Linear(no bias)-BN-ReLU-Linear(bias)``);
- SwAV's ``{"epoch", "state_dict", "optimizer"}`` or its bare state dict: the ResNet at the
  top level, ``projection_head.*`` (``Linear(bias)-BN-ReLU-Linear(bias)``) and
  ``prototypes.weight`` (``(K, d)``).

Files are read with ``torch.load(map_location="cpu", weights_only=True)`` (no arbitrary
object is ever unpickled) or, for ``.safetensors``, with safetensors. torch and safetensors
are imported only inside the functions that need them: the rest of mecjax runs without them
(``requirements-torch.txt``).

Mapping. The encoder is mechanical (``mecjax.models.resnet`` uses torchvision's module names:
``layer1.0`` -> ``layer1_0``, ``downsample.0`` / ``downsample.1`` -> ``downsample_conv`` /
``downsample_bn``; convolution kernels OIHW -> HWIO; BN weight, bias, running_mean,
running_var -> params scale, bias and batch_stats mean, var; ``num_batches_tracked`` has no
counterpart). A head (an ``nn.Sequential``) maps generically: its modules are walked in
index order, a module with a 2-D ``weight`` is Linear number ``L`` -> ``linear{L}/dense``
(weight ``(out, in)`` -> kernel ``(in, out)``), a module with ``running_mean`` is the BN of
the Linear before it -> ``bn{L}``. An ``affine=False`` BN maps to a mecjax BN without scale
and bias.

Bias folding. mecjax's hidden Linears (and an output Linear followed by a BN) have no bias,
where VICReg's and SwAV's hidden Linears and SimSiam's ``fc.6`` have one. That bias is
folded into the BN's running mean, ``running_mean' = running_mean - bias``, and this is
exact: in train mode the BN subtracts the batch mean, ``(Wx + b) - mean(Wx + b) =
Wx - mean(Wx)``, so the bias reaches neither the output nor any gradient; the running mean
it accumulates is ``mean(Wx) + b`` in torch and ``mean(Wx)`` in mecjax, the same shift; and
in eval mode ``Wx + b - running_mean = Wx - running_mean'``. The same outputs in both modes.

The inverse, ``encoder_to_torch`` / ``heads_to_torch``, writes torchvision keys (and
``nn.Sequential`` indices ``3L`` for ``linear{L}``, ``3L + 1`` for ``bn{L}``, the layout of
all three releases' heads); encoder -> torch -> encoder is exact.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np

# ----------------------------------------------------------------------------- errors


class PortError(ValueError):
  """A checkpoint that cannot be read or does not fit: the message names the file, the torch
  key and/or the flax path, and the expected and found shapes."""


# ----------------------------------------------------------------------------- reading


class StateDict(dict):
  """``dict[str, np.ndarray]`` of a checkpoint's tensors; ``source`` is the file read."""
  source: str | None = None


def _needs(module: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise PortError(f"{module.split('.')[0]} is needed to read and write PyTorch checkpoints "
                    f"and is not installed ({e}): pip install -r requirements-torch.txt"
                    ) from e


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _weights_only_reason(e: BaseException) -> str:
  """The specific part of torch's weights-only refusal ("Unsupported global: ...",
  "Unsupported operand ..."), else the first line."""
  text = str(e)
  m = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.S)
  if m and m.group(1).strip():
    reason = " ".join(m.group(1).split()).split(" Please use ")[0]
    return "WeightsUnpickler: " + reason[:300]
  return _first_line(e)


def _is_tensor(x) -> bool:
  return type(x).__module__.startswith("torch") and hasattr(x, "detach") and \
      hasattr(x, "numpy")


def _to_numpy(tensor) -> np.ndarray:
  torch = _needs("torch")
  t = tensor.detach().cpu()
  if t.dtype == torch.bfloat16:      # no numpy dtype
    t = t.float()
  return t.numpy().copy()


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint file, as ``{key: numpy array}``.

  ``.safetensors`` files are read with safetensors; anything else with
  ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses to unpickle
  arbitrary objects. The releases' nesting is unwrapped: while the dict holds no tensor
  itself and its ``"state_dict"`` or ``"model"`` entry is a dict (SimSiam, SwAV, VICReg's
  full checkpoint), that entry is taken. Non-tensor entries are dropped; bfloat16 tensors
  become float32, the rest keep their dtype.

  Returns a ``StateDict`` (a dict) whose ``source`` is ``path``, so that later messages
  name the file. Raises PortError naming the path and the reason for a missing file, a
  file torch / safetensors cannot read (corrupted, truncated, not a checkpoint), one that
  would need arbitrary objects unpickled, and one without any tensor.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise PortError(f"{path}: no such file")
  if path.endswith(".safetensors"):
    obj = _load_safetensors(path)
  else:
    torch = _needs("torch")
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      reason = _weights_only_reason(e)
      if "unsupported global" in reason.lower():
        raise PortError(f"{path}: refused: the file holds objects other than tensors and "
                        "plain containers, which torch.load(weights_only=True) does not "
                        f"unpickle ({reason})") from e
      raise PortError(f"{path}: not a PyTorch checkpoint torch.load(weights_only=True) can "
                      f"read ({reason})") from e
    except Exception as e:  # noqa: BLE001 -- torch raises RuntimeError, EOFError, ...
      raise PortError(f"{path}: torch.load cannot read it: corrupted, truncated or not a "
                      f"PyTorch checkpoint ({_first_line(e)})") from e

  nesting = []
  while isinstance(obj, Mapping) and not any(_is_tensor(v) or isinstance(v, np.ndarray)
                                             for v in obj.values()):
    inner = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    nesting.append(inner)
    obj = obj[inner]
  if not isinstance(obj, Mapping):
    raise PortError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
  out = StateDict()
  out.source = path
  for key, value in obj.items():
    if _is_tensor(value):
      out[str(key)] = _to_numpy(value)
    elif isinstance(value, np.ndarray):
      out[str(key)] = value
  if not out:
    where = "under " + "/".join(repr(n) for n in nesting) if nesting else "at the top level"
    keys = sorted(map(str, obj))[:8]
    raise PortError(f"{path}: no tensors in the checkpoint (keys {where}: {keys}); expected "
                    "a state dict, or one under 'state_dict' or 'model'")
  return out


def _load_safetensors(path: str) -> dict:
  st_numpy = _needs("safetensors.numpy")
  try:
    return st_numpy.load_file(path)
  except Exception as e:  # noqa: BLE001
    first = e
  try:   # bfloat16 has no numpy dtype: read those through torch, where it is installed
    st_torch = importlib.import_module("safetensors.torch")
    return st_torch.load_file(path, device="cpu")
  except Exception:  # noqa: BLE001
    raise PortError(f"{path}: safetensors cannot read it: corrupted, truncated or not a "
                    f"safetensors file ({_first_line(first)})") from first


# ----------------------------------------------------------------------------- releases

PARTS = ("encoder", "projector", "predictor", "prototypes", "other")

_TORCHVISION = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)|"
    r"layer\d+\.\d+\.(conv\d+\.weight|(bn\d+|downsample\.1)\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)|downsample\.0\.weight)|"
    r"fc\.(weight|bias))$")
_FC_HEAD = re.compile(r"^fc\.\d+\.")


class Parts(dict):
  """``{part: {key relative to the part: array}}`` for every part of ``PARTS``, with
  attributes

  - ``release``: ``"torchvision"``, ``"vicreg"``, ``"simsiam"``, ``"swav"``, or
    ``"unknown"`` (no ResNet key recognised);
  - ``ddp``: whether the keys carried DistributedDataParallel's ``module.`` prefix;
  - ``prefix``: ``{part: prefix}``, the prefix each part's keys had in the file (messages
    name the file's keys, ``prefix[part] + key``);
  - ``source``: the file, when known.
  """
  release: str = "unknown"
  ddp: bool = False
  source: str | None = None

  def __init__(self, *args, **kw):
    super().__init__(*args, **kw)
    self.prefix: dict[str, str] = {}


def split_release(state: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """Split a release's state dict into parts: ``encoder`` (torchvision ResNet keys,
  ``fc.weight`` / ``fc.bias`` kept so they can be reported as unused), ``projector``,
  ``predictor``, ``prototypes`` (``{"weight": (K, d)}``) and ``other`` (keys not
  recognised), each keyed relative to the part (``"0.weight"``); every part is present,
  possibly empty.

  Recognised, after stripping ``module.``: ``backbone.*`` + ``projector.*`` (VICReg's full
  checkpoint); ``encoder.*`` with ``encoder.fc.<i>.*`` as the projector + ``predictor.*``
  (SimSiam); top-level ResNet keys + ``projection_head.*`` + ``prototypes.weight`` (SwAV);
  top-level ResNet keys alone (torchvision, VICReg's ``resnet50.pth``). Returns a ``Parts``
  dict: its ``release`` attribute names the release recognised (see ``Parts``). Raises
  PortError when both ``backbone.*`` and ``encoder.*`` keys are present.
  """
  source = getattr(state, "source", None)
  stripped = {}
  ddp = False
  for key, value in state.items():
    if key.startswith("module."):
      key, ddp = key[len("module."):], True
    stripped[key] = value
  keys = list(stripped)
  has = {p: any(k.startswith(p) for k in keys) for p in ("backbone.", "encoder.")}
  if has["backbone."] and has["encoder."]:
    raise PortError(f"{source or 'state dict'}: both 'backbone.*' and 'encoder.*' keys: "
                    "cannot tell which is the encoder")
  enc_prefix = "backbone." if has["backbone."] else "encoder." if has["encoder."] else ""
  if enc_prefix == "backbone.":
    release = "vicreg"
  elif enc_prefix == "encoder.":
    release = "simsiam"
  elif any(k.startswith("projection_head.") or k == "prototypes.weight" for k in keys):
    release = "swav"
  elif any(_TORCHVISION.match(k) for k in keys):
    release = "torchvision"
  else:
    release = "unknown"

  parts = Parts({p: {} for p in PARTS})
  parts.release, parts.ddp, parts.source = release, ddp, source
  module = "module." if ddp else ""
  parts.prefix = {p: module for p in PARTS}
  parts.prefix["encoder"] = module + enc_prefix
  for key, value in stripped.items():
    if enc_prefix and key.startswith(enc_prefix):
      rel = key[len(enc_prefix):]
      if _FC_HEAD.match(rel):        # SimSiam: encoder.fc is the projector (a Sequential)
        parts["projector"][rel[len("fc."):]] = value
        parts.prefix["projector"] = module + enc_prefix + "fc."
      else:
        parts["encoder"][rel] = value
    elif not enc_prefix and _TORCHVISION.match(key):
      parts["encoder"][key] = value
    elif key.startswith("projector.") or key.startswith("projection_head."):
      head = key.split(".", 1)[0] + "."
      parts["projector"][key[len(head):]] = value
      parts.prefix["projector"] = module + head
    elif key.startswith("predictor."):
      parts["predictor"][key[len("predictor."):]] = value
      parts.prefix["predictor"] = module + "predictor."
    elif key.startswith("prototypes."):
      parts["prototypes"][key[len("prototypes."):]] = value
      parts.prefix["prototypes"] = module + "prototypes."
    else:
      parts["other"][key] = value
  return parts


# ----------------------------------------------------------------------------- trees


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def _fpath(path: tuple) -> str:
  return "/".join(map(str, path))


def _host(x) -> np.ndarray:
  a = np.array(x)     # a copy: the returned trees share nothing with the inputs
  return a.astype(np.float32) if a.dtype.kind == "f" else a


# ----------------------------------------------------------------------------- report


@dataclasses.dataclass
class ImportReport:
  """What ``import_into`` did. Flax paths read ``encoder/layer1_0/conv1/kernel`` (params)
  or ``encoder/bn1/mean`` (batch_stats: the leaf names do not collide); torch keys are the
  file's keys, prefixes included.

  loaded: flax paths filled from the checkpoint.
  unused: torch keys used for nothing though they could have been: keys not recognised, a
    head the network does not have, or has fewer layers of.
  ignored: torch keys not used, as expected: ``num_batches_tracked``, the ``fc`` classifier,
    the heads when ``heads=False``.
  unfilled: flax paths left at their initialisation (head leaves only: an unfilled encoder
    leaf is an error).
  notes: how leaves were filled where it is not a plain copy (bias folds, zero biases, unit
    BN scales).
  skipped: ``{part: torch keys}`` of the heads not imported because ``heads=False`` (those
    keys are in ``ignored`` too).
  """
  release: str = "unknown"
  source: str | None = None
  loaded: list[str] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)
  unfilled: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    """One line: per module what was loaded or left, then the notes, then what was not
    used."""
    def count(paths, module):
      return sum(1 for p in paths if p.split("/", 1)[0] == module)

    modules: list[str] = []
    for p in self.loaded + self.unfilled:
      m = p.split("/", 1)[0]
      if m not in modules:
        modules.append(m)
    out = [f"{self.release} release"]
    for m in modules:
      n, u = count(self.loaded, m), count(self.unfilled, m)
      arrays = f"{n} array{'s' if n != 1 else ''}"
      if n and not u:
        out.append(f"{m}: {arrays} loaded")
      elif n:
        out.append(f"{m}: {arrays} loaded, {u} left at initialisation")
      else:
        out.append(f"{m}: left at initialisation")
    out.extend(self.notes)
    if self.skipped:
      out.append("heads not imported (heads=False): " + ", ".join(
          f"{part} ({len(keys)} keys)" for part, keys in self.skipped.items()))
    skipped = {k for keys in self.skipped.values() for k in keys}
    nbt = sum(1 for k in self.ignored if k.endswith("num_batches_tracked"))
    rest = [k for k in self.ignored if not k.endswith("num_batches_tracked") and
            k not in skipped]
    if nbt or rest:
      out.append("not needed: " + ", ".join(([f"{nbt} num_batches_tracked"] if nbt else [])
                                            + _short(rest)))
    out.append("NOT USED: " + ", ".join(_short(self.unused)) if self.unused else
               "every other key used")
    partial = [p for p in self.unfilled if count(self.loaded, p.split("/", 1)[0])]
    if partial:
      out.append("left at initialisation: " + ", ".join(_short(partial)))
    return "; ".join(out)


def _short(items: list[str], limit: int = 8) -> list[str]:
  return list(items[:limit]) + ([f"... (+{len(items) - limit} more)"]
                                if len(items) > limit else [])


# ----------------------------------------------------------------------------- import

_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_HEAD_HINT = ("Set the head widths of the config to the checkpoint's, or heads=False "
              "(config.init.heads) to leave the heads at initialisation.")
_HEADS = (("projector", "projector"), ("predictor", "predictor"), ("prototypes", "predictor"))


def _torch_module(name: str) -> str:
  m = re.fullmatch(r"layer(\d+)_(\d+)", name)
  if m:
    return f"layer{m.group(1)}.{m.group(2)}"
  return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)


def _encoder_key(path: tuple, leaf: str) -> str | None:
  """The torchvision key of an encoder leaf (module path, leaf name), None if it has none."""
  name = {"kernel": "weight", **_BN_PARAMS, **_BN_STATS}.get(leaf)
  return ".".join(_torch_module(n) for n in path) + f".{name}" if name else None


class _Importer:
  """Shared state of one ``import_into``: the flat trees, what was used and filled."""

  def __init__(self, parts: Mapping, params: Mapping, batch_stats: Mapping,
               report: ImportReport):
    self.parts, self.report = parts, report
    self.prefix = getattr(parts, "prefix", None) or {}
    self.source = getattr(parts, "source", None)
    self.flat = {"params": {k: _host(v) for k, v in _flatten(params).items()},
                 "batch_stats": {k: _host(v) for k, v in _flatten(batch_stats).items()}}
    self.used: set[tuple[str, str]] = set()
    self.filled: set[tuple[str, tuple]] = set()
    self.mismatches: list[str] = []

  def key(self, part: str, k: str) -> str:
    return self.prefix.get(part, "") + k

  def where(self) -> str:
    return f"{self.source}: " if self.source else ""

  def has(self, coll: str, path: tuple) -> bool:
    return path in self.flat[coll]

  def put(self, coll: str, path: tuple, value: np.ndarray, note: str | None = None):
    target = self.flat[coll][path]
    self.flat[coll][path] = np.asarray(value, dtype=target.dtype)
    self.filled.add((coll, path))
    self.report.loaded.append(_fpath(path))
    if note:
      self.report.notes.append(f"{_fpath(path)}: {note}")

  def take(self, part: str, k: str, coll: str, path: tuple, transform=None):
    """The torch tensor ``parts[part][k]`` in flax layout, checked against the flax leaf's
    shape; None after recording a mismatch."""
    value = np.asarray(self.parts[part][k])
    self.used.add((part, k))
    conv = transform(value) if transform is not None else value
    want = self.flat[coll][path].shape
    if conv.shape != want:
      shown = f" (flax layout {tuple(conv.shape)})" if transform is not None else ""
      self.mismatches.append(
          f"torch key {self.key(part, k)!r} has shape {tuple(value.shape)}{shown}, flax path "
          f"{_fpath(path)!r} expects {tuple(want)}")
      return None
    return conv

  def check(self, hint: str):
    if self.mismatches:
      n = len(self.mismatches)
      raise PortError(f"{self.where()}{n} shape mismatch{'es' if n > 1 else ''}: "
                      + "; ".join(_short(self.mismatches, 5)) + f". {hint}")


def import_into(params: Mapping, batch_stats: Mapping, parts: Mapping, *, heads: bool = True
                ) -> tuple[dict, dict, ImportReport]:
  """Fill a mecjax network's leaves from the parts of a release (``split_release``).

  ``params`` / ``batch_stats`` are the trees of an ``SSLNet`` (``{"encoder", "projector",
  "predictor"}``, heads optional; SwAV's prototypes ``params["predictor"]["prototypes"]``,
  ``(d, K)``). The encoder is always filled; the projector, the predictor and the
  prototypes only when ``heads`` and both sides have them. Returns NEW nested dicts of
  numpy arrays (float32; leaves not filled are copies of the inputs) and an
  ``ImportReport``.

  Raises PortError, naming the torch key, the flax path and both shapes, on any shape
  mismatch (a ResNet-18 state dict into ResNet-50 params; head widths other than the
  config's: set them to the release's, or ``heads=False``); listing the encoder leaves the
  checkpoint does not fill; and on a torch bias or BN affine the mecjax head cannot
  represent (a bias on a Linear that has none and no BN after it; a non-trivial affine on a
  BN built without one).
  """
  if "encoder" not in params:
    raise PortError("import_into: params have no 'encoder' (expected an SSLNet tree "
                    "{'encoder', 'projector', 'predictor'})")
  report = ImportReport(release=getattr(parts, "release", "unknown"),
                        source=getattr(parts, "source", None))
  imp = _Importer(parts, params, batch_stats, report)
  _import_encoder(imp, parts.get("encoder", {}))

  for part, module in _HEADS:
    tensors = parts.get(part, {})
    if not tensors:
      continue
    if part == "prototypes":
      mine = imp.has("params", (module, "prototypes"))
    else:
      mine = any(path[0] == module and path[1:2] != ("prototypes",)
                 for flat in imp.flat.values() for path in flat)
    if not heads:
      keys = [imp.key(part, k) for k in tensors]
      report.ignored.extend(keys)
      report.skipped[part] = keys
      imp.used.update((part, k) for k in tensors)
      continue
    if not mine:
      continue           # the network has no such head: its keys are reported unused
    if part == "prototypes":
      if "weight" in tensors:
        path = (module, "prototypes")
        value = imp.take(part, "weight", "params", path, np.transpose)
        if value is not None:
          imp.put("params", path, value)
    else:
      _import_sequential(imp, part, module, tensors)
  imp.check(_HEAD_HINT)

  for coll, flat in imp.flat.items():
    for path in flat:
      if path[0] in ("projector", "predictor") and (coll, path) not in imp.filled:
        report.unfilled.append(_fpath(path))
  for part in PARTS:
    for k in parts.get(part, {}):
      if (part, k) in imp.used:
        continue
      full = imp.key(part, k)
      if k.endswith("num_batches_tracked") or (part == "encoder" and k in ("fc.weight",
                                                                          "fc.bias")):
        report.ignored.append(full)
      else:
        report.unused.append(full)
  return _unflatten(imp.flat["params"]), _unflatten(imp.flat["batch_stats"]), report


def _import_encoder(imp: _Importer, enc: Mapping[str, np.ndarray]):
  missing = []
  for coll in ("params", "batch_stats"):
    for path in imp.flat[coll]:
      if path[0] != "encoder":
        continue
      k = _encoder_key(path[1:-1], path[-1])
      if k is None or k not in enc:
        missing.append(_fpath(path) + (f" (torch {imp.key('encoder', k)!r})" if k else ""))
        continue
      transform = (lambda w: np.transpose(w, (2, 3, 1, 0))) if path[-1] == "kernel" else None
      value = imp.take("encoder", k, coll, path, transform)     # OIHW -> HWIO
      if value is not None:
        imp.put(coll, path, value)
  imp.check("Is the checkpoint's ResNet the architecture and width of config.model (and "
            "its stem: torchvision's is 7x7, cifar_stem's 3x3)?")
  if missing:
    found = (f"{len(enc)} ResNet keys" if enc else
             "no ResNet keys (conv1.weight, layer1.0.conv1.weight, ...)")
    other = imp.parts.get("other", {})
    also = f"; keys not recognised: {', '.join(_short(list(other), 5))}" if other else ""
    raise PortError(f"{imp.where()}the checkpoint ({imp.report.release} release, {found}"
                    f"{also}) does not fill {len(missing)} encoder leaves: "
                    + ", ".join(_short(missing, 10)))


def _sequential_modules(tensors: Mapping[str, np.ndarray]):
  """[(index, {parameter name: array})] of an nn.Sequential's state dict, in index order;
  keys that are not ``<int>.<name>`` are left out (and reported unused)."""
  mods: dict[int, dict] = {}
  for k, v in tensors.items():
    m = re.fullmatch(r"(\d+)\.(\w+)", k)
    if m:
      mods.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(v)
  return sorted(mods.items())


def _import_sequential(imp: _Importer, part: str, module: str, tensors: Mapping):
  """Walk a torch head's modules in order: Linear ``L`` -> ``linear{L}``, the BN after it ->
  ``bn{L}``, folding a bias the mecjax Linear lacks into that BN's running mean."""
  linear = -1
  pending = None          # (L, torch key, bias) of a bias to fold into bn{L}
  for idx, mod in _sequential_modules(tensors):
    if "weight" in mod and mod["weight"].ndim == 2:                   # Linear
      if pending is not None:
        _unfoldable(imp, module, *pending)
      linear += 1
      kpath = (module, f"linear{linear}", "dense", "kernel")
      bpath = (module, f"linear{linear}", "dense", "bias")
      if not imp.has("params", kpath):
        continue                                                      # reported unused
      value = imp.take(part, f"{idx}.weight", "params", kpath, np.transpose)
      if value is None:                      # a mismatch (reported); its bias goes with it
        imp.used.add((part, f"{idx}.bias"))
        continue
      imp.put("params", kpath, value)
      if "bias" in mod and imp.has("params", bpath):
        value = imp.take(part, f"{idx}.bias", "params", bpath)
        if value is not None:
          imp.put("params", bpath, value)
      elif "bias" in mod:
        imp.used.add((part, f"{idx}.bias"))
        pending = (linear, imp.key(part, f"{idx}.bias"), mod["bias"])
      elif imp.has("params", bpath):
        imp.put("params", bpath, np.zeros_like(imp.flat["params"][bpath]),
                f"zeros (the torch Linear {imp.key(part, str(idx))!r} has no bias)")
    elif "running_mean" in mod and linear >= 0:                       # BN of Linear L
      bn = (module, f"bn{linear}")
      if not imp.has("batch_stats", bn + ("mean",)):
        continue                                                      # reported unused
      _import_bn(imp, part, idx, mod, bn, pending)
      pending = None
  if pending is not None:
    _unfoldable(imp, module, *pending)


def _import_bn(imp: _Importer, part: str, idx: int, mod: Mapping, bn: tuple, pending):
  mpath = bn + ("mean",)
  mean = imp.take(part, f"{idx}.running_mean", "batch_stats", mpath)
  if mean is not None:
    note = None
    if pending is not None:
      _, bkey, bias = pending
      if bias.shape != mean.shape:
        imp.mismatches.append(f"torch key {bkey!r} has shape {tuple(bias.shape)}, folded into "
                              f"flax path {_fpath(mpath)!r} of shape {tuple(mean.shape)}")
      else:
        mean = mean.astype(np.float32) - bias.astype(np.float32)
        note = f"running mean minus the bias {bkey!r} (folded: the BN cancels it)"
    imp.put("batch_stats", mpath, mean, note)
  if "running_var" in mod and imp.has("batch_stats", bn + ("var",)):
    value = imp.take(part, f"{idx}.running_var", "batch_stats", bn + ("var",))
    if value is not None:
      imp.put("batch_stats", bn + ("var",), value)
  for leaf, name in _BN_PARAMS.items():
    path, key = bn + (leaf,), f"{idx}.{name}"
    trivial = 1.0 if leaf == "scale" else 0.0
    if imp.has("params", path) and name in mod:
      value = imp.take(part, key, "params", path)
      if value is not None:
        imp.put("params", path, value)
    elif imp.has("params", path):
      imp.put("params", path, np.full_like(imp.flat["params"][path], trivial),
              f"{trivial:g} (the torch BN {imp.key(part, str(idx))!r} has affine=False)")
    elif name in mod:
      imp.used.add((part, key))
      if not np.all(mod[name] == trivial):
        raise PortError(
            f"{imp.where()}torch key {imp.key(part, key)!r}: the BN has a learned affine, but "
            f"flax path {_fpath(bn)!r} has no {leaf} (out_bn='no_affine'?): set "
            "out_bn='affine', or heads=False (config.init.heads)")


def _unfoldable(imp: _Importer, module: str, linear: int, bkey: str, bias: np.ndarray):
  imp.check(_HEAD_HINT)        # a shape mismatch explains more than a bias out of place
  raise PortError(
      f"{imp.where()}torch key {bkey!r} (shape {tuple(bias.shape)}): flax path "
      f"'{module}/linear{linear}/dense' has no bias and no BN follows it to fold the bias "
      "into: give that Linear a bias (out_bias=True / hidden_bias=True), or heads=False "
      "(config.init.heads)")


# ----------------------------------------------------------------------------- export


def encoder_to_torch(params_encoder: Mapping, batch_stats_encoder: Mapping
                     ) -> dict[str, np.ndarray]:
  """A mecjax ResNet's params / batch_stats as a torchvision state dict (without ``fc``):
  kernels HWIO -> OIHW, BN scale, bias, mean, var -> weight, bias, running_mean,
  running_var, and ``num_batches_tracked`` (an int64 0-d array, 0) for each BN, as
  torchvision's state dict has it; keys in the network's module order. ``import_into`` of
  the result gives back the same leaves, bit for bit."""
  modules: dict[tuple, dict[str, Any]] = {}
  for path, value in list(_flatten(params_encoder).items()) + \
      list(_flatten(batch_stats_encoder).items()):
    modules.setdefault(path[:-1], {})[path[-1]] = value
  order = ("kernel", "scale", "bias", "mean", "var")
  out: dict[str, np.ndarray] = {}
  for mpath, leaves in modules.items():
    for leaf in sorted(leaves, key=lambda n: order.index(n) if n in order else len(order)):
      key = _encoder_key(mpath, leaf)
      if key is None:
        raise PortError(f"encoder_to_torch: flax path {_fpath(mpath + (leaf,))!r} has no "
                        "torchvision counterpart")
      value = np.asarray(leaves[leaf])
      out[key] = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1))) \
          if leaf == "kernel" else np.array(value)
    if "mean" in leaves:
      prefix = ".".join(_torch_module(n) for n in mpath)
      out[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)
  return out


def heads_to_torch(params_head: Mapping, batch_stats_head: Mapping | None = None
                   ) -> dict[str, np.ndarray]:
  """A mecjax head as torch keys relative to the head. An ``MLPHead`` as the releases'
  ``nn.Sequential``: ``linear{L}`` -> ``{3L}.weight`` ``(out, in)`` (and ``.bias``),
  ``bn{L}`` -> ``{3L+1}.weight, .bias, .running_mean, .running_var,
  .num_batches_tracked`` (the ReLUs hold the other indices). SwAV's prototypes
  (``params["prototypes"]``, ``(d, K)``) as ``{"weight": (K, d)}``, the release's
  ``prototypes.weight``. ``import_into`` of the result gives back the same leaves."""
  if "prototypes" in params_head and not isinstance(params_head["prototypes"], Mapping):
    return {"weight": np.ascontiguousarray(np.asarray(params_head["prototypes"]).T)}
  stats = batch_stats_head or {}
  out: dict[str, np.ndarray] = {}
  layers = sorted(int(m.group(1)) for k in params_head
                  if (m := re.fullmatch(r"linear(\d+)", k)))
  for i in layers:
    dense = params_head[f"linear{i}"]["dense"]
    out[f"{3 * i}.weight"] = np.ascontiguousarray(np.asarray(dense["kernel"]).T)
    if "bias" in dense:
      out[f"{3 * i}.bias"] = np.array(dense["bias"])
    if f"bn{i}" not in stats:
      continue
    bn_params = params_head.get(f"bn{i}", {})
    for leaf, name in _BN_PARAMS.items():
      if leaf in bn_params:
        out[f"{3 * i + 1}.{name}"] = np.array(bn_params[leaf])
    for leaf, name in _BN_STATS.items():
      out[f"{3 * i + 1}.{name}"] = np.array(stats[f"bn{i}"][leaf])
    out[f"{3 * i + 1}.num_batches_tracked"] = np.array(0, np.int64)
  return out


__all__ = ["ImportReport", "PARTS", "Parts", "PortError", "StateDict", "encoder_to_torch",
           "heads_to_torch", "import_into", "load_state_dict", "split_release"]
