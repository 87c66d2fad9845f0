"""Raw images for the vqgan stage: procedural `shapes` scenes or uniform noise (`synthetic`)."""
from __future__ import annotations

import numpy as np

from muse_jax.data.batch import IndexedRowsSource
from muse_jax.data.shapes import dataset as shapes


class ImageSource(IndexedRowsSource):
  """uint8 images [b, S, S, 3]: `shapes` scenes or uniform noise (`synthetic`).

  Example i of a split is a pure function of (seed, split, i); `scenes` are the keywords of
  `shapes.generate` that choose which scenes (`shapes.scene_options`; None = its defaults).
  `eval` cycles over `num_batches` fixed batches. The position is the number of batches
  drawn. `num_workers` > 0 draws the next batches on that many processes (IndexedRowsSource),
  the same bytes.
  """

  def __init__(self, kind: str, image_size: int, *, seed: int, split: str, global_batch: int,
               process_index: int = 0, process_count: int = 1, num_batches: int | None = None,
               num_workers: int = 0, scenes: dict | None = None):
    if kind not in ("shapes", "synthetic"):
      raise ValueError(f"config.data.source={kind!r}; the vqgan stage reads `shapes` or "
                       "`synthetic` images")
    super().__init__(global_batch=global_batch, process_index=process_index,
                     process_count=process_count, num_batches=num_batches,
                     num_workers=num_workers)
    self.kind, self.size, self.seed, self.split = kind, image_size, seed, split
    self.scenes = dict(scenes or {})

  def example(self, index: int) -> dict[str, np.ndarray]:
    if self.kind == "shapes":
      image = shapes.generate(index, "train" if self.split == "train" else "heldout", self.seed,
                              self.size, **self.scenes).image
    else:
      rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
      image = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
    return {"images": image}
