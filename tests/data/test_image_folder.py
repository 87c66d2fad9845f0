"""The vqgan stage's `folder` images (data/images.py): every file once an epoch in a seeded
order that changes each epoch, random crops that are a pure function of the index, the same
rows however many processes share a batch, constant-time resume, undecodable files skipped
with a warning, and one-line errors for an empty folder."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from muse_jax.data.images import ImageSource

# One flat colour per file, so any crop of an image tells which file it came from.
SIZES = [(40, 30, "RGB"), (20, 50, "RGB"), (33, 33, "RGBA"), (64, 16, "L"), (17, 23, "RGB"),
         (50, 40, "RGB")]


def _colour(i: int) -> int:
  return 30 + 35 * i


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imgs")
  (root / "sub").mkdir()
  for i, (w, h, mode) in enumerate(SIZES):
    c = _colour(i)
    fill = c if mode == "L" else (c, c, c, 255) if mode == "RGBA" else (c, c, c)
    fmt, ext = ("JPEG", "jpg") if i == 1 else ("PNG", "png")
    Image.new(mode, (w, h), fill).save(root / ("sub" if i % 2 else ".") / f"{i}.{ext}", fmt)
  (root / "sub" / "broken.png").write_bytes(b"not a png")
  (root / "notes.txt").write_text("not an image")
  return str(root)


def _source(root, split="train", **kw):
  kw = {"seed": 3, "global_batch": 7, **kw}
  return ImageSource("folder", 16, split=split, root=root, **kw)


def _files_of(images):
  """Which file each [16, 16, 3] image came from (its flat colour, JPEG within a few levels)."""
  out = []
  for im in images:
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8
    assert int(im.max()) - int(im.min()) <= 8, "one flat colour per file"
    out.append(int(np.argmin([abs(float(im.mean()) - _colour(i)) for i in range(len(SIZES))])))
  return out


def test_each_epoch_reads_every_file_in_its_own_order(folder, caplog):
  src = _source(folder)
  assert len(src.files) == 7  # 6 images and one that does not decode; notes.txt is no image
  with caplog.at_level(logging.WARNING):
    epochs = [_files_of(next(src)["images"]) for _ in range(3)]
  for seen in epochs:
    # The broken file's slot holds the next file of the order: one file appears twice.
    assert set(seen) == set(range(6)) and len(seen) == 7, seen
  assert epochs[0] != epochs[1], "each epoch is shuffled anew"
  assert any("broken.png" in r.getMessage() for r in caplog.records)


def test_batches_are_a_pure_function_of_their_position(folder):
  a, b = _source(folder), _source(folder, global_batch=7)
  first = [next(a)["images"] for _ in range(4)]
  b.set_state({"position": 3})  # resume: no batch before it is read
  np.testing.assert_array_equal(next(b)["images"], first[3])
  # Two processes, each its rows of the same global batch.
  halves = [next(_source(folder, global_batch=8, process_index=p, process_count=2))["images"]
            for p in range(2)]
  whole = next(_source(folder, global_batch=8))["images"]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  # A different seed, another order.
  other = next(_source(folder, seed=4))["images"]
  assert _files_of(other) != _files_of(first[0])


def test_random_crops_train_and_centre_crops_eval(tmp_path):
  img = np.zeros((20, 60, 3), np.uint8)
  img[:, :, 0] = np.arange(60, dtype=np.uint8)[None, :] * 4  # a horizontal ramp
  Image.fromarray(img).save(tmp_path / "ramp.png")
  train = _source(str(tmp_path), global_batch=1)
  crops = [next(train)["images"][0, :, :, 0].mean() for _ in range(8)]
  assert len({round(c) for c in crops}) > 1, "crops move along the wide image"
  evaluation = _source(str(tmp_path), split="eval", global_batch=1, num_batches=1)
  centre = next(evaluation)["images"][0, :, :, 0].mean()
  assert abs(centre - img[:, 20:40, 0].mean()) < 4
  np.testing.assert_array_equal(next(evaluation)["images"],
                                next(_source(str(tmp_path), split="eval", global_batch=1,
                                             num_batches=1))["images"])


def test_an_empty_folder_or_only_broken_files_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="no images"):
    _source(str(tmp_path))
  with pytest.raises(ValueError, match="data.path is empty"):
    _source("")
  (tmp_path / "a.png").write_bytes(b"")
  (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 cut")
  with pytest.raises(RuntimeError, match="could not be read"):
    next(_source(str(tmp_path), global_batch=1))
  buf = io.BytesIO()
  Image.new("RGB", (8, 8)).save(buf, "PNG")
  (tmp_path / "c.png").write_bytes(buf.getvalue())
  assert next(_source(str(tmp_path), global_batch=1))["images"].shape == (1, 16, 16, 3)
