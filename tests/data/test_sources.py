"""Raw sources on fixtures written here: folder (JSONL, sidecar), TFRecord, TFDS, shapes,
WebDataset tar shards and parquet (tests/data/source_files.py)."""
import gzip
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from muse_jax.configs import common_data
from muse_jax.data import preprocess, raw_sources
from muse_jax.data.preprocess import SkipCounter
from muse_jax.data.shapes import dataset as shapes
from tests.data import source_files


def _png(colour, size=(48, 40)):
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, "PNG")
  return buf.getvalue()


def _config(source, **kw):
  c = common_data.data_config()
  c.source = source
  c.resolutions = (32,)
  c.min_size = 16
  c.num_workers = 1
  for k, v in kw.items():
    section, key = k.split("__")
    c[section][key] = v
  return c


def _run(config, process_index=0, process_count=1):
  counter = SkipCounter()
  out = list(raw_sources.iterate_examples(config, process_index, process_count, counter))
  return out, counter


def _check_shards(config, total_ids, process_count):
  seen = []
  for i in range(process_count):
    seen += [ex["id"] for ex in _run(config, i, process_count)[0]]
  assert sorted(seen) == sorted(total_ids), (seen, total_ids)


def test_folder_with_jsonl_manifest(tmp_path):
  os.makedirs(tmp_path / "sub")
  for i in range(4):
    (tmp_path / "sub" / f"{i}.png").write_bytes(_png((10 * i, 100, 200)))
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  lines = [json.dumps({"file": f"sub/{i}.png", "caption": f"image {i}"}) for i in range(4)]
  lines += [json.dumps({"file": "bad.jpg", "caption": "bad"}),
            json.dumps({"file": "missing.png", "caption": "gone"}),
            json.dumps({"file": "sub/0.png"}),
            "{not json", ""]
  (tmp_path / "captions.jsonl").write_text("\n".join(lines))
  config = _config("folder", folder__root=str(tmp_path), folder__manifest="captions.jsonl")
  out, counter = _run(config)
  assert [ex["id"] for ex in out] == [f"sub/{i}.png" for i in range(4)]
  assert [ex["caption"] for ex in out] == [f"image {i}" for i in range(4)]
  assert tuple(out[2]["image"][32][5, 5]) == (20, 100, 200)
  assert dict(counter.skipped) == {"undecodable": 1, "missing_image": 1, "missing_caption": 1,
                                   "corrupt_record": 1}
  assert counter.seen == 8 and counter.kept == 4
  # Shards: disjoint and covering, also with more processes than kept examples.
  _check_shards(config, [ex["id"] for ex in out], 3)


def test_folder_with_sidecar_captions(tmp_path):
  os.makedirs(tmp_path / "a" / "b")
  names = ["x.png", "a/y.png", "a/b/z.webp", "a/b/no_caption.png"]
  for n in names:
    img = Image.new("RGB", (40, 40), (0, 200, 0))
    img.save(tmp_path / n)
    if "no_caption" not in n:
      (tmp_path / n).with_suffix(".txt").write_text(f"  caption\nof {n} ")
  (tmp_path / "notes.md").write_text("ignored: not an image extension")
  config = _config("folder", folder__root=str(tmp_path))
  out, counter = _run(config)
  assert sorted(ex["id"] for ex in out) == sorted(["x.png", "a/y.png", "a/b/z.webp"])
  assert {ex["caption"] for ex in out} == {f"caption of {n}" for n in names[:3]}
  assert dict(counter.skipped) == {"missing_caption": 1}
  _check_shards(config, [ex["id"] for ex in out], 2)


def test_tfrecord_source(tmp_path):
  ids = source_files.write_tfrecords(tmp_path)
  config = _config("tfrecord", tfrecord__pattern=str(tmp_path / "part-*.tfrecord"),
                   tfrecord__image_key="jpg", tfrecord__caption_key="txt",
                   tfrecord__id_key="key")
  out, counter = _run(config)
  assert [ex["id"] for ex in out] == ids
  assert out[0]["caption"] == "record f0r0"
  assert tuple(out[4]["image"][32][0, 0]) == (100, 50, 30)
  assert dict(counter.skipped) == {"missing_image": 2, "corrupt_record": 3}
  _check_shards(config, ids, 2)  # by file (3 files >= 2 processes)
  _check_shards(config, ids, 4)  # by record (3 files < 4 processes)
  config.tfrecord.id_key = ""
  out, _ = _run(config)
  assert out[0]["id"] == "part-0.tfrecord:0"
  config.tfrecord.pattern = str(tmp_path / "nothing-*")
  with pytest.raises(FileNotFoundError, match="pattern"):
    _run(config)


