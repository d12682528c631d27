"""Every config file and variant loads, names things that exist, and sizes its smoke run."""

import importlib.util

import ml_collections
import pytest

from conftest import REPO
from mecjax import configlib, data, methods, models, train

CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variants(path):
  return [None] + sorted(load(path).VARIANTS)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_variant_loads_and_names_exist(path):
  module = load(path)
  for variant in variants(path):
    c = module.get_config(variant)
    assert isinstance(c, ml_collections.ConfigDict) and c.is_locked
    train.check_names(c)
    assert c.method in methods.METHODS and c.model.name in models.ENCODERS
    assert c.aug.name in data.RECIPES
    assert (c.total_steps is None) != (c.total_epochs is None), "one duration"
    with pytest.raises(AttributeError):
      c.optim.lr = 0.1   # locked: a misspelt key fails at once


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_smoke_variant_is_small_and_checkpoints_before_its_last_step(path):
  c = load(path).get_config("smoke")
  assert c.batch_size % 8 == 0 and c.eval_batch_size % 8 == 0
  assert c.total_steps and c.total_steps <= 20
  assert c.checkpoint.every_steps and c.checkpoint.every_steps < c.total_steps
  assert c.data.max_train_examples and c.data.max_train_examples <= 512


def test_unknown_variant_and_duration_conflicts_are_named():
  module = load(REPO / "configs" / "mec_cifar10.py")
  with pytest.raises(configlib.ConfigError, match="unknown config variant 'smok'"):
    module.get_config("smok")
  c = module.get_config("smoke")
  c.total_epochs = 3.0
  with pytest.raises(configlib.ConfigError, match="both total_steps=12 and total_epochs=3"):
    configlib.duration(c, "total", 10)
  c.total_steps = None
  assert configlib.duration(c, "total", 10) == 30


def test_unknown_override_names_the_dotted_key():
  assert configlib.unknown_override(["--config.optim.lr=1", "--workdir=x"]) == "optim.lr"
  assert configlib.unknown_override(["--config.optim.base_lr=1"]) is None
  msg = configlib.unknown_key_message(configlib.base(), "knn.every_step")
  assert "knn.every_steps" in msg


def test_mec_recipes_match_methods_md():
  cifar = load(REPO / "configs" / "mec_cifar10.py").get_config()
  assert (cifar.model.name, cifar.batch_size, cifar.total_epochs) == ("resnet18_cifar", 512, 600)
  assert (cifar.optim.base_lr, cifar.optim.weight_decay, cifar.optim.momentum) == (0.03, 5e-4, 0.9)
  assert cifar.aug.blur_prob == (0.0, 0.0) and cifar.aug.solarize_prob == (0.0, 0.2)
  imnet = load(REPO / "configs" / "mec_imagenet.py").get_config()
  assert (imnet.model.name, imnet.batch_size, imnet.total_epochs) == ("resnet50", 1024, 100)
  assert optim_lr(imnet) == 2.0 and imnet.optim.weight_decay == 1e-5
  assert imnet.projector.hidden == (2048, 2048) and imnet.projector.out_bn == "no_affine"
  assert imnet.predictor.hidden == (512,) and imnet.predictor.out_dim == 2048
  assert (imnet.mec.eps_sq, imnet.mec.order, imnet.mec.lamda_warmup_factor) == (64.0, 4, 8.0)
  assert imnet.aug.blur_prob == (1.0, 0.1) and imnet.aug.solarize_prob == (0.0, 0.2)
  assert imnet.ema.momentum == 0.996 and imnet.optim.warmup_epochs == 10


def optim_lr(c):
  from mecjax import optim
  return optim.scaled_lr(c.optim.base_lr, c.batch_size)
