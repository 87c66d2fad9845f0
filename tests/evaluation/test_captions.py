"""Caption sets of every format `python -m muse_jax.evaluate --captions` reads
(muse_jax/evaluation/captions.py), in their fixed order, and the ones refused at start."""
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from muse_jax.data import records
from muse_jax.evaluation import captions as C


def png() -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def test_every_format_reads_its_captions_in_a_fixed_order(tmp_path):
  t = tmp_path
  (t / "c.txt").write_text("first\n\n  second  \n")
  # COCO: one caption per image (the smallest annotation id), images by increasing image_id.
  (t / "coco.json").write_text(json.dumps({"images": [], "annotations": [
      {"image_id": 9, "id": 7, "caption": "nine, later id"},
      {"image_id": 9, "id": 2, "caption": " nine, first id "},
      {"image_id": 4, "id": 30, "caption": "four"}]}))
  # TFRecord shards (precompute's layout has more features; only `caption` is read).
  (t / "shards").mkdir()
  for i, caps in enumerate((["r0", "r1"], ["r2"])):
    records.write_tfrecord(str(t / "shards" / f"train.tfrecord-{i:05d}-of-00002"), [
        records.encode_features({"caption": c.encode(), "id": str(c).encode(),
                                 "text_len": [1]}) for c in caps])
  # A folder of images with sidecar captions; b.png has none and is skipped.
  (t / "folder").mkdir()
  for name, caption in (("a", "cap a"), ("b", None), ("c", "cap c")):
    (t / "folder" / f"{name}.png").write_bytes(png())
    if caption:
      (t / "folder" / f"{name}.txt").write_text(caption + "\n")
  # webdataset: a .txt caption, or the caption field of the .json.
  with tarfile.open(t / "000000.tar", "w") as tar:
    for name, data in (("k1.png", png()), ("k1.txt", b"wds one"), ("k2.png", png()),
                       ("k2.json", json.dumps({"caption": "wds two"}).encode())):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  pq.write_table(pa.table({"image": [png(), png()], "text": ["pq one", "pq two"]}),
                 str(t / "p.parquet"))
  assert C.read(str(t / "c.txt")) == ["first", "second"]
  assert C.read(str(t / "coco.json")) == ["four", "nine, first id"]
  assert C.read(str(t / "shards")) == ["r0", "r1", "r2"]
  assert C.read(str(t / "shards" / "train.tfrecord-*")) == ["r0", "r1", "r2"]
  assert C.read(str(t / "folder")) == ["cap a", "cap c"]
  assert C.read(str(t / "000000.tar")) == ["wds one", "wds two"]
  assert C.read(str(t / "p.parquet"), key="text") == ["pq one", "pq two"]
  assert C.read(str(t / "c.txt"), fmt="text") == C.read(str(t / "c.txt"))


def test_empty_damaged_or_malformed_caption_sets_are_refused_at_start(tmp_path):
  t = tmp_path
  (t / "empty.json").write_text(json.dumps({"annotations": []}))
  (t / "blank.txt").write_text("\n \n")
  (t / "bad.json").write_text(json.dumps({"images": []}))
  good = records.encode_features({"caption": b"x"})
  (t / "torn.tfrecord").write_bytes(records.frame_records([good])[:-3])
  with pytest.raises(ValueError, match=r"empty.json holds no captions$"):
    C.read(str(t / "empty.json"))
  with pytest.raises(ValueError, match=r"blank.txt holds no captions \(one per line"):
    C.read(str(t / "blank.txt"))
  with pytest.raises(ValueError, match=r"bad.json is not COCO captions JSON \(KeyError"):
    C.read(str(t / "bad.json"))
  with pytest.raises(ValueError, match="record 0 of .*torn.tfrecord is damaged"):
    C.read(str(t / "torn.tfrecord"))
  with pytest.raises(FileNotFoundError, match="no such file"):
    C.read(str(t / "missing.txt"))
  with pytest.raises(ValueError, match="--captions_format='csv'"):
    C.read(str(t / "blank.txt"), fmt="csv")