def test_tfds_source(tmp_path):
  source_files.write_tfds(str(tmp_path))
  config = _config("tfds", tfds__name="muse_tiny_captions", tfds__data_dir=str(tmp_path),
                   tfds__caption_key="meta/caption")
  out, counter = _run(config)
  assert sorted(ex["caption"] for ex in out) == sorted(f"tiny {i}" for i in range(7) if i != 3)
  by_caption = {ex["caption"]: ex for ex in out}
  assert tuple(by_caption["tiny 5"]["image"][32][3, 3]) == (150, 10, 200)
  assert dict(counter.skipped) == {"empty_caption": 1}
  _check_shards(config, [ex["id"] for ex in out], 2)
  config.tfds.caption_key = "text"
  with pytest.raises(ValueError, match="caption_key"):
    _run(config)


def test_shapes_source_and_config_validation():
  config = common_data.data_config()
  config.resolutions = (32, 64)
  config.shapes.num_train = 5
  config.num_workers = 2
  out, counter = _run(config)
  assert len(out) == 5 and counter.as_dict() == {"seen": 5, "kept": 5, "skipped": 0}
  assert out[0]["image"][64].shape == (64, 64, 3) and out[0]["image"][32].shape == (32, 32, 3)
  _check_shards(config, [ex["id"] for ex in out], 2)
  config.shapes.split = "heldout"
  config.shapes.num_heldout = 3
  assert len(_run(config)[0]) == 3
  config.source = "lmdb"
  with pytest.raises(ValueError, match="data.source"):
    raw_sources.make_source(config)
  config.source = "folder"
  with pytest.raises(ValueError, match="folder.root"):
    raw_sources.make_source(config)
  with pytest.raises(ValueError, match="process_index"):
    list(raw_sources.ShapesSource("train", 3, 0, (32,)).raw_examples(2, 2))


def test_shapes_scenes_are_drawn_in_the_preprocessing_workers():
  src = raw_sources.ShapesSource("train", 6, 0, (32, 64))
  raws = list(src.raw_examples(1, 2))  # indices 1, 3, 5
  assert all(r.images is None and r.load is not None for r in raws)  # nothing drawn yet
  counter = preprocess.SkipCounter()
  out = list(preprocess.preprocess_stream(
      raws, preprocess.PreprocessOptions(resolutions=(32, 64)), counter, num_workers=2))
  assert counter.kept == 3
  for ex, i in zip(out, (1, 3, 5)):
    want = shapes.generate(i, "train", 0, (32, 64))
    assert (ex["id"], ex["caption"]) == (want.id, want.caption)
    for r in (32, 64):
      np.testing.assert_array_equal(ex["image"][r], want.image[r])


def _run_with_ids(config, process_index=0, process_count=1):
  """As _run, keeping the skipped ids (iterate_examples does not: its stream is unbounded)."""
  counter = SkipCounter()
  source = raw_sources.make_source(config)
  out = list(preprocess.preprocess_stream(source.raw_examples(process_index, process_count),
                                          preprocess.options_from_config(config), counter))
  return out, counter


def test_webdataset_shards_as_img2dataset_writes_them(tmp_path):
  kept, skipped = source_files.write_webdataset(str(tmp_path))
  config = _config("webdataset", webdataset__shards=str(tmp_path / "{000000..000002}.tar"))
  out, counter = _run_with_ids(config)
  assert [ex["id"] for ex in out] == kept
  assert [ex["caption"] for ex in out] == ["a red square", "a green square", "a grey square",
                                            "a cyan square", "a magenta square"]
  assert tuple(out[1]["image"][32][5, 5]) == (10, 200, 10)  # png with its .json caption
  assert dict(counter.skipped_ids()) == skipped
  assert dict(counter.skipped) == {"undecodable": 1, "missing_caption": 1, "missing_image": 1,
                                   "corrupt_record": 3}
  assert counter.seen == len(kept) + len(skipped)
  # A folder, a glob and a list give the same shards; iterate_examples gives the same records.
  for shards in (str(tmp_path), str(tmp_path / "*.tar"),
                 (str(tmp_path / "000000.tar"), str(tmp_path / "00000[12].tar"))):
    config.webdataset.shards = shards
    assert [ex["id"] for ex in _run(config)[0]] == kept
  _check_shards(config, kept, 2)  # by file
  _check_shards(config, kept, 4)  # by record
  # A gzipped shard reads the same.
  with open(tmp_path / "000000.tar", "rb") as f:
    (tmp_path / "zipped.tar.gz").write_bytes(gzip.compress(f.read()))
  config.webdataset.shards = str(tmp_path / "zipped.tar.gz")
  assert [ex["id"] for ex in _run(config)[0]] == [
      k.replace("000000.tar", "zipped.tar.gz") for k in kept[:3]]
  # Captions from the .json only; a shard that is not there is counted, not fatal.
  config.webdataset.caption_extension = ""
  config.webdataset.shards = f"{tmp_path / '000000.tar'}::{tmp_path / 'gone.tar'}"
  out, counter = _run_with_ids(config)
  assert [ex["caption"] for ex in out] == ["ignored: the .txt wins", "a green square"]
  assert counter.skipped_ids() == [["000000.tar/000000002", "missing_caption"],
                                   ["000000.tar/000000003", "missing_caption"],
                                   ["000000.tar/000000004", "missing_caption"],
                                   ["gone.tar", "corrupt_record"]]
  for missing in (str(tmp_path / "*.zip"), str(tmp_path / "gone{1..2}.tar")):
    config.webdataset.shards = missing
    with pytest.raises(FileNotFoundError, match="data.webdataset.shards"):
      _run(config)


