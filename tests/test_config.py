"""Every config file and variant loads, names things that exist, and sizes its smoke run."""

import importlib.util
import json
import shutil

import ml_collections
import pytest

from conftest import REPO
from mecjax import configlib, data, methods, models, train

# Every recipe; configs/common.py holds the fragments they share and is no recipe itself.
CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "common.py")


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
    configlib.validate(c)   # per-view tuples match aug.num_global_views, ...
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


# ------------------------------------------------------- recipes and their fragments


def test_configs_read_common_beside_them_from_anywhere(tmp_path, monkeypatch):
  # A copy of configs/ elsewhere, loaded from a third directory: the config must read the
  # common.py beside *it* (here changed, so the value shows which file was read), not the
  # checkout's and not through the working directory or sys.path.
  copy = tmp_path / "elsewhere" / "configs"
  shutil.copytree(REPO / "configs", copy)
  common = copy / "common.py"
  text = common.read_text()
  assert "c.batch_size = 32\n" in text
  common.write_text(text.replace("c.batch_size = 32\n", "c.batch_size = 24\n", 1))
  monkeypatch.chdir(tmp_path)
  assert configlib.load(str(copy / "mec_cifar10.py"), "smoke").batch_size == 24
  assert configlib.load(str(REPO / "configs" / "mec_cifar10.py"), "smoke").batch_size == 32
  # The E2MC config loads its base config by path and both see the same fragments.
  assert load(copy / "e2mc_vicreg_cifar10.py").get_config("smoke").init.workdir == \
      "runs/vicreg_cifar10_smoke"


def test_e2mc_cifar_config_is_the_base_recipe_plus_the_continuation():
  base = load(REPO / "configs" / "swav_cifar10.py").get_config("cpu")
  c = load(REPO / "configs" / "e2mc_swav_cifar10.py").get_config("mmcr")
  assert (c.method, c.model.width, c.projector.out_dim) == ("swav", base.model.width,
                                                            base.projector.out_dim)
  assert c.optim.base_lr == pytest.approx(0.01 * base.optim.base_lr)
  assert (c.total_epochs, c.batch_size, c.init.workdir) == (10, 512, "runs/swav_cifar10_cpu")
  assert (c.regularizer.name, c.regularizer.weight) == ("mmcr", 0.005)
  assert c.e2mc.eps == 2.0 ** -23 and c.swav.queue_start_epochs is None


def test_configlib_holds_no_recipe_fragments():
  for name in ("solo_learn_cifar", "cifar_smoke", "imagenet_data", "e2mc_continuation",
               "E2MC_CIFAR_VARIANTS", "evaluation", "lars_probe"):
    assert not hasattr(configlib, name), name


# ------------------------------------------------------------ method blocks


def test_every_method_block_is_in_the_schema_with_its_defaults():
  c = configlib.base()
  blocks = methods.config_blocks()
  assert {"mec", "music", "barlow_twins", "vicreg", "simclr", "swav", "e2mc", "vc",
          "au"} <= set(blocks)
  for key, defaults in blocks.items():
    assert set(c[key].keys()) == set(defaults), key
  assert (c.mec.eps_sq, c.swav.num_prototypes, c.e2mc.transform) == (64.0, 3000, "sigmoid")


def test_placeholders_of_method_blocks_are_not_shared_between_configs():
  a, b = configlib.base(), configlib.base()
  a.swav.queue_start_steps = 5
  a.mec.adapt_bound = 0.9
  assert b.swav.queue_start_steps is None and b.mec.adapt_bound is None


class _Toy(methods.Method):
  """A method that exists only in this test: registered at runtime, with its own block."""
  name = "toy_method"

  @staticmethod
  def defaults():
    return dict(alpha=0.5, warm_steps=ml_collections.config_dict.placeholder(int))


