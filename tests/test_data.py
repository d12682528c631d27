"""Sources, the grain pipeline and augmentation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, tar_tree, write_image_tree
from mecjax import configlib, parallel
from mecjax.data import augment, host_ops, pipeline
from mecjax.data.sources import (ArraySource, DataError, LocalImages, balanced_subset,
                                 load_split, subset)


def data_cfg(path, **kw):
  c = ml_collections.ConfigDict(configlib.base().data.to_dict())
  c.path = str(path)
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("tree")
  return write_image_tree(root, {"train": 6, "val": 2}, size=20, classes=CLASSES[:3])


@pytest.mark.parametrize("form", ["folder", "tar", "targz", "top_folder"])
def test_local_layouts(tmp_path, tree, form):
  if form == "folder":
    path = tree
  elif form == "top_folder":
    top = tmp_path / "wrap"
    write_image_tree(top, {"train": 6, "val": 2}, size=20, top="imagenet",
                     classes=CLASSES[:3])
    path = tar_tree(top, tmp_path / "a.tar.gz", compress=True)
  else:
    path = tar_tree(tree, tmp_path / f"a.{form}", compress=form == "targz")
  src = load_split(data_cfg(path), "train", None, in_memory=True, size=16)
  assert len(src) == 18 and src.classes == list(CLASSES[:3])
  np.testing.assert_array_equal(src.labels, np.repeat([0, 1, 2], 6))
  assert src.images.shape == (18, 16, 16, 3) and src.images.dtype == np.uint8
  lazy = load_split(data_cfg(path), "val", None, in_memory=False, size=16)
  ex = lazy[5]
  assert ex["image"].shape == (20, 20, 3) and ex["label"] == 2 and ex["index"] == 5


def test_the_splits_of_one_archive_share_one_reading_until_the_file_changes(tmp_path, tree,
                                                                           monkeypatch):
  from mecjax.data import sources
  path = tar_tree(tree, tmp_path / "a.tar.gz", compress=True)
  opened = []
  real = sources.LocalImages.__init__
  monkeypatch.setattr(sources.LocalImages, "__init__",
                      lambda self, p: (opened.append(p), real(self, p))[1])
  train = load_split(data_cfg(path), "train", None, in_memory=True, size=16)
  val = load_split(data_cfg(path), "val", None, in_memory=False, size=16)
  assert len(opened) == 1 and len(train) == 18 and len(val) == 6
  # Rewritten (another size or time stamp): read again, and the new contents are seen.
  small = write_image_tree(tmp_path / "small", {"train": 2, "val": 1}, size=20,
                           classes=CLASSES[:3])
  tar_tree(small, path, compress=True)
  assert len(load_split(data_cfg(path), "train", None, in_memory=True, size=16)) == 6
  assert len(opened) == 2


def test_unlabelled_folder(tmp_path):
  for i in range(5):
    (tmp_path / "train").mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(tmp_path / "train" / f"{i}.png")
  src = load_split(data_cfg(tmp_path), "train", None, True, 8)
  assert len(src) == 5 and src.classes == [] and np.all(src.labels == -1)


def test_missing_path_and_split_are_named(tmp_path, tree):
  with pytest.raises(DataError, match="does not exist"):
    LocalImages(str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=r"no split 'test'.*\['train', 'val'\]"):
    load_split(data_cfg(tree), "test", None, True, 16)
  (tmp_path / "x.txt").write_text("not an archive")
  with pytest.raises(DataError, match="neither a folder nor a tar"):
    LocalImages(str(tmp_path / "x.txt"))


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
  write_image_tree(tmp_path, {"train": 4}, size=8, classes=CLASSES[:2])
  (tmp_path / "train" / CLASSES[1] / "broken.jpg").write_bytes(b"not a jpeg")
  src = load_split(data_cfg(tmp_path), "train", None, True, 8)
  assert len(src) == 8 and src.skipped == 1
  assert "broken.jpg" in caplog.text
  lazy = load_split(data_cfg(tmp_path), "train", None, False, 8)
  broken = lazy.names.index(f"train/{CLASSES[1]}/broken.jpg")
  ex = lazy[broken]  # replaced by the next readable image, deterministically
  assert ex["image"].shape == (8, 8, 3) and lazy.skipped == 1


def test_balanced_subset_is_deterministic_and_balanced():
  labels = np.repeat(np.arange(4), [50, 30, 20, 10])
  keep = balanced_subset(labels, 40)
  np.testing.assert_array_equal(keep, balanced_subset(labels, 40))
  np.testing.assert_array_equal(np.bincount(labels[keep]), [10, 10, 10, 10])
  assert len(subset(ArraySource(np.zeros((110, 2, 2, 3), np.uint8), labels), 12)) == 12


def _input(n=50, batch=8, seed=0, rows=None, steps=20):
  src = ArraySource(np.zeros((n, 2, 2, 3), np.uint8), np.arange(n) % 5)
  mesh = parallel.make_mesh()
  return pipeline.TrainInput(src, global_batch=batch, seed=seed, mesh=mesh, total_steps=steps,
                             threads=2, rows=rows)


def test_train_order_is_a_seeded_permutation_per_epoch_with_drop_last():
  it = _input()
  assert it.steps_per_epoch == 6
  epochs = [np.concatenate([it.next_local()["index"] for _ in range(6)]) for _ in range(2)]
  for e in epochs:
    assert len(e) == 48 and len(set(e.tolist())) == 48   # no repeats; 2 dropped
  assert not np.array_equal(epochs[0], epochs[1])          # reshuffled each epoch
  again = _input()
  np.testing.assert_array_equal(again.next_local()["index"], epochs[0][:8])
  assert not np.array_equal(_input(seed=1).next_local()["index"], epochs[0][:8])


def test_processes_read_disjoint_rows_of_the_same_global_batch():
  whole = _input()
  halves = [_input(rows=(0, 4)), _input(rows=(4, 4))]
  for _ in range(8):
    want = whole.next_local()["index"]
    got = np.concatenate([h.next_local()["index"] for h in halves])
    np.testing.assert_array_equal(got, want)


def test_resume_from_iterator_state():
  it = _input()
  for _ in range(5):
    it.next_local()
  state = it.get_state()
  rest = [it.next_local()["index"] for _ in range(4)]
  fresh = _input()
  fresh.set_state(state)
  for want in rest:
    np.testing.assert_array_equal(fresh.next_local()["index"], want)


def test_global_batch_assembly_over_8_devices():
  it = _input(batch=16)
  batch = next(it)
  assert batch["image"].shape == (16, 2, 2, 3)
  assert len(batch["index"].sharding.device_set) == jax.device_count() == 8


def test_eval_batches_cover_every_image_once_and_pad():
  src = ArraySource(np.arange(21)[:, None, None, None].repeat(3, -1).astype(np.uint8)
                    * np.ones((1, 2, 2, 3), np.uint8), np.arange(21) % 3)
  batches = list(pipeline.eval_batches(src, global_batch=8, mesh=parallel.make_mesh(),
                                       threads=2))
  assert len(batches) == 3
  valid = np.concatenate([np.asarray(b["valid"]) for b in batches])
  firsts = np.concatenate([np.asarray(b["image"])[:, 0, 0, 0] for b in batches])
  assert valid.sum() == 21 and not valid[21:].any()
  np.testing.assert_array_equal(firsts[valid], np.arange(21))


# ----------------------------------------------------------------------- augmentation


def recipe(**kw):
  cfg = configlib.base().aug
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.update(kw)
  return augment.get_recipe(cfg, 16, seed=0)


@pytest.mark.slow
def test_views_depend_on_seed_step_and_index_only():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  key = jax.random.key(3)
  r = recipe()
  full = r.views(jnp.asarray(images), jnp.arange(10, 16), 7, key)
  # The same samples in another order, in a smaller batch: the same views.
  order = np.array([4, 1, 3])
  part = r.views(jnp.asarray(images[order]), jnp.asarray(10 + order), 7, key)
  for f, p in zip(full, part):
    np.testing.assert_allclose(np.asarray(f)[order], np.asarray(p), rtol=1e-6, atol=1e-6)
  other_step = r.views(jnp.asarray(images), jnp.arange(10, 16), 8, key)
  assert not np.allclose(np.asarray(full[0]), np.asarray(other_step[0]))
  assert len(full) == 2 and full[0].shape == (6, 16, 16, 3)


def test_each_view_takes_its_own_blur_and_solarize_probability():
  # The views of a group run through the colour ops as one vmapped program: view 0 must be
  # solarized (p=1) and not blurred (p=0), view 1 blurred (p=1) and not solarized (p=0).
  images = jnp.asarray(np.random.default_rng(4).integers(0, 256, (4, 16, 16, 3), np.uint8))
  index, step, key = jnp.arange(4), 3, jax.random.key(1)
  r = recipe(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0, 1.0),
             solarize_prob=(1.0, 0.0))
  views = [np.asarray(v) for v in r.views(images, index, step, key)]
  keys = augment.sample_keys(key, step, index, 5 * 2 + 1)
  crops = np.asarray(r.crops(keys[:, -1], None, images)[0])
  unnorm = lambda v: v * np.asarray(r.cfg.std) + np.asarray(r.cfg.mean)
  np.testing.assert_allclose(unnorm(views[0]),
                             np.where(crops[0] < 128 / 255, crops[0], 1 - crops[0]), atol=1e-5)
  blurred = np.asarray(augment.random_blur(keys[:, 7], jnp.asarray(crops[1]), 1.0))
  np.testing.assert_allclose(unnorm(views[1]), blurred, atol=1e-5)
  assert np.abs(blurred - crops[1]).max() > 0.05


def test_images_stored_larger_than_the_network_input():
  # data.stored_size: crops come from the 32x32 originals, eval images are resized on device.
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8))
  r = recipe(jitter_prob=0.0, grayscale_prob=0.0, solarize_prob=(0.0, 0.0))
  views = r.views(images, jnp.arange(4), 0, jax.random.key(0))
  assert [v.shape for v in views] == [(4, 16, 16, 3)] * 2
  ev = np.asarray(r.eval_view(images))
  # A 2x antialiased linear downscale (as PIL's bilinear reduce): a tent of half-width 2 input
  # pixels, weights (1, 3, 3, 1) / 8 around each output pixel, renormalised at the edges.
  w = np.maximum(0, 1 - np.abs(np.arange(32)[None, :] + 0.5 - (2 * np.arange(16)[:, None] + 1))
                 / 2)
  w /= w.sum(1, keepdims=True)
  small = np.einsum("ih,jw,nhwc->nijc", w, w, np.asarray(images, np.float64) / 255)
  want = (small - np.asarray(r.cfg.mean)) / np.asarray(r.cfg.std)
  np.testing.assert_allclose(ev, want, rtol=1e-4, atol=1e-4)


def test_crop_boxes_follow_torchvision_bounds():
  keys = jax.random.split(jax.random.key(0), 2000)
  top, left, h, w = jax.vmap(lambda k: augment.crop_box(k, 32, 32, (0.2, 1.0)))(keys)
  top, left, h, w = (np.asarray(x) for x in (top, left, h, w))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 32).all() and (left + w <= 32).all()
  area = h * w / 1024
  assert area.min() >= 0.15 and area.max() <= 1.0     # rounding widens 0.2 slightly
  ratio = w / h
  assert ratio.min() >= 0.65 and ratio.max() <= 1.5
  assert area.mean() == pytest.approx(0.58, abs=0.05)   # E[U(0.2, 1)] minus rejections


def test_crop_resize_matches_pil_bilinear():
  img = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  for box in [(4, 6, 16, 20), (3, 2, 25, 30), (0, 0, 32, 32)]:
    t, l, h, w = box
    got = np.asarray(augment.crop_resize(jnp.asarray(img, jnp.float32),
                                         tuple(jnp.float32(v) for v in box), 32))
    want = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR,
                                                  box=(l, t, l + w, t + h)), np.float32)
    assert np.abs(got - want).max() <= 1.0


def test_colour_ops():
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 8, 8, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 4)
  np.testing.assert_allclose(np.asarray(augment.color_jitter(keys, x, (0.4, 0.4, 0.2, 0.1),
                                                             0.0)), np.asarray(x), atol=1e-6)
  jittered = np.asarray(augment.color_jitter(keys, x, (0.4, 0.4, 0.2, 0.1), 1.0))
  assert not np.allclose(jittered, np.asarray(x)) and jittered.min() >= 0 and jittered.max() <= 1
  gray = np.asarray(augment.random_grayscale(keys, x, 1.0))
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
  sol = np.asarray(augment.random_solarize(keys, x, 1.0))
  xn = np.asarray(x)
  np.testing.assert_allclose(sol, np.where(xn < 128 / 255, xn, 1 - xn), atol=1e-6)
  blurred = np.asarray(augment.random_blur(keys, x, 1.0))
  assert blurred.std() < xn.std()


def test_host_crop_recipe_and_eval_transform():
  r = recipe(name="mocov3", blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))
  image = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  out = r.host_transform()({"image": image, "label": 1, "index": 4}, 2)
  again = r.host_transform()({"image": image, "label": 1, "index": 4}, 2)
  assert out["image"].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(out["image"], again["image"])
  assert r.eval_transform()(image).shape == (16, 16, 3)
  views = r.views(jnp.asarray(out["image"][None]), jnp.array([4]), 2, jax.random.key(0))
  assert [v.shape for v in views] == [(1, 16, 16, 3)] * 2
  assert host_ops.resize_center_crop(image, 32).shape == (32, 32, 3)


def test_tfds_source_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = ml_collections.ConfigDict(configlib.base().data.to_dict())
  with tfds.testing.mock_data(num_examples=30):
    src = load_split(cfg, "train", 20, in_memory=True, size=32)
  assert len(src) == 20 and src.images.shape == (20, 32, 32, 3)
  assert len(src.classes) == 10 and src.labels.min() >= 0


def _np_gray(x):
  return (0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2])[..., None]


def _np_hue(x, delta):
  import colorsys
  flat = x.reshape(-1, 3)
  out = np.array([colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
                  for h, s, v in (colorsys.rgb_to_hsv(*p) for p in flat)])
  return np.clip(out.reshape(x.shape), 0, 1)


def test_color_jitter_matches_a_per_image_torchvision_reference():
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(6, 5, 5, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(7), 6)
  got = np.asarray(augment.color_jitter(keys, jnp.asarray(x), (0.4, 0.4, 0.2, 0.1), 0.8))
  for i in range(6):
    # The same draws as the implementation, then torchvision's ops one by one, in order.
    kb, kc, ks, kh, kp, kapply = jax.random.split(keys[i], 6)
    f = [float(jax.random.uniform(kb, minval=0.6, maxval=1.4)),
         float(jax.random.uniform(kc, minval=0.6, maxval=1.4)),
         float(jax.random.uniform(ks, minval=0.8, maxval=1.2)),
         float(jax.random.uniform(kh, minval=-0.1, maxval=0.1))]
    y = x[i].astype(np.float64)
    if bool(jax.random.bernoulli(kapply, 0.8)):
      for op in np.asarray(jax.random.permutation(kp, 4)):
        if op == 0:
          y = np.clip(y * f[0], 0, 1)
        elif op == 1:
          y = np.clip(f[1] * y + (1 - f[1]) * _np_gray(y).mean(), 0, 1)
        elif op == 2:
          y = np.clip(f[2] * y + (1 - f[2]) * _np_gray(y), 0, 1)
        else:
          y = _np_hue(y, f[3])
    np.testing.assert_allclose(got[i], y, atol=2e-5)


def test_blur_is_a_separable_gaussian_with_extended_edges():
  rng = np.random.default_rng(5)
  x = rng.uniform(size=(3, 9, 11, 2)).astype(np.float32)
  keys = jax.random.split(jax.random.key(2), 3)
  got = np.asarray(augment.random_blur(keys, jnp.asarray(x), 1.0))
  for i in range(3):
    s = float(jax.random.uniform(jax.random.split(keys[i])[0], minval=0.1, maxval=2.0))
    taps = np.exp(-0.5 * (np.arange(-6, 7) / s) ** 2)
    taps /= taps.sum()
    y = x[i].astype(np.float64)
    for axis in (0, 1):
      n = y.shape[axis]
      padded = np.take(y, np.clip(np.arange(-6, n + 6), 0, n - 1), axis=axis)
      y = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    np.testing.assert_allclose(got[i], y, atol=1e-5)
  assert np.array_equal(np.asarray(augment.random_blur(keys, jnp.asarray(x), 0.0)), x)
