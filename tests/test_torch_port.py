"""mecjax.torch_port: the releases' checkpoints load with features and head outputs equal to
PyTorch's (eval mode), exports round-trip exactly, and bad files are refused by name.

The PyTorch ResNets are built here with torchvision's module names (torchvision itself is not
a dependency), with random weights and random BN running statistics.
"""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_torch

torch = require_torch()
from torch import nn  # noqa: E402

from mecjax import torch_port  # noqa: E402
from mecjax.methods.base import SSLNet  # noqa: E402
from mecjax.methods.swav import Prototypes  # noqa: E402
from mecjax.models import MLPHead, resnet18, resnet50  # noqa: E402
from mecjax.torch_port import PortError  # noqa: E402

IMAGE = 64   # ResNet-50 at 64 px, batch 2: fast on CPU
FEAT = 2048


# ----------------------------------------------------------------- torchvision-layout nets

class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck (stride on the 3x3)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
  def __init__(self, block, layers):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, n in enumerate(layers):
      setattr(self, f"layer{i + 1}", self._make_layer(block, 64 * 2**i, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, 10)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)


def randomize(module: nn.Module, seed: int) -> nn.Module:
  """Random weights, biases and BN running statistics (eval-mode BN non-trivial)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.Conv2d):
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
      elif isinstance(m, nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g))     # large: folds matter
      elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        if m.affine:
          m.weight.copy_(0.5 + torch.rand(n, generator=g))
          m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
  return module.eval()


def torch_resnet50(seed=0):
  return randomize(ResNet(Bottleneck, [3, 4, 6, 3]), seed)


def torch_resnet18(seed=0):
  return randomize(ResNet(BasicBlock, [2, 2, 2, 2]), seed)


# Release heads, small widths (the releases' structure).
def vicreg_projector(h=32, out=24):
  return nn.Sequential(nn.Linear(FEAT, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, h),
                       nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, out, bias=False))


def simsiam_fc(h=32, out=24):
  return nn.Sequential(nn.Linear(FEAT, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                       nn.Linear(h, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                       nn.Linear(h, out), nn.BatchNorm1d(out, affine=False))


def simsiam_predictor(out=24, h=16):
  return nn.Sequential(nn.Linear(out, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                       nn.Linear(h, out))


def swav_head(h=32, out=24):
  return nn.Sequential(nn.Linear(FEAT, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, out))


# ----------------------------------------------------------------- mecjax side


@pytest.fixture(scope="module")
def mecjax50():
  """(encoder module, {"encoder": params}, {"encoder": batch_stats}, jitted eval features)."""
  enc = resnet50()
  v = jax.jit(lambda k: enc.init(k, jnp.zeros((2, IMAGE, IMAGE, 3)), train=True))(
      jax.random.key(0))
  feats = jax.jit(lambda p, s, x: enc.apply({"params": p, "batch_stats": s}, x, train=False))
  return enc, {"encoder": v["params"]}, {"encoder": v["batch_stats"]}, feats


@pytest.fixture(scope="module")
def images():
  x = np.random.default_rng(0).normal(size=(2, 3, IMAGE, IMAGE)).astype(np.float32)
  return x, np.transpose(x, (0, 2, 3, 1))          # NCHW (torch), NHWC (mecjax)


@pytest.fixture(scope="module")
def net50(images):
  model = torch_resnet50()
  with torch.no_grad():
    ref = model.features(torch.from_numpy(images[0])).numpy()
  return model, ref


def init_head(head, in_dim, seed=1):
  v = head.init(jax.random.key(seed), jnp.zeros((4, in_dim)), train=True)
  return v["params"], v.get("batch_stats", {})


def close(actual, expected, rel=1e-4):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.abs(expected).max()), 1e-6)
  np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


def sd(module: nn.Module, prefix: str = "") -> dict:
  return {prefix + k: v for k, v in module.state_dict().items()}


def optimizer_state(model):
  return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()


def load(path, params, stats, heads=True):
  state = torch_port.load_state_dict(path)
  parts = torch_port.split_release(state)
  return parts, *torch_port.import_into(params, stats, parts, heads=heads)


def check_features(mecjax50, params, stats, images, ref):
  _, _, _, feats = mecjax50
  close(feats(params["encoder"], stats["encoder"], images[1]), ref)


# ----------------------------------------------------------------- releases


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True])
def test_torchvision_state_dict(tmp_path, mecjax50, images, net50, ddp):
  model, ref = net50
  path = tmp_path / "resnet50.pth"
  torch.save(sd(model, "module." if ddp else ""), path)
  parts, params, stats, report = load(path, mecjax50[1], mecjax50[2])
  assert parts.release == "torchvision" and parts.ddp == ddp
  check_features(mecjax50, params, stats, images, ref)
  assert not report.unused and not report.unfilled
  prefix = "module." if ddp else ""
  assert {prefix + "fc.weight", prefix + "fc.bias"} <= set(report.ignored)
  assert sum(k.endswith("num_batches_tracked") for k in report.ignored) == 53
  assert "fc.weight" in report.summary() and "53 num_batches_tracked" in report.summary()
  # New trees: the inputs are untouched, the outputs float32 numpy.
  leaf = params["encoder"]["conv1"]["kernel"]
  assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
  assert not np.array_equal(leaf, np.asarray(mecjax50[1]["encoder"]["conv1"]["kernel"]))


@pytest.mark.slow
def test_simsiam_checkpoint(tmp_path, mecjax50, images, net50):
  model, ref = net50
  fc, pred = randomize(simsiam_fc(), 1), randomize(simsiam_predictor(), 2)
  state = {**sd(model, "module.encoder."), **sd(fc, "module.encoder.fc."),
           **sd(pred, "module.predictor.")}
  state = {k: v for k, v in state.items() if not k.startswith("module.encoder.fc.weight")
           and not k.startswith("module.encoder.fc.bias")}   # SimSiam's fc IS the projector
  path = tmp_path / "checkpoint_0099.pth.tar"
  torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state,
              "optimizer": optimizer_state(model)}, path)
  proj_head = MLPHead(hidden=(32, 32), out_dim=24, out_bn="no_affine")
  pred_head = MLPHead(hidden=(16,), out_dim=24)
  pp, ps = init_head(proj_head, FEAT)
  qp, qs = init_head(pred_head, 24, seed=2)
  parts, params, stats, report = load(
      path, {**mecjax50[1], "projector": pp, "predictor": qp},
      {**mecjax50[2], "projector": ps, "predictor": qs})
  assert parts.release == "simsiam" and parts.ddp
  assert not report.unused and not report.unfilled, report.summary()
  assert "projector/bn2/mean" in report.summary()          # fc.6's bias folded
  check_features(mecjax50, params, stats, images, ref)

  f = np.random.default_rng(1).normal(size=(4, FEAT)).astype(np.float32)
  with torch.no_grad():
    z = fc(torch.from_numpy(f))
    p = pred(z)
  z_jax = proj_head.apply({"params": params["projector"], "batch_stats": stats["projector"]},
                          f, train=False)
  close(z_jax, z.numpy())
  close(pred_head.apply({"params": params["predictor"], "batch_stats": stats["predictor"]},
                        z.numpy(), train=False), p.numpy())


@pytest.mark.slow
def test_vicreg_full_checkpoint(tmp_path, mecjax50, images, net50):
  model, ref = net50
  proj = randomize(vicreg_projector(), 3)
  path = tmp_path / "vicreg.pth"
  torch.save({"epoch": 99, "model": {**sd(model, "module.backbone."),
                                     **sd(proj, "module.projector.")},
              "optimizer": optimizer_state(model)}, path)
  head = MLPHead(hidden=(32, 32), out_dim=24, out_bias=False)
  hp, hs = init_head(head, FEAT)
  parts, params, stats, report = load(path, {**mecjax50[1], "projector": hp},
                                      {**mecjax50[2], "projector": hs})
  assert parts.release == "vicreg"
  assert not report.unused and not report.unfilled, report.summary()
  assert sum("folded" in n for n in report.notes) == 2       # both hidden biases
  check_features(mecjax50, params, stats, images, ref)
  f = np.random.default_rng(2).normal(size=(4, FEAT)).astype(np.float32)
  with torch.no_grad():
    z = proj(torch.from_numpy(f)).numpy()
  variables = {"params": params["projector"], "batch_stats": stats["projector"]}
  close(head.apply(variables, f, train=False), z)

  # The fold is exact in train mode too: same output, running means shifted by the bias.
  proj.train()
  with torch.no_grad():
    z_train = proj(torch.from_numpy(f)).numpy()
  out, mutated = head.apply(variables, f, train=True, mutable=["batch_stats"])
  close(out, z_train)
  close(mutated["batch_stats"]["bn0"]["mean"],
        proj[1].running_mean.numpy() - proj[0].bias.detach().numpy())
  close(mutated["batch_stats"]["bn1"]["var"], proj[4].running_var.numpy())


@pytest.mark.slow
def test_swav_checkpoint_and_ssl_net(tmp_path, mecjax50, images, net50):
  model, ref = net50
  head, protos = randomize(swav_head(), 4), randomize(nn.Linear(24, 40, bias=False), 5)
  path = tmp_path / "swav_800ep_pretrain.pth.tar"
  torch.save({"epoch": 800, "state_dict": {**sd(model, "module."),
                                           **sd(head, "module.projection_head."),
                                           **sd(protos, "module.prototypes.")},
              "optimizer": optimizer_state(model)}, path)
  proj_head = MLPHead(hidden=(32,), out_dim=24)
  net = SSLNet(encoder=mecjax50[0], projector=proj_head, predictor=Prototypes(40))
  hp, hs = init_head(proj_head, FEAT)
  pp = Prototypes(40).init(jax.random.key(3), jnp.zeros((4, 24)))["params"]
  parts, params, stats, report = load(path, {**mecjax50[1], "projector": hp, "predictor": pp},
                                      {**mecjax50[2], "projector": hs})
  assert parts.release == "swav"
  assert not report.unused and not report.unfilled, report.summary()
  assert params["predictor"]["prototypes"].shape == (24, 40)
  # The whole SSLNet tree, eval mode: features, embedding and prototype scores.
  out = net.apply({"params": params, "batch_stats": stats}, images[1], train=False)
  with torch.no_grad():
    z = head(torch.from_numpy(ref))
    scores = protos(nn.functional.normalize(z, dim=1))
  close(out["features"], ref)
  close(out["embedding"], z.numpy())
  close(out["prediction"], scores.numpy())


@pytest.mark.slow
def test_vicreg_resnet50_pth_into_a_net_with_a_projector(tmp_path, mecjax50, images, net50):
  """VICReg's resnet50.pth: the backbone alone (no fc); the projector is reported left at
  initialisation, not an error."""
  model, ref = net50
  path = tmp_path / "resnet50.pth"
  torch.save({k: v for k, v in sd(model).items() if not k.startswith("fc.")}, path)
  head = MLPHead(hidden=(32, 32), out_dim=24, out_bias=False)
  hp, hs = init_head(head, FEAT)
  parts, params, stats, report = load(path, {**mecjax50[1], "projector": hp},
                                      {**mecjax50[2], "projector": hs})
  assert parts.release == "torchvision"
  check_features(mecjax50, params, stats, images, ref)
  assert report.unfilled and all(p.startswith("projector/") for p in report.unfilled)
  assert "projector: left at initialisation" in report.summary()
  np.testing.assert_array_equal(params["projector"]["linear0"]["dense"]["kernel"],
                                np.asarray(hp["linear0"]["dense"]["kernel"]))


@pytest.mark.slow
def test_heads_false_leaves_heads(tmp_path, mecjax50, net50):
  model, _ = net50
  proj = randomize(vicreg_projector(), 3)
  path = tmp_path / "vicreg.pth"
  torch.save({"model": {**sd(model, "backbone."), **sd(proj, "projector.")}}, path)
  head = MLPHead(hidden=(32, 32), out_dim=24, out_bias=False)
  hp, hs = init_head(head, FEAT)
  _, params, _, report = load(path, {**mecjax50[1], "projector": hp},
                              {**mecjax50[2], "projector": hs}, heads=False)
  np.testing.assert_array_equal(params["projector"]["linear0"]["dense"]["kernel"],
                                np.asarray(hp["linear0"]["dense"]["kernel"]))
  assert "projector.0.weight" in report.ignored and not report.unused
  assert report.skipped == {"projector": [k for k in report.ignored if k.startswith("proj")]}
  assert "heads not imported (heads=False): projector (" in report.summary()
  assert "projector: left at initialisation" in report.summary()


@pytest.mark.slow
def test_safetensors_loads_the_same(tmp_path, mecjax50, images, net50):
  safetensors_torch = pytest.importorskip("safetensors.torch")
  model, ref = net50
  path = tmp_path / "resnet50.safetensors"
  safetensors_torch.save_file({k: v.contiguous() for k, v in sd(model).items()}, str(path))
  state = torch_port.load_state_dict(path)
  pth = tmp_path / "resnet50.pth"
  torch.save(sd(model), pth)
  reference = torch_port.load_state_dict(pth)
  assert set(state) == set(reference)
  for k in state:
    np.testing.assert_array_equal(state[k], reference[k])
  _, params, stats, _ = load(path, mecjax50[1], mecjax50[2])
  check_features(mecjax50, params, stats, images, ref)


# ----------------------------------------------------------------- export


def test_export_round_trip_resnet50(tmp_path, mecjax50, images, net50):
  model, ref = net50
  original = {k: v.numpy() for k, v in model.state_dict().items()}
  params, stats, _ = torch_port.import_into(mecjax50[1], mecjax50[2],
                                            torch_port.split_release(original))
  exported = torch_port.encoder_to_torch(params["encoder"], stats["encoder"])
  assert set(exported) == {k for k in original if not k.startswith("fc.")}
  for k, v in exported.items():
    assert v.dtype == original[k].dtype and v.shape == original[k].shape, k
    np.testing.assert_array_equal(v, original[k])
  assert exported["bn1.num_batches_tracked"].dtype == np.int64
  assert exported["bn1.num_batches_tracked"].shape == ()
  # And back: the same leaves bit for bit; a fresh torch model loads it with equal features.
  again, again_stats, _ = torch_port.import_into(mecjax50[1], mecjax50[2],
                                                 torch_port.split_release(exported))
  for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((again, again_stats))):
    np.testing.assert_array_equal(a, b)
  fresh = torch_resnet50(seed=7)
  missing, unexpected = fresh.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=False)
  assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
  with torch.no_grad():
    close(fresh.eval().features(torch.from_numpy(images[0])).numpy(), ref)


@pytest.mark.slow
def test_resnet18_round_trip(images):
  model = torch_resnet18(seed=3)
  with torch.no_grad():
    ref = model.features(torch.from_numpy(images[0])).numpy()
  enc = resnet18()
  v = jax.jit(lambda k: enc.init(k, jnp.zeros((2, IMAGE, IMAGE, 3)), train=True))(
      jax.random.key(0))
  original = {f"module.{k}": v.numpy() for k, v in model.state_dict().items()}
  parts = torch_port.split_release(original)
  params, stats, report = torch_port.import_into({"encoder": v["params"]},
                                                 {"encoder": v["batch_stats"]}, parts)
  assert not report.unused and not report.unfilled
  out = jax.jit(lambda p, s, x: enc.apply({"params": p, "batch_stats": s}, x, train=False))(
      params["encoder"], stats["encoder"], images[1])
  close(out, ref)
  exported = torch_port.encoder_to_torch(params["encoder"], stats["encoder"])
  for k, val in exported.items():
    np.testing.assert_array_equal(val, original["module." + k])


def test_heads_to_torch_round_trip():
  head = MLPHead(hidden=(32, 32), out_dim=24, out_bn="no_affine")
  hp, hs = init_head(head, FEAT)
  hs = jax.tree.map(lambda x: x + np.random.default_rng(0).normal(size=x.shape), hs)
  exported = torch_port.heads_to_torch(hp, hs)
  fc = simsiam_fc()
  fc[6] = nn.Linear(32, 24, bias=False)       # mecjax's output Linear has no bias (BN after)
  fc.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()})
  f = np.random.default_rng(1).normal(size=(4, FEAT)).astype(np.float32)
  with torch.no_grad():
    z = fc.eval()(torch.from_numpy(f)).numpy()
  close(head.apply({"params": hp, "batch_stats": hs}, f, train=False), z)
  parts = {"encoder": {}, "projector": exported}
  enc = {"conv1": {"kernel": np.zeros((7, 7, 3, 4), np.float32)}}
  back = torch_port.import_into({"encoder": enc, "projector": hp}, {"projector": hs},
                                {**parts, "encoder": {"conv1.weight": np.zeros((4, 3, 7, 7))}})
  for a, b in zip(jax.tree.leaves((hp, hs)),
                  jax.tree.leaves((back[0]["projector"], back[1]["projector"]))):
    np.testing.assert_array_equal(np.asarray(a, np.float32), b)
  protos = np.random.default_rng(2).normal(size=(24, 40)).astype(np.float32)
  assert torch_port.heads_to_torch({"prototypes": protos})["weight"].shape == (40, 24)


# ----------------------------------------------------------------- refusals


def test_resnet18_into_resnet50_names_the_key(tmp_path, mecjax50):
  path = tmp_path / "r18.pth"
  torch.save(torch_resnet18().state_dict(), path)
  with pytest.raises(PortError) as e:
    load(path, mecjax50[1], mecjax50[2])
  msg = str(e.value)
  assert str(path) in msg
  assert "'layer1.0.conv1.weight' has shape (64, 64, 3, 3)" in msg
  assert "encoder/layer1_0/conv1/kernel" in msg and "(1, 1, 64, 64)" in msg


def test_head_width_mismatch_names_the_key(tmp_path, mecjax50, net50):
  model, _ = net50
  path = tmp_path / "vicreg.pth"
  torch.save({"model": {**sd(model, "backbone."),
                        **sd(randomize(vicreg_projector(), 3), "projector.")}}, path)
  head = MLPHead(hidden=(48, 32), out_dim=24, out_bias=False)
  hp, hs = init_head(head, FEAT)
  with pytest.raises(PortError, match=r"'projector.0.weight' has shape \(32, 2048\).*"
                                      r"projector/linear0/dense/kernel.*\(2048, 48\)"):
    load(path, {**mecjax50[1], "projector": hp}, {**mecjax50[2], "projector": hs})
  # A bias with nowhere to go (VICReg's hidden bias, the config's Linear followed by no BN).
  sd_head = {"0.weight": np.zeros((24, FEAT), np.float32), "0.bias": np.ones(24, np.float32)}
  head = MLPHead(hidden=(), out_dim=24, out_bias=False)
  hp, hs = init_head(head, FEAT)
  parts = torch_port.split_release({**{k: v.numpy() for k, v in model.state_dict().items()},
                                    **{"projector." + k: v for k, v in sd_head.items()}})
  with pytest.raises(PortError, match=r"'projector.0.bias'.*no bias"):
    torch_port.import_into({**mecjax50[1], "projector": hp}, {**mecjax50[2]}, parts)


def test_missing_encoder_keys_are_listed(mecjax50, net50):
  state = {k: v.numpy() for k, v in net50[0].state_dict().items() if not k.startswith("layer4")}
  with pytest.raises(PortError, match=r"does not fill \d+ encoder leaves.*layer4_0"):
    torch_port.import_into(mecjax50[1], mecjax50[2], torch_port.split_release(state))


def test_bad_files_are_refused_by_name(tmp_path, net50):
  good = tmp_path / "good.pth"
  torch.save(net50[0].state_dict(), good)
  data = good.read_bytes()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(data[:len(data) // 2])
  corrupted = tmp_path / "corrupted.pth"
  corrupted.write_bytes(data[:1000] + bytes(len(data) - 1000))
  text = tmp_path / "notes.txt"
  text.write_text("not a checkpoint\n")
  empty = tmp_path / "empty.pth"
  torch.save({"epoch": 3, "arch": "resnet50"}, empty)
  bad_st = tmp_path / "bad.safetensors"
  bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  for path, reason in [(truncated, "torch.load cannot read"), (corrupted, "cannot read"),
                       (text, "not a PyTorch checkpoint"), (empty, "no tensors"),
                       (bad_st, "safetensors cannot read"),
                       (tmp_path / "absent.pth", "no such file")]:
    with pytest.raises(PortError) as e:
      torch_port.load_state_dict(path)
    assert str(path) in str(e.value) and reason in str(e.value), str(e.value)


def _touch(path):   # what an unpickled object would run
  open(path, "w").close()
  return {}


class Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return _touch, (self.marker,)


def test_weights_only_refuses_arbitrary_objects(tmp_path, net50):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": net50[0].state_dict(), "extra": Payload(str(marker))}, path)
  with pytest.raises(PortError, match="refused") as e:
    torch_port.load_state_dict(path)
  assert str(path) in str(e.value)
  assert not marker.exists()
  # The same through a plain pickle (not torch.save's zip): refused too.
  raw = tmp_path / "evil.pkl"
  with open(raw, "wb") as f:
    pickle.dump(Payload(str(marker)), f, protocol=2)
  with pytest.raises(PortError, match="refused.*Unsupported global"):
    torch_port.load_state_dict(raw)
  assert not marker.exists() and os.path.exists(raw)
