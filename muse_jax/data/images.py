"""Raw images for the vqgan stage: procedural `shapes` scenes, uniform noise (`synthetic`), or
the image files of a folder (`folder`; local, gs:// or any epath filesystem)."""
from __future__ import annotations

import logging

import numpy as np

from muse_jax.data import preprocess
from muse_jax.data.batch import IndexedRowsSource
from muse_jax.data.shapes import dataset as shapes
from muse_jax.data.sources import files

log = logging.getLogger(__name__)

KINDS = ("shapes", "synthetic", "folder")
MAX_PIXELS = 64_000_000  # larger files are skipped before decoding (a decompression bomb)
MAX_SKIPS = 64  # unreadable files in a row before the input fails


class ImageSource(IndexedRowsSource):
  """uint8 images [b, S, S, 3]: `shapes` scenes, uniform noise (`synthetic`) or the files
  under `root` (`folder`).

  Example i of a split is a pure function of (seed, split, i); `scenes` are the keywords of
  `shapes.generate` that choose which scenes (`shapes.scene_options`; None = its defaults).
  `eval` cycles over `num_batches` fixed batches. The position is the number of batches
  drawn. `num_workers` > 0 draws the next batches on that many processes (IndexedRowsSource),
  the same bytes.

  `folder`: the files are listed once, sorted; training reads them in grain's index shuffle,
  a new permutation every epoch, computed per index, so resuming at any position costs the
  same; each image gets a random square crop (seeded by its index), resized to S. Eval reads
  the files in order, centre-cropped. A file that cannot be decoded is skipped with a warning:
  its example is the next file of the order.
  """

  def __init__(self, kind: str, image_size: int, *, seed: int, split: str, global_batch: int,
               process_index: int = 0, process_count: int = 1, num_batches: int | None = None,
               num_workers: int = 0, scenes: dict | None = None, root: str = ""):
    if kind not in KINDS:
      raise ValueError(f"config.data.source={kind!r}; the vqgan stage reads "
                       f"{', '.join(KINDS)} images")
    super().__init__(global_batch=global_batch, process_index=process_index,
                     process_count=process_count, num_batches=num_batches,
                     num_workers=num_workers)
    self.kind, self.size, self.seed, self.split = kind, image_size, seed, split
    self.scenes = dict(scenes or {})
    self.root, self.files = root, []
    if kind == "folder":
      if not root:
        raise ValueError("config.data.path is empty: set it to the folder of training images")
      self.files = files.list_images(root, files.IMAGE_EXTENSIONS)
      if not self.files:
        raise ValueError(f"no images ({' '.join(files.IMAGE_EXTENSIONS)}) under {root!r}")
    self._order = None

  def example(self, index: int) -> dict[str, np.ndarray]:
    if self.kind == "folder":
      return {"images": self._file_image(index)}
    if self.kind == "shapes":
      image = shapes.generate(index, "train" if self.split == "train" else "heldout", self.seed,
                              self.size, **self.scenes).image
    else:
      rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
      image = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
    return {"images": image}

  def _file(self, index: int) -> str:
    if self.split != "train":
      return self.files[index % len(self.files)]
    if self._order is None:
      import grain  # only the folder source needs it

      from muse_jax.data.grain_reader import shuffle_seed
      self._order = grain.MapDataset.source(self.files).shuffle(seed=shuffle_seed(self.seed))
    return self._order[index]

  def _file_image(self, index: int) -> np.ndarray:
    train = self.split == "train"
    for k in range(MAX_SKIPS):
      rel = self._file(index + k)
      data = files.read_bytes(files.join(self.root, rel))
      try:
        if data is None:
          raise preprocess.SkipExample("missing_image")
        img = preprocess.to_rgb(preprocess.open_image(data, 1, MAX_PIXELS, self.size))
      except preprocess.SkipExample as e:
        log.warning("skipping image %s: %s", rel, " ".join(map(str, e.args)))
        continue
      rng = np.random.default_rng([self.seed, index]) if train else None
      return preprocess.resize_and_crop(img, self.size, random_crop=train, rng=rng)
    raise RuntimeError(f"{MAX_SKIPS} images in a row under {self.root!r} could not be read "
                       f"(the last: {rel})")

  def __getstate__(self):
    state = super().__getstate__()
    state["_order"] = None  # rebuilt where it is used
    return state
