"""Preprocessing: a bad-image corpus is counted exactly by reason; conversions; captions."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from muse_jax.data import preprocess
from muse_jax.data.preprocess import PreprocessOptions, RawExample, SkipCounter

OPTS = PreprocessOptions(resolutions=(32, 64), min_size=16, max_pixels=4_000_000,
                         max_caption_chars=40)


def _encode(img, fmt, **kw):
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  return buf.getvalue()


def _rgb(w=120, h=80, colour=(200, 30, 40)):
  return Image.new("RGB", (w, h), colour)


def _huge_png_header(w=100_000, h=100_000):
  """A PNG whose header claims w x h pixels (the pixel data is missing)."""
  data = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
  ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
  data[16:24] = struct.pack(">II", w, h)
  data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
  return bytes(data)


def _gif_two_frames():
  frames = [Image.new("P", (64, 48), 0), Image.new("P", (64, 48), 1)]
  for f in frames:
    f.putpalette([220, 30, 30, 30, 60, 220] + [0] * 762)
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
  return buf.getvalue()


def _corpus():
  """(name, bytes, expected reason or None for kept, expected centre RGB or None)."""
  jpeg = _encode(_rgb(300, 200), "JPEG", quality=95)
  png = _encode(_rgb(), "PNG")
  webp = _encode(_rgb(), "WEBP", quality=90)
  gray16 = Image.fromarray(np.full((40, 40), 65535 // 2, np.uint16))
  rgba = np.zeros((40, 40, 4), np.uint8)
  rgba[..., 0] = 255
  rgba[:, :20, 3] = 255  # left half opaque red, right half transparent
  palette = _rgb(40, 40, (30, 60, 220)).convert("P", palette=Image.Palette.ADAPTIVE)
  palette_t = Image.new("P", (40, 40), 0)
  palette_t.putpalette([10, 200, 10] + [0] * 765)
  palette_t.info["transparency"] = 0
  return [
      ("ok.jpg", jpeg, None, (200, 30, 40)),
      ("ok.png", png, None, (200, 30, 40)),
      ("ok.webp", webp, None, (200, 30, 40)),
      ("first_frame.gif", _gif_two_frames(), None, (220, 30, 30)),
      ("cmyk.jpg", _encode(_rgb().convert("CMYK"), "JPEG", quality=95), None, (200, 30, 40)),
      ("gray16.png", _encode(gray16, "PNG"), None, (127, 127, 127)),
      ("gray.png", _encode(_rgb().convert("L"), "PNG"), None, None),
      ("rgba.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), None, None),
      ("palette.png", _encode(palette, "PNG"), None, (30, 60, 220)),
      ("palette_transparent.png", _encode(palette_t, "PNG", transparency=0), None,
       (255, 255, 255)),
      ("bilevel.bmp", _encode(Image.new("1", (40, 40), 1), "BMP"), None, (255, 255, 255)),
      ("truncated.jpg", jpeg[:len(jpeg) // 2], "truncated", None),
      ("truncated.png", png[:len(png) // 2], "truncated", None),
      ("truncated.webp", webp[:len(webp) // 2], "truncated", None),
      ("zero.jpg", b"", "empty_file", None),
      ("one_pixel.png", _encode(_rgb(1, 1), "PNG"), "too_small", None),
      ("thin.png", _encode(_rgb(500, 10), "PNG"), "too_small", None),
      ("text.jpg", b"this is not an image, just text\n" * 3, "undecodable", None),
      ("garbage.png", bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)),
       "undecodable", None),
      ("huge_header.png", _huge_png_header(), "too_large", None),
      ("too_many_pixels.png", _encode(Image.new("L", (2100, 2000)), "PNG"), "too_large", None),
  ]


def test_bad_image_corpus_counts_exactly():
  corpus = _corpus()
  counter = SkipCounter()
  raws = [RawExample(name, f"caption of {name}", image_bytes=data)
          for name, data, _, _ in corpus]
  out = {ex["id"]: ex for ex in preprocess.preprocess_stream(raws, OPTS, counter)}
  expected_kept = {name for name, _, reason, _ in corpus if reason is None}
  assert set(out) == expected_kept
  expected = {}
  for _, _, reason, _ in corpus:
    if reason:
      expected[reason] = expected.get(reason, 0) + 1
  assert dict(counter.skipped) == expected
  assert counter.seen == len(corpus) and counter.kept == len(expected_kept)
  assert counter.total_skipped == len(corpus) - len(expected_kept)
  for name, _, _, centre in corpus:
    if name not in out:
      continue
    for res in (32, 64):
      img = out[name]["image"][res]
      assert img.shape == (res, res, 3) and img.dtype == np.uint8
    if centre is not None:
      got = out[name]["image"][64][32, 32].astype(int)
      assert np.abs(got - np.array(centre)).max() <= 12, (name, got, centre)
  rgba = out["rgba.png"]["image"][64]
  assert tuple(rgba[32, 2]) == (255, 0, 0) and tuple(rgba[32, 61]) == (255, 255, 255)
  as_dict = counter.as_dict()
  assert as_dict["skipped/truncated"] == 3 and as_dict["kept"] == len(expected_kept)


def test_threads_give_same_examples_and_counts():
  corpus = _corpus()
  raws = [RawExample(name, "c", image_bytes=data) for name, data, _, _ in corpus] * 3
  c1, c2 = SkipCounter(), SkipCounter()
  a = list(preprocess.preprocess_stream(raws, OPTS, c1, num_workers=1))
  b = list(preprocess.preprocess_stream(raws, OPTS, c2, num_workers=2, prefetch=3))
  assert [x["id"] for x in a] == [x["id"] for x in b]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"][64], y["image"][64])
  assert c1.as_dict() == c2.as_dict()


def test_center_crop_and_random_crop():
  arr = np.zeros((100, 300, 3), np.uint8)
  arr[:, :100] = (255, 0, 0)
  arr[:, 100:200] = (0, 255, 0)
  arr[:, 200:] = (0, 0, 255)
  img = Image.fromarray(arr)
  centre = preprocess.resize_and_crop(img, 50)
  assert centre.shape == (50, 50, 3)
  assert (centre[:, 2:-2] == (0, 255, 0)).all()
  seen = set()
  for seed in range(20):
    crop = preprocess.resize_and_crop(img, 50, random_crop=True,
                                      rng=np.random.default_rng(seed))
    seen.add(int(np.argmax(crop[25, 25])))
  assert seen == {0, 1, 2}  # all three bands are reachable
  # Random crops are deterministic per (seed, id).
  opts = PreprocessOptions(resolutions=(50,), min_size=16, random_crop=True, seed=3)
  raw = RawExample("x", "c", image_array=arr)
  a, _ = preprocess.process_example(raw, opts)
  b, _ = preprocess.process_example(raw, opts)
  np.testing.assert_array_equal(a["image"][50], b["image"][50])


def test_jpeg_draft_keeps_quality_for_large_images():
  yy, xx = np.mgrid[0:1200, 0:1600]
  arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
  arr = np.repeat(np.repeat(arr[::16, ::16], 16, 0), 16, 1)  # smooth-ish blocks
  data = _encode(Image.fromarray(arr), "JPEG", quality=95)
  img = preprocess.open_image(data, 16, 10**8, draft_side=64)
  assert min(img.size) >= 64 and img.size[0] < 1600  # decoded at reduced scale
  full = preprocess.resize_and_crop(Image.fromarray(arr), 64)
  fast = preprocess.resize_and_crop(preprocess.to_rgb(img), 64)
  assert np.abs(full.astype(int) - fast.astype(int)).mean() < 12


def test_captions_normalised_truncated_and_counted():
  norm = preprocess.normalize_caption
  assert norm("  ﬁne  cafe\u0301\u200b\n\tbar\x00baz ", 100) == ("fine café bar baz", False)
  assert norm(b"caf\xc3\xa9", 100) == ("café", False)
  assert norm("one two three four", 12) == ("one two", True)
  assert norm("abcdefghijklmnop", 5) == ("abcde", True)
  assert norm("one two", 3) == ("one", True)
  for empty in ["", "   \n", "\u200b\u200b"]:
    with pytest.raises(preprocess.SkipExample) as e:
      norm(empty, 10)
    assert e.value.reason == "empty_caption"
  good = _encode(_rgb(), "PNG")
  raws = [RawExample("a", "short", image_bytes=good),
          RawExample("b", "word " * 50, image_bytes=good),
          RawExample("c", " \t ", image_bytes=good),
          RawExample("d", None, image_bytes=good),
          RawExample("e", "fine", error="corrupt_record"),
          RawExample("f", "no image")]
  counter = SkipCounter()
  out = list(preprocess.preprocess_stream(raws, OPTS, counter))
  assert [x["id"] for x in out] == ["a", "b"]
  assert len(out[1]["caption"]) <= 40 and not out[1]["caption"].endswith(" ")
  assert dict(counter.skipped) == {"empty_caption": 1, "missing_caption": 1,
                                   "corrupt_record": 1, "missing_image": 1}
  assert dict(counter.notes) == {"caption_truncated": 1}


def test_arrays_and_prerendered_images():
  opts = PreprocessOptions(resolutions=(32,), min_size=16)
  counter = SkipCounter()
  raws = [RawExample("u16", "c", image_array=np.full((40, 40, 1), 65535, np.uint16)),
          RawExample("small", "c", image_array=np.zeros((8, 40, 3), np.uint8)),
          RawExample("float", "c", image_array=np.zeros((40, 40, 3), np.float32)),
          RawExample("pre", "c", images={32: np.ones((32, 32, 3), np.uint8)})]
  out = list(preprocess.preprocess_stream(raws, opts, counter))
  assert [x["id"] for x in out] == ["u16", "pre"]
  assert (out[0]["image"][32] == 255).all()
  assert dict(counter.skipped) == {"too_small": 1, "unsupported_mode": 1}
  with pytest.raises(ValueError, match="skip reason"):
    counter.skip("bogus")
