"""Random-access image sources: a local folder or archive, tfds by name, or decoded arrays.

A source has ``len()`` and ``[i] -> {'image': uint8 HxWx3, 'label': int, 'index': i}``,
which is what grain's ``MapDataset.source`` reads. Labels are -1 for unlabelled images.

Local layout (an ImageNet train folder has it): ``<split>/<class>/<image>``, or
``<split>/<image>`` for unlabelled images, possibly under one top-level folder (as in the
shared CIFAR-10 archive ``cifar10/train/airplane/0000.jpg``). Classes are the sorted
sub-folder names. Reading a folder or archive needs neither TensorFlow nor tfds.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import stat
import tarfile
import threading
import zlib
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff",
                    ".ppm")
# A .tar.gz cannot be read at random: above this size we ask for an extracted copy.
MAX_COMPRESSED_ARCHIVE_BYTES = 4 << 30


class DataError(ValueError):
  """Bad data input; the message names the path, split or key and what was expected."""


def decode_rgb(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


# ------------------------------------------------------------------ local file index


@dataclasses.dataclass
class FileIndex:
  """Image paths of one split with their labels (-1 when unlabelled)."""
  names: list[str]
  labels: np.ndarray
  classes: list[str]


def _split_relpaths(relpaths: Sequence[str], split: str, where: str) -> FileIndex:
  """Pick ``split``'s images out of archive-relative paths; tolerate one top folder."""
  parts = [p.strip("/").split("/") for p in relpaths]
  parts = [p for p in parts if p and not any(x.startswith(".") for x in p)]
  tops = {p[0] for p in parts if len(p) > 1}
  offset = 0
  if not any(p[0] == split for p in parts if len(p) > 1):
    if len(tops) == 1 and any(len(p) > 2 and p[1] == split for p in parts):
      offset = 1  # one top-level folder, as cifar10/train/...
    else:
      splits = sorted({p[offset] for p in parts if len(p) > 1})
      if len(tops) == 1:
        splits = sorted({p[1] for p in parts if len(p) > 2}) or splits
      raise DataError(f"no split {split!r} in {where}: found {splits or 'no folders'} "
                      "(expected <split>/<class>/<image>)")
  mine = [p[offset + 1:] for p in parts if len(p) > offset + 1 and p[offset] == split]
  files = [p for p in mine if _is_image(p[-1])]
  if not files:
    raise DataError(f"split {split!r} in {where} holds no images with extensions "
                    f"{IMAGE_EXTENSIONS}")
  labelled = [p for p in files if len(p) >= 2]
  if labelled and len(labelled) != len(files):
    raise DataError(f"split {split!r} in {where} mixes images in class folders with "
                    "loose images: use <split>/<class>/<image> or <split>/<image>")
  prefix = f"{next(iter(tops))}/{split}" if offset else split
  if labelled:
    classes = sorted({p[0] for p in files})
    lookup = {c: i for i, c in enumerate(classes)}
    files.sort(key=lambda p: (lookup[p[0]], "/".join(p)))
    labels = np.array([lookup[p[0]] for p in files], np.int32)
  else:
    classes = []
    files.sort()
    labels = np.full((len(files),), -1, np.int32)
  names = [f"{prefix}/{'/'.join(p)}" for p in files]
  return FileIndex(names, labels, classes)