def test_parquet_with_image_bytes_or_paths(tmp_path):
  kept, skipped = source_files.write_parquet(str(tmp_path))
  config = _config("parquet", parquet__files=str(tmp_path / "bytes.parquet"),
                   parquet__id_key="key")
  out, counter = _run_with_ids(config)
  assert [ex["id"] for ex in out] == kept
  assert [ex["caption"] for ex in out] == ["a red square", "a green square", "a blue square"]
  assert tuple(out[2]["image"][32][5, 5]) == (20, 20, 200)
  assert dict(counter.skipped_ids()) == skipped["bytes"]
  _check_shards(config, kept, 2)  # by row: one file, two processes
  config.parquet.files = str(tmp_path / "paths.parquet")
  out, counter = _run_with_ids(config)
  assert [ex["id"] for ex in out] == kept
  assert dict(counter.skipped_ids()) == skipped["paths"]
  # Without an id column, ids are <file>:<row>; a folder gives both files, sorted.
  config.parquet.update(dict(files=str(tmp_path), id_key=""))
  assert [ex["id"] for ex in _run(config)[0]] == [
      f"{f}.parquet:{i}" for f in ("bytes", "paths") for i in range(3)]
  config.parquet.caption_key = "text"
  with pytest.raises(ValueError, match="bytes.parquet has no column 'text'.*caption_key"):
    _run(config)
  import pyarrow as pa
  import pyarrow.parquet as pq
  # Hugging Face datasets' Image feature: a struct of bytes (or a path when bytes is null).
  hf = [{"bytes": source_files.image_bytes((1, 2, 3)), "path": None},
        {"bytes": None, "path": "images/2.img"}, None]
  pq.write_table(pa.table({"image": hf, "text": [["first caption", "second"], ["b"], ["c"]]}),
                 str(tmp_path / "hf.parquet"))
  (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
  config.parquet.update(dict(files=f"{tmp_path}/{{hf,broken}}.parquet", image_key="image",
                             caption_key="text"))
  out, counter = _run_with_ids(config)
  assert [(ex["id"], ex["caption"]) for ex in out] == [("hf.parquet:0", "first caption"),
                                                      ("hf.parquet:1", "b")]
  assert tuple(out[1]["image"][32][5, 5]) == (20, 20, 200)
  assert counter.skipped_ids() == [["broken.parquet", "corrupt_record"],
                                   ["hf.parquet:2", "missing_image"]]


def test_webdataset_and_parquet_sources_read_without_tensorflow(tmp_path):
  """Accelerator hosts often have no TensorFlow: these sources (paths through etils.epath)
  must not need it. Runs in a subprocess where importing tensorflow fails."""
  import subprocess
  import sys
  source_files.write_webdataset(str(tmp_path / "wds"))
  source_files.write_parquet(str(tmp_path / "pq"))
  code = "\n".join([
      "import sys; sys.modules['tensorflow'] = None",
      "from muse_jax.configs import common_data",
      "from muse_jax.data import raw_sources",
      "c = common_data.data_config(); c.resolutions = (32,); c.min_size = 16",
      f"c.webdataset.shards = {str(tmp_path / 'wds')!r}",
      f"c.parquet.files = {str(tmp_path / 'pq')!r}",
      "for c.source in ('webdataset', 'parquet'):",
      "  print(c.source, len(list(raw_sources.iterate_examples(c))))"])
  root = __file__.rsplit("/tests/", 1)[0]
  out = subprocess.run([sys.executable, "-c", code], check=True, cwd=root, capture_output=True,
                       text=True)
  assert out.stdout.split() == ["webdataset", "5", "parquet", "6"]
