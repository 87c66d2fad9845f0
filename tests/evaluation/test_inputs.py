"""What python -m muse_jax.evaluate checks before any work: image folders (muse_jax/evaluation/
inputs.py), the provenance of FID reference statistics (reference.py) and the files of a CLIP
checkpoint (scorers.py). The command's own one-line errors are in test_evaluate.py."""
import os

import numpy as np
import pytest
from PIL import Image

from muse_jax.evaluation import fid as F
from muse_jax.evaluation import inputs, reference, scorers
from tests.evaluation.helpers import write_tiny_clip


def test_image_sets_references_and_clip_files_are_checked_before_any_work(tmp_path):
  t = tmp_path
  for name, images in (("rgba", [("000000.png", "RGB"), ("000001.png", "RGBA")]),
                       ("gap", [("0.png", "RGB"), ("2.png", "RGB"), ("notes.txt", None)]),
                       ("twice", [("1.png", "RGB"), ("0.png", "RGB"), ("01.jpg", "RGB")])):
    (t / name).mkdir()
    for file, mode in images:
      if mode is None:
        (t / name / file).write_text("not an image")
      else:
        Image.new(mode, (8, 8)).save(t / name / file)
  with pytest.raises(ValueError, match=f"^{t}/rgba/000001.png: image mode RGBA;"):
    inputs.ImageSet.for_captions(str(t / "rgba"), 2)
  with pytest.raises(ValueError, match=r"no image for 2 of 4 captions \(first: \[1, 3\]\)"):
    inputs.ImageSet.for_captions(str(t / "gap"), 4)
  with pytest.raises(ValueError, match="two images for caption 1: 01.jpg and 1.png"):
    inputs.ImageSet.for_captions(str(t / "twice"), 2)
  got = inputs.ImageSet.for_captions(str(t / "gap"), 1)   # 2.png and notes.txt: not needed
  assert got.load([0, 0]).shape == (2, 8, 8, 3) and got.size == (8, 8)
  # Reference statistics made by another network are refused; files without info are taken.
  inception = scorers.InceptionScorer(None, {"weights_sha256": "abc", "variant": "fid",
                                             "input_size": 299})
  other = {"inception": {"weights_sha256": "random(seed=0)", "variant": "fid",
                         "input_size": 299}}
  F.save_stats(str(t / "other.npz"), F.FeatureStats(2048).update(np.eye(2, 2048)), other)
  with pytest.raises(ValueError, match="other.npz was computed with Inception .*random"):
    reference.load(str(t / "other.npz"), inception)
  np.savez(t / "pfid.npz", mu=np.zeros(2048), sigma=np.eye(2048))
  g, info = reference.load(str(t / "pfid.npz"), inception)
  assert g.count is None and info["provenance"].startswith("unknown")
  # A CLIP directory needs its config and tokenizer files.
  write_tiny_clip(str(t / "clip"))
  for name in ("config.json", "vocab.json", "merges.txt"):
    os.remove(t / "clip" / name)
  with pytest.raises(FileNotFoundError, match="has no config.json, vocab.json, merges.txt"):
    scorers.load_clip(str(t / "clip" / "model.safetensors"))