class LocalImages:
  """Encoded images of a folder, a ``.tar`` (read in place) or a ``.tar.gz`` (held in RAM)."""

  def __init__(self, path: str):
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise DataError(f"config.data.path={path!r} does not exist (expected a folder or a "
                      ".tar/.tar.gz archive of <split>/<class>/<image>)")
    self.path = path
    self._lock = threading.Lock()
    self._fds: dict[int, int] = {}
    self._members: dict[str, tuple[int, int]] = {}   # .tar: name -> (offset, size)
    self._blobs: dict[str, bytes] = {}               # .tar.gz: name -> bytes
    if os.path.isdir(path):
      self.kind = "folder"
      rel = []
      for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        r = os.path.relpath(root, path)
        rel.extend(os.path.join(r, f) if r != "." else f for f in files)
      self.relpaths = rel
    else:
      with open(path, "rb") as f:
        magic = f.read(6)
      compressed = magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
      if not _is_tarfile(path):
        what = "a compressed file that does not hold a readable tar archive (truncated or " \
            "corrupt?)" if compressed else "neither a folder nor a tar archive"
        raise DataError(f"config.data.path={path!r} is {what}")
      self.kind = "targz" if compressed else "tar"
      if compressed and os.path.getsize(path) > MAX_COMPRESSED_ARCHIVE_BYTES:
        raise DataError(f"{path} is a compressed archive of {os.path.getsize(path) >> 30} GiB: "
                        "extract it, or repack it as an uncompressed .tar, to read it in place")
      self._index_archive(path, compressed)
      self.relpaths = list(self._blobs or self._members)

  def _index_archive(self, path: str, compressed: bool) -> None:
    """Every image member of the archive: its bytes (.tar.gz) or place (.tar). A cut-short
    or corrupt archive stops with one line (tarfile would end in EOFError or zlib.error, or
    for an uncompressed .tar silently stop at the cut)."""
    size = os.path.getsize(path)
    try:
      with tarfile.open(path, "r:*" if compressed else "r:") as tf:
        for m in tf:
          if not m.isfile() or not _is_image(m.name):
            continue
          if compressed:
            self._blobs[m.name] = tf.extractfile(m).read()
          else:
            if m.offset_data + m.size > size:
              raise DataError(f"config.data.path={path!r} is truncated: member {m.name!r} "
                              f"needs bytes up to {m.offset_data + m.size}, the file has "
                              f"{size}")
            self._members[m.name] = (m.offset_data, m.size)
        # tarfile ends quietly at a header it cannot read past the first: a cut at a member
        # boundary, or garbage. A whole archive ends with zero blocks after its last member.
        tf.fileobj.seek(tf.offset)
        end = tf.fileobj.read(512)
        if len(end) < 512 or end.count(0) != 512:
          last = f"after member {m.name!r} " if tf.members else ""
          raise DataError(f"config.data.path={path!r} is truncated or corrupt: it ends {last}"
                          "without the end-of-archive blocks (at byte "
                          f"{tf.offset}{' of the decompressed stream' if compressed else ''})")
        while compressed and tf.fileobj.read(1 << 20):   # the gzip CRC check at its end
          pass
    except DataError:
      raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
      kind = "compressed tar archive" if compressed else "tar archive"
      reason = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
      raise DataError(f"config.data.path={path!r}: the {kind} is truncated or corrupt "
                      f"({type(e).__name__}: {reason}); after {len(self._blobs) + len(self._members)} "
                      "images: download or pack it again") from None

  def __getstate__(self):
    # Pickled into grain's worker processes (config.data.host_workers): the lock and the
    # open file descriptors stay behind, each process opens its own.
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_fds")}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock(), _fds={})

  def split(self, split: str) -> FileIndex:
    return _split_relpaths(self.relpaths, split, self.path)

  def read(self, name: str) -> bytes:
    if self.kind == "folder":
      with open(os.path.join(self.path, name), "rb") as f:
        return f.read()
    if self.kind == "targz":
      return self._blobs[name]
    offset, size = self._members[name]
    pid = os.getpid()  # a file descriptor per process: grain workers may fork
    with self._lock:
      fd = self._fds.get(pid)
      if fd is None:
        fd = self._fds[pid] = os.open(self.path, os.O_RDONLY)
    return os.pread(fd, size, offset)


# The archive last opened, by (real path, size, mtime): a run reads its train and its eval
# split (and the evaluators the train split again) from one archive, and indexing an archive
# reads all of it (a .tar.gz is decompressed into RAM), so each split opening its own would
# read the file, and for a .tar.gz hold it in memory, once per split. One entry: a process
# that moves to another archive lets the previous one go. (A .tar.gz's bytes so stay in RAM
# while the process runs, even once its splits are decoded: for CIFAR-10, 170 MB.)
_OPENED: dict[tuple, LocalImages] = {}