def test_a_method_registered_at_runtime_brings_its_block(monkeypatch):
  assert "toy_method" not in configlib.base()
  monkeypatch.setitem(methods.METHODS, "toy_method", _Toy)
  c = configlib.base()
  assert c.toy_method.alpha == 0.5 and c.toy_method.warm_steps is None
  c.toy_method.warm_steps = 3
  with pytest.raises(AttributeError):
    c.toy_method.alhpa = 1.0   # locked like every block
  assert configlib.unknown_override(["--config.toy_method.alhpa=1"]) == "toy_method.alhpa"
  msg = configlib.unknown_key_message(c, "toy_method.alhpa")
  assert msg.startswith("config key 'toy_method.alhpa' does not exist")
  assert "toy_method.alpha" in msg and "\n" not in msg


def test_two_owners_of_one_block_and_a_block_over_a_schema_key_are_refused(monkeypatch):
  monkeypatch.setitem(methods.METHODS, "toy_method", _Toy)
  monkeypatch.setitem(methods.REGULARIZERS, "toy_method", _Toy)
  with pytest.raises(ValueError, match="config block 'toy_method' is declared by method _Toy"):
    methods.config_blocks()
  monkeypatch.delitem(methods.REGULARIZERS, "toy_method")
  monkeypatch.setitem(methods.METHODS, "optim", _Toy)
  with pytest.raises(ValueError, match="clashes with the schema's own config.optim"):
    configlib.base()


def test_misspelt_method_key_names_the_nearest():
  assert configlib.unknown_override(["--config.swav.num_prototype=8"]) == "swav.num_prototype"
  msg = configlib.unknown_key_message(configlib.base(), "swav.num_prototype")
  assert "swav.num_prototypes" in msg
  msg = configlib.unknown_key_message(configlib.base(), "mec.eps")
  assert "mec.eps_sq" in msg


# --------------------------------------------------------- number of global views


def test_per_view_tuples_must_match_num_global_views():
  c = configlib.base()
  assert c.aug.num_global_views == 2
  configlib.validate(c)
  c.aug.num_global_views = 3
  with pytest.raises(configlib.ConfigError) as e:
    configlib.validate(c)
  line = str(e.value)
  assert "config.aug.blur_prob=(0.0, 0.0)" in line and "config.aug.solarize_prob" in line
  assert "config.aug.num_global_views=3" in line and "\n" not in line
  c.aug.blur_prob, c.aug.solarize_prob = (0.0, 0.5, 1.0), (0.0, 0.2, 0.0)
  configlib.validate(c)
  assert data.get_recipe(c.aug, 16, seed=0).num_global == 3
  c.aug.solarize_prob = (0.0,)
  with pytest.raises(configlib.ConfigError, match="^config.aug.solarize_prob=.0.0,.: expected"):
    data.get_recipe(c.aug, 16, seed=0)
  c.aug.num_global_views = 0
  with pytest.raises(configlib.ConfigError, match="num_global_views=0: expected an int >= 1"):
    configlib.validate(c)


def test_the_method_reads_num_global_views():
  c = load(REPO / "configs" / "mec_cifar10.py").get_config("smoke")
  run = methods.RunInfo(global_batch=32, steps_per_epoch=8, total_steps=12)
  assert methods.get_method(c, run).num_global == 2
  c.aug.num_global_views, c.aug.blur_prob, c.aug.solarize_prob = 1, (0.0,), (0.0,)
  assert methods.get_method(c, run).num_global == 1


def test_a_run_saved_before_num_global_views_keeps_its_view_count(tmp_path):
  c = load(REPO / "configs" / "linear_cifar10.py").get_config("smoke")
  saved = json.loads(c.to_json_best_effort())
  del saved["aug"]["num_global_views"]
  (tmp_path / configlib.CONFIG_FILE).write_text(json.dumps(saved))
  run = configlib.load_run(str(tmp_path))
  assert run.aug.blur_prob == (0.0,) and run.aug.num_global_views == 1
  configlib.validate(run)
