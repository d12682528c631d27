"""The official MEC train step (xinliu20/MEC, main_pretrain.py + mec/builder.py) in PyTorch,
on a CIFAR ResNet-18, as the reference that benchmarks/bench_step.py times mecjax against.

What one ``MECStep.step(x1, x2, labels)`` does, as the official loop body does it (data
loading and augmentation excluded):

- online: encoder -> projector -> predictor on each view separately (per-view BN batches);
- teacher: a deep copy of encoder + projector, ``no_grad``, train-mode BN (batch statistics),
  on each view;
- loss = -(lamda_inv / 2m) (T(t1, o2) + T(t2, o1)), T the official m x m power-by-power
  order-4 series (``F.normalize`` rows, ``c = p @ z.T / lamda_inv``, ``sum_matrix`` of the
  signed powers, its trace);
- SGD (momentum 0.9, weight decay 5e-4) over the online parameters;
- EMA of the teacher parameters ``t <- m t + (1 - m) o`` (parameters only, as the official
  code; BN buffers of the teacher keep their own running statistics);
- the online linear probe of mecjax's loop: ``Linear(F, 10)`` on the detached online features
  of both views, cross-entropy, its own SGD (lr 0.1, momentum 0.9), so both frameworks do
  the same work.

torchvision is not installable here, so the CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool,
BasicBlocks [2, 2, 2, 2], widths 64w, 128w, 256w, 512w) is written out below with
torchvision's module names and initialisation (kaiming_normal fan_out, zero-init of the last
BN of each block as the official MEC builder asks).

Schedules: lr, ``lamda_inv`` and the EMA momentum are held at one value (the post-warm-up
``lamda_inv``, the base lr, momentum 0.996); mecjax computes its per-step schedules, which
changes no array work. Parameter counts equal mecjax's (7,260,944 online parameters at
width 16, 18,516,032 at width 64).

Heads follow mecjax's MEC config (configs/mec_cifar10.py): projector
Linear(F, H, no bias)-BN-ReLU-Linear(H, D, no bias)-BN(no affine), predictor
Linear(D, P, no bias)-BN-ReLU-Linear(P, D). (The official builder's projector output Linear
has a frozen bias ahead of the affine-free BN; it cancels, mecjax drops it, so here too.)
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, cout, stride=1):
    super().__init__()
    self.conv1 = _conv3x3(cin, cout, stride)
    self.bn1 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(cout, cout)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class CifarResNet18(nn.Module):
  """CIFAR ResNet-18 returning the pooled features (torchvision's ``fc`` input)."""

  def __init__(self, width: float = 1.0, zero_init_residual: bool = True):
    super().__init__()
    base = int(64 * width)
    self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(base)
    self.relu = nn.ReLU(inplace=True)
    layers, cin = [], base
    for i, blocks in enumerate((2, 2, 2, 2)):
      cout = base * 2**i
      stage = []
      for j in range(blocks):
        stage.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
        cin = cout
      layers.append(nn.Sequential(*stage))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.num_features = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if zero_init_residual:
      for m in self.modules():
        if isinstance(m, BasicBlock):
          nn.init.zeros_(m.bn2.weight)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class Encoder(nn.Module):
  """Backbone + projector (what the official code calls ``encoder``; the teacher copies it)."""

  def __init__(self, width, proj_hidden, dim):
    super().__init__()
    self.backbone = CifarResNet18(width)
    f = self.backbone.num_features
    self.projector = nn.Sequential(
        nn.Linear(f, proj_hidden, bias=False), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
        nn.Linear(proj_hidden, dim, bias=False), nn.BatchNorm1d(dim, affine=False))

  def forward(self, x):
    feats = self.backbone(x)
    return feats, self.projector(feats)


def loss_func(p, z, lamda_inv, order=4):
  """The official ``loss_func`` (single process: ``gather_from_all`` is the identity)."""
  p = F.normalize(p)
  z = F.normalize(z)
  c = p @ z.T
  c = c / lamda_inv
  power_matrix = c
  sum_matrix = torch.zeros_like(power_matrix)
  for k in range(1, order + 1):
    if k > 1:
      power_matrix = torch.matmul(power_matrix, c)
    if (k + 1) % 2 == 0:
      sum_matrix += power_matrix / k
    else:
      sum_matrix -= power_matrix / k
  return torch.trace(sum_matrix)


class MECStep:
  """Model, teacher, optimisers and one official training step."""

  def __init__(self, width=1.0, batch=256, proj_hidden=2048, dim=2048, pred_hidden=512,
               eps_sq=0.12 * 2048, lr=0.03, weight_decay=5e-4, momentum=0.9,
               ema_momentum=0.996, num_classes=10, probe_lr=0.1, channels_last=True,
               seed=0):
    torch.manual_seed(seed)
    self.encoder = Encoder(width, proj_hidden, dim)
    self.predictor = nn.Sequential(
        nn.Linear(dim, pred_hidden, bias=False), nn.BatchNorm1d(pred_hidden),
        nn.ReLU(inplace=True), nn.Linear(pred_hidden, dim))
    self.teacher = copy.deepcopy(self.encoder)
    for p in self.teacher.parameters():
      p.requires_grad = False
    self.probe = nn.Linear(self.encoder.backbone.num_features, num_classes)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for mod in (self.encoder, self.predictor, self.teacher, self.probe):
      mod.to(memory_format=self.memory_format)
      mod.train()
    online = list(self.encoder.parameters()) + list(self.predictor.parameters())
    self.optimizer = torch.optim.SGD(online, lr=lr * batch / 256, momentum=momentum,
                                     weight_decay=weight_decay)
    self.probe_optimizer = torch.optim.SGD(self.probe.parameters(), lr=probe_lr, momentum=0.9)
    self.m = batch
    self.lamda_inv = batch * eps_sq / dim    # base value (after the warm-up)
    self.mu = (batch + dim) / 2
    self.ema_momentum = ema_momentum

  def to_input(self, images_nhwc):
    """A (B, H, W, C) float32 array/tensor as this model's input tensor."""
    x = torch.as_tensor(images_nhwc).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=self.memory_format)

  def step(self, x1, x2, labels):
    lamda_inv = self.lamda_inv
    f1, e1 = self.encoder(x1)
    f2, e2 = self.encoder(x2)
    z1, z2 = self.predictor(e1), self.predictor(e2)
    with torch.no_grad():
      p1 = self.teacher(x1)[1]
      p2 = self.teacher(x2)[1]
    mec_loss = (loss_func(p1, z2, lamda_inv) + loss_func(p2, z1, lamda_inv)) * 0.5 / self.m
    loss = -1 * mec_loss * lamda_inv
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():
      m = self.ema_momentum
      for q, k in zip(self.encoder.parameters(), self.teacher.parameters()):
        k.data.mul_(m).add_((1 - m) * q.detach().data)
    # Online linear probe on the detached features of both views.
    feats = torch.cat([f1.detach(), f2.detach()])
    logits = self.probe(feats)
    p_loss = F.cross_entropy(logits, torch.cat([labels, labels]))
    self.probe_optimizer.zero_grad()
    p_loss.backward()
    self.probe_optimizer.step()
    return loss.detach(), p_loss.detach()


def set_threads():
  torch.set_num_threads(os.cpu_count())
  return torch.get_num_threads()