def open_images(path: str) -> LocalImages:
  """``LocalImages(path)``, shared with the previous call on the same unchanged file."""
  path = os.path.expanduser(path)
  try:
    st = os.stat(path)
  except OSError:
    return LocalImages(path)   # it names what is missing
  if stat.S_ISDIR(st.st_mode):
    return LocalImages(path)   # a folder is listed, not read: nothing to share
  key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
  if key not in _OPENED:
    _OPENED.clear()
    _OPENED[key] = LocalImages(path)
  return _OPENED[key]


def _is_tarfile(path: str) -> bool:
  try:
    return tarfile.is_tarfile(path)
  except (OSError, EOFError, zlib.error):
    return False


# --------------------------------------------------------------------------- sources


def balanced_subset(labels: np.ndarray, n: int | None) -> np.ndarray:
  """Indices of a deterministic class-balanced subset of size ``n`` (all if None)."""
  total = len(labels)
  if n is None or n >= total:
    return np.arange(total)
  if (labels < 0).all():
    return np.linspace(0, total, n, endpoint=False).astype(np.int64)
  # Round-robin over classes: rank within class first, then class.
  order = np.lexsort((labels, _rank_within(labels)))
  return np.sort(order[:n])


def _rank_within(labels: np.ndarray) -> np.ndarray:
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    rank[where] = np.arange(len(where))
  return rank


class EncodedSource:
  """Lazily decoded images of a local split (large images: decode in the pipeline).

  An image that cannot be decoded is replaced by the next readable one (deterministically)
  and counted in ``skipped``; training goes on.
  """

  def __init__(self, images: LocalImages, index: FileIndex, keep: np.ndarray):
    self.images, self.names = images, [index.names[i] for i in keep]
    self.labels, self.classes = index.labels[keep], index.classes
    self.skipped = 0
    self._bad: set[int] = set()

  def __len__(self):
    return len(self.names)

  def __getitem__(self, i: int) -> dict:
    return self.load(i, decode_rgb)

  def load(self, i: int, decode) -> dict:
    """Example ``i`` with ``image = decode(encoded bytes)`` (``decode`` may crop, as the
    host crops of large images do); a file ``decode`` fails on is skipped as above."""
    i = int(i)
    for attempt in range(len(self)):
      j = (i + attempt) % len(self)
      if j in self._bad:
        continue
      try:
        image = decode(self.images.read(self.names[j]))
      except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, not fatal
        self._bad.add(j)
        self.skipped += 1
        log.warning("skipping unreadable image %s (%s); %d skipped so far", self.names[j],
                    type(e).__name__, self.skipped)
        continue
      return {"image": image, "label": self.labels[j], "index": np.int32(i)}
    raise DataError(f"no readable image in {self.images.path}")


