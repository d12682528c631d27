"""Host input at scale: crops from encoded JPEGs (with and without DCT-domain draft), and
TrainInput with host worker processes (same batches for any count, resume mid-stream)."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mecjax import configlib
from mecjax.data import augment, host_ops, pipeline, sources


def _jpeg(rng, w, h) -> bytes:
  low = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
  im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
  buf = io.BytesIO()
  im.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _recipe(size=24, num_local=0, draft=True):
  c = ml_collections.ConfigDict(configlib.base().aug.to_dict())
  c.name, c.jpeg_draft = "mocov3", draft
  if num_local:
    c.num_local, c.local_size = num_local, 12
  return augment.get_recipe(c, size, seed=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("jpegs")
  rng = np.random.default_rng(0)
  for i in range(40):
    d = root / "train" / f"c{i % 2}"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{i:03d}.jpg").write_bytes(_jpeg(rng, 96 + 8 * (i % 5), 72 + 4 * (i % 3)))
  return root


def _source(folder):
  images = sources.LocalImages(str(folder))
  index = images.split("train")
  return sources.EncodedSource(images, index, np.arange(len(index.names)))


class _Decoded:
  """The same images without ``load``: the pipeline decodes, then crops the array."""

  def __init__(self, src):
    self.src = src

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    return self.src[i]


@pytest.mark.parametrize("num_local", [0, 2])
def test_crops_from_bytes_without_draft_equal_crops_of_the_decoded_array(num_local):
  data = _jpeg(np.random.default_rng(1), 160, 120)
  host = _recipe(num_local=num_local, draft=False).host_transform()
  image = sources.decode_rgb(data)
  want = host({"image": image, "label": 0, "index": 7}, 3)["image"]
  got = host.from_encoded(data, 7, 3)
  if num_local:
    assert got["global"].shape == (2, 24, 24, 3) and got["local"].shape == (2, 12, 12, 3)
    for k in ("global", "local"):
      np.testing.assert_array_equal(got[k], want[k])
  else:
    np.testing.assert_array_equal(got, want)
    # The draws are keyed by the sample index: another index, other crops.
    assert not np.array_equal(host.from_encoded(data, 8, 3), got)


def test_draft_decodes_large_jpegs_at_reduced_scale_with_small_pixel_change():
  data = _jpeg(np.random.default_rng(2), 640, 480)
  specs = [(24, (0.5, 1.0))] * 2   # every crop side >= ~240 = 10x its output: reduce 8
  boxes = [(host_ops.draw_crop(np.random.default_rng([0, 1]), 480, 640, s)[0], n)
           for n, s in specs]
  assert host_ops.draft_factor(boxes[:1]) == 8
  assert host_ops.draft_factor([((0, 0, 47, 300), 24)]) == 1   # 47 < 2 x 24
  assert host_ops.draft_factor([((0, 0, 100, 300), 24)]) == 4
  full = host_ops.crops_from_encoded(data, np.random.default_rng([0, 1]), specs, draft=False)
  draft = host_ops.crops_from_encoded(data, np.random.default_rng([0, 1]), specs, draft=True)
  diff = np.abs(np.stack(full).astype(int) - np.stack(draft).astype(int))
  assert 0 < diff.mean() < 4 and diff.max() < 80
  # Non-JPEG files decode at full size: draft changes nothing.
  buf = io.BytesIO()
  Image.open(io.BytesIO(data)).save(buf, "PNG")
  png = [host_ops.crops_from_encoded(buf.getvalue(), np.random.default_rng([0, 1]), specs, d)
         for d in (False, True)]
  np.testing.assert_array_equal(np.stack(png[0]), np.stack(png[1]))


def _input(src, host, workers=0, steps=6):
  return pipeline.TrainInput(src, global_batch=8, seed=3, mesh=None, total_steps=steps,
                             host_transform=host, threads=2, rows=(0, 8), workers=workers)


def test_encoded_path_gives_the_batches_of_the_decode_then_crop_path(folder):
  src, host = _source(folder), _recipe(draft=False).host_transform()
  a, b = _input(src, host), _input(_Decoded(src), host)
  for _ in range(6):   # more than one epoch (5 steps per epoch)
    x, y = a.next_local(), b.next_local()
    for k in ("image", "label", "index"):
      np.testing.assert_array_equal(x[k], y[k])


def test_state_is_one_index_and_resume_restarts_at_it(folder):
  src, host = _source(folder), _recipe().host_transform()
  it = _input(src, host)
  batches = [it.next_local() for _ in range(5)]
  assert it.get_state() == {"next_index": 5}
  again = _input(src, host)
  again.set_state({"next_index": 2})
  for want in batches[2:]:
    np.testing.assert_array_equal(again.next_local()["image"], want["image"])
  with pytest.raises(sources.DataError, match="next_index"):
    again.set_state({"position": 1})
  with pytest.raises(sources.DataError, match="host_workers"):
    _input(src, host, workers=-1)


def test_local_images_pickle_without_lock_or_descriptors(folder, tmp_path):
  import pickle
  import tarfile
  path = tmp_path / "a.tar"
  with tarfile.open(path, "w") as tf:
    tf.add(folder / "train", arcname="train")
  images = sources.LocalImages(str(path))
  name = images.split("train").names[0]
  data = images.read(name)
  copy = pickle.loads(pickle.dumps(images))
  assert copy._fds == {} and copy.read(name) == data


@pytest.mark.slow
def test_two_workers_give_the_batches_of_none_and_resume_mid_stream(folder):
  src, host = _source(folder), _recipe(num_local=2).host_transform()
  plain = _input(src, host, steps=7)
  want = [plain.next_local() for _ in range(7)]
  mp = _input(src, host, workers=2, steps=7)
  try:
    got = [mp.next_local() for _ in range(4)]
    state = mp.get_state()
    mp.set_state(state)   # restarts the workers at batch 4
    got += [mp.next_local() for _ in range(3)]
  finally:
    mp.close()
  for x, y in zip(got, want):
    for k in ("global", "local"):
      np.testing.assert_array_equal(x["image"][k], y["image"][k])
    np.testing.assert_array_equal(x["index"], y["index"])
  # A state saved with workers resumes without them.
  resumed = _input(src, host, steps=7)
  resumed.set_state({"next_index": 5})
  np.testing.assert_array_equal(resumed.next_local()["index"], want[5]["index"])
