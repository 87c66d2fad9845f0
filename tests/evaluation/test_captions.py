"""Caption sets of every format `python -m muse_jax.evaluate --captions` reads
(muse_jax/evaluation/captions.py), in their fixed order, and the ones refused at start."""
import io
import json
import sys
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


def test_tfds_captions_without_tensorflow_datasets_are_one_line(monkeypatch):
  """The GPU image has no TensorFlow by default: a `tfds:` caption set is then a one-line error
  (a ValueError, as evaluate reports them) naming the `tf` extra."""
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
  with pytest.raises(ValueError, match=r"^--captions=tfds:coco:val needs TensorFlow Datasets, "
                     r"which is not installed: pip install -e '\.\[tf\]'") as err:
    C.read("tfds:coco:val")
  assert "\n" not in str(err.value)


def _coco_like_tfds(data_dir: str) -> None:
  """A TFDS dataset laid out like coco_captions (a Sequence of {text, id} per image), splits
  val (3 images, two captions each) and test."""
  import tensorflow_datasets as tfds

  class CocoLikeCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None   # no checksums file next to this code

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "captions": tfds.features.Sequence({"text": tfds.features.Text(), "id": np.int64})}))

    def _split_generators(self, dl_manager):
      return {"val": self._generate_examples(3), "test": self._generate_examples(1)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": np.zeros((4, 4, 3), np.uint8),
                  "captions": {"text": [f"image {i} first", f"image {i} second"],
                               "id": [2 * i, 2 * i + 1]}}

  CocoLikeCaptions(data_dir=data_dir).download_and_prepare()


def test_tfds_captions_in_stored_order_nested_keys_and_bad_specs(tmp_path):
  """A prepared TFDS dataset (tests/data/source_files.write_tfds: 7 images, captions at
  meta/caption, one blank) and a coco_captions-like one: captions in TFDS's stored order,
  the same in every read; nested keys with / or .; a sequence of texts gives its first."""
  import tensorflow_datasets as tfds

  from tests.data.source_files import write_tfds
  d = str(tmp_path / "tfds")
  write_tfds(d)
  _coco_like_tfds(d)
  stored = [r["meta"]["caption"].decode().strip() for r in tfds.builder(
      "muse_tiny_captions", data_dir=d).as_dataset(split="train", shuffle_files=False)
      .as_numpy_iterator()]
  want = [c for c in stored if c]
  assert sorted(want) == [f"tiny {i}" for i in range(7) if i != 3]
  assert C.detect("tfds:muse_tiny_captions") == "tfds"
  for spec, fmt, key in (("tfds:muse_tiny_captions", "auto", "meta/caption"),   # one split
                         ("tfds:muse_tiny_captions:train", "auto", "meta.caption"),
                         ("muse_tiny_captions:1.0.0:train", "tfds", "meta/caption")):
    assert C.read(spec, fmt, key, tfds_data_dir=d) == want, spec
  assert C.read("tfds:muse_tiny_captions:train[:3]", key="meta/caption",
                tfds_data_dir=d) == [c for c in stored[:3] if c]
  coco = C.read("tfds:coco_like_captions:val", key="captions.text", tfds_data_dir=d)
  assert sorted(coco) == [f"image {i} first" for i in range(3)]
  where = f" in {d}: "
  for spec, key, error in (
      ("tfds:muse_tiny_captions:train[7:]", "meta/caption", "split 'train[7:]' is empty"),
      ("tfds:muse_tiny_captions:val", "meta/caption", "Unknown split 'val'"),
      ("tfds:coco_like_captions", "captions/text", "give a split, "
       "tfds:coco_like_captions:SPLIT, one of test, val"),
      ("tfds:muse_tiny_captions", "caption", "no feature 'caption' (features: image, meta); "
       "set --caption_key"),
      ("tfds:no_such_captions:val", "caption", "Dataset no_such_captions not found")):
    with pytest.raises(ValueError) as e:
      C.read(spec, key=key, tfds_data_dir=d)
    assert str(e.value).startswith(f"--captions={spec}{where}{error}"), str(e.value)
    assert "\n" not in str(e.value)