class ArraySource:
  """Decoded images held in memory as one uint8 array (small images: CIFAR, STL-10)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] = (),
               skipped: int = 0):
    self.images, self.labels, self.classes = images, labels.astype(np.int32), list(classes)
    self.skipped = skipped

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": self.labels[i], "index": np.int32(i)}


def _resize_square(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def decode_all(get_bytes, names: Sequence[str], labels: np.ndarray, size: int,
               where: str) -> ArraySource:
  """Decode every image once into an (N, size, size, 3) array; skip unreadable ones."""
  images = np.empty((len(names), size, size, 3), np.uint8)
  keep = np.ones(len(names), bool)
  skipped = []
  for i, name in enumerate(names):
    try:
      images[i] = _resize_square(decode_rgb(get_bytes(name)), size)
    except Exception as e:  # noqa: BLE001 - unreadable images are skipped and counted
      keep[i] = False
      skipped.append(f"{name} ({type(e).__name__})")
  if skipped:
    log.warning("skipped %d unreadable image(s) in %s: %s%s", len(skipped), where,
                ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
  if not keep.any():
    raise DataError(f"no readable image in {where}")
  return ArraySource(images[keep], labels[keep], skipped=len(skipped))


class TfdsSource:
  """A tfds data set by name through ``tfds.data_source`` (ArrayRecord, TF-free reads).

  The first use downloads and prepares the data set (that step needs TensorFlow, and for
  ImageNet a manual download, as tfds explains).
  """

  def __init__(self, name: str, split: str, data_dir: str | None,
               max_examples: int | None):
    import tensorflow_datasets as tfds  # only this source needs tfds
    log.info("reading tfds %r split %r (downloaded and prepared on first use; offline, pass "
             "--config.data.path=...)", name, split)
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
      info = tfds.builder(name, data_dir=data_dir).info
    except Exception as e:  # noqa: BLE001 - unknown name/split, failed download: one line
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f"tfds data set {name!r}, split {split!r} could not be read "
                      f"({type(e).__name__}: {first}); to read local images instead, pass "
                      "--config.data.path=FOLDER_OR_ARCHIVE") from e
    label = info.features["label"] if "label" in info.features else None
    self.classes = list(getattr(label, "names", None) or [])
    n = len(self.source)
    self.keep = np.arange(n)
    self.labels = None
    if max_examples is not None and max_examples < n:
      labels = np.array([self.source[i].get("label", -1) for i in range(n)], np.int32)
      self.keep = balanced_subset(labels, max_examples)
    self.skipped = 0

  def __len__(self):
    return len(self.keep)

  def __getitem__(self, i: int) -> dict:
    ex = self.source[int(self.keep[i])]
    image = np.asarray(ex["image"])
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return {"image": image, "label": np.int32(ex.get("label", -1)), "index": np.int32(i)}


def storage(data_cfg) -> tuple[bool, int]:
  """``(in_memory, stored side)`` of ``config.data``: decode whole splits once when
  ``in_memory`` says so (unset: when ``image_size <= 64``), keeping them at ``stored_size``
  (unset: ``image_size``); a lazily decoded split is read at ``image_size``. Small data sets
  may be kept larger than the network sees (a CPU run at 16x16 still crops from the 32x32
  originals); the device resizes eval images to ``image_size``."""
  size = data_cfg.image_size
  in_memory = data_cfg.in_memory if data_cfg.in_memory is not None else size <= 64
  return bool(in_memory), (data_cfg.stored_size or size) if in_memory else size


def load_config_split(data_cfg, split: str, max_examples: int | None):
  """``load_split`` with the storage ``config.data`` implies (``storage``)."""
  return load_split(data_cfg, split, max_examples, *storage(data_cfg))


def load_split(data_cfg, split: str, max_examples: int | None, in_memory: bool,
               size: int):
  """The source of one split, as ``config.data`` describes it.

  ``in_memory``: decode every image once into a uint8 array resized to ``size`` (for small
  images); otherwise decode lazily, per access, in the input pipeline.
  """
  if data_cfg.path:
    images = open_images(data_cfg.path)
    index = images.split(split)
    keep = balanced_subset(index.labels, max_examples)
    if in_memory:
      names = [index.names[i] for i in keep]
      src = decode_all(images.read, names, index.labels[keep], size, f"{data_cfg.path}:{split}")
      src.classes = index.classes
      return src
    return EncodedSource(images, index, keep)
  src = TfdsSource(data_cfg.name, split, data_cfg.data_dir, max_examples)
  if in_memory:
    n = len(src)
    arr = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
      ex = src[i]
      arr[i], labels[i] = _resize_square(ex["image"], size), ex["label"]
    return ArraySource(arr, labels, src.classes)
  return src


class Subset:
  """The rows ``keep`` of another source (a deterministic subset, e.g. for the kNN bank)."""

  def __init__(self, source, keep: np.ndarray):
    self.source, self.keep = source, np.asarray(keep)
    self.classes = source.classes
    labels = getattr(source, "labels", None)
    self.labels = None if labels is None else np.asarray(labels)[self.keep]

  def __len__(self):
    return len(self.keep)

  def __getitem__(self, i: int) -> dict:
    return {**self.source[int(self.keep[i])], "index": np.int32(i)}


def subset(source, n: int | None):
  """A class-balanced deterministic subset of ``n`` rows (the source itself if n is None)."""
  if n is None or n >= len(source):
    return source
  labels = getattr(source, "labels", None)
  keep = balanced_subset(labels if labels is not None else np.full(len(source), -1), n)
  return Subset(source, keep)
