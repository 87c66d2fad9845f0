"""The `data` config section: raw source, preprocessing and the synthetic shapes dataset.

Used by the configs of every stage, e.g. `config.data = common_data.data_config()`, and
overridden on the command line, e.g.
  --config.data.source=folder --config.data.folder.root=/data/imgs \
  --config.data.folder.manifest=captions.jsonl
  --config.data.source=shapes --config.data.resolutions='(64,)'
  --config.data.source=webdataset --config.data.webdataset.shards='/data/{00000..00099}.tar'
Read by `muse_jax.data.raw_sources.iterate_examples` (which validates it).
"""
import ml_collections


def scenes_config() -> ml_collections.ConfigDict:
  """Which `shapes` scenes are drawn (`shapes.scene_options`): the precompute's data.shapes
  and the vqgan stage's data.shapes both hold these keys."""
  c = ml_collections.ConfigDict()
  c.max_count = 4  # objects per group, 1..4
  c.two_group_prob = 0.5  # share of "A <relation> B" scenes
  # Objects and the gaps between them this many times their default size (same scenes and
  # captions): > 1 keeps shapes legible at small resolutions.
  c.object_scale = 1.0
  return c


def data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # 'shapes' | 'tfds' | 'tfrecord' | 'folder' | 'webdataset' | 'parquet'; only the matching
  # sub-section is read.
  c.source = "shapes"
  # Square output sides; every example carries an image at each of them.
  c.resolutions = (256, 512)
  c.min_size = 128  # skip images whose shorter side is smaller (counted as too_small)
  c.max_pixels = 64_000_000  # skip larger images from the header, before decoding (too_large)
  c.max_caption_chars = 512  # longer captions are cut at a word boundary (caption_truncated)
  c.random_crop = False  # centre crop; True: random offset along the longer side (VQGAN)
  c.seed = 0  # random crops derive from (seed, example id)
  c.num_workers = 2  # preprocessing threads per process

  c.shapes = ml_collections.ConfigDict()
  c.shapes.split = "train"  # 'train' | 'heldout' (colour-shape pairs never seen in train)
  c.shapes.num_train = 10_000
  c.shapes.num_heldout = 1_000
  c.shapes.seed = 0
  c.shapes.update(scenes_config())
  # 0: scenes are drawn by the preprocessing threads (num_workers); > 0: by that many spawned
  # processes, in order, the same records (drawing is Python that holds the GIL, so threads
  # share one core's worth of it).
  c.shapes.processes = 0

  c.tfds = ml_collections.ConfigDict()
  c.tfds.name = ""  # e.g. 'coco_captions' or 'my_dataset:1.0.0'
  c.tfds.data_dir = ""  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.tfds.split = "train"
  c.tfds.image_key = "image"  # '/' for nested features, e.g. 'image'
  c.tfds.caption_key = "caption"  # e.g. 'captions/text' (the first caption is used)
  c.tfds.id_key = ""  # '' = the TFDS record id

  c.tfrecord = ml_collections.ConfigDict()
  c.tfrecord.pattern = ""  # glob of files of tf.train.Example, e.g. '/data/train-*.tfrecord'
  c.tfrecord.image_key = "image"  # bytes feature with the encoded image
  c.tfrecord.caption_key = "caption"  # bytes feature with the UTF-8 caption
  c.tfrecord.id_key = ""  # '' = '<file name>:<record index>'
  c.tfrecord.compression = ""  # '' | 'GZIP' | 'ZLIB'

  c.folder = ml_collections.ConfigDict()
  c.folder.root = ""
  c.folder.manifest = ""  # JSONL relative to root; '' = sidecar .txt files beside the images
  c.folder.image_key = "file"  # manifest field with the image path (relative to root)
  c.folder.caption_key = "caption"
  c.folder.extensions = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

  # Tar shards as img2dataset writes them: KEY.jpg + KEY.txt and/or KEY.json.
  c.webdataset = ml_collections.ConfigDict()
  # A path, folder, glob, brace pattern ('/data/laion/{00000..00099}.tar'), '::'-separated
  # patterns, or a tuple of them; local or any filesystem etils.epath reads (gs://).
  c.webdataset.shards = ml_collections.FieldReference("", field_type=object)
  c.webdataset.image_extensions = ("jpg", "jpeg", "png", "webp")  # the first one present
  c.webdataset.caption_extension = "txt"  # '' = captions from KEY.json only
  c.webdataset.caption_key = "caption"  # KEY.json field used when there is no caption file

  # Parquet files with an image column (encoded bytes, a path, or Hugging Face's
  # {bytes, path} struct) and a caption column.
  c.parquet = ml_collections.ConfigDict()
  # A path, folder, glob, brace pattern or tuple of them, as webdataset.shards.
  c.parquet.files = ml_collections.FieldReference("", field_type=object)
  c.parquet.image_key = "image"
  c.parquet.caption_key = "caption"
  c.parquet.id_key = ""  # '' = '<file name>:<row>'
  c.parquet.image_root = ""  # relative image paths are under it; '' = the parquet's folder
  return c

