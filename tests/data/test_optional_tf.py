"""TensorFlow is the `tf` install extra: the paths that need it stop with one line naming the
extra where it cannot be imported, and the default paths never import it.

A host without TensorFlow is a `tensorflow` (and `tensorflow_datasets`) package first on the
path whose import raises ModuleNotFoundError, as a missing package does; in this process,
`sys.modules[name] = None` does the same.
"""
import os
import subprocess
import sys
import types

import pytest

from configs import tiny
from muse_jax.cli import EXIT_USER_ERROR, run_or_exit
from muse_jax.configs.checks import ConfigError
from muse_jax.data import input_pipeline, raw_sources, tf_import
from muse_jax.data.sources import tfds_captions
from muse_jax.training.base_stage import BaseStage
from muse_jax.training.inputs import open_input
from tests.data.test_input_pipeline import write_dataset
from tests.training.helpers import REPO, cli_env


@pytest.fixture(scope="module")
def no_tf_path(tmp_path_factory):
  """A folder to put first on PYTHONPATH: importing TensorFlow or TFDS from it fails."""
  root = tmp_path_factory.mktemp("no_tf")
  for name in ("tensorflow", "tensorflow_datasets"):
    os.makedirs(root / name)
    (root / name / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
  return str(root)


@pytest.fixture
def without_tf(monkeypatch):
  for name in ("tensorflow", "tensorflow_datasets"):
    monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ModuleNotFoundError


def test_precompute_from_tfrecord_without_tensorflow_is_one_line_exit_2(no_tf_path, tmp_path):
  """Reported when the sources are built, before the models load (no weights are given here:
  loading the models would fail first, on the missing T5 weights)."""
  env = cli_env()
  env["PYTHONPATH"] = no_tf_path + os.pathsep + env["PYTHONPATH"]
  proc = subprocess.run(
      [sys.executable, "-m", "muse_jax.precompute", "--config=configs/precompute_tfrecord.py",
       f"--workdir={tmp_path / 'out'}", "--config.data.tfrecord.pattern=/data/*.tfrecord"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr
  assert [l for l in lines if l.startswith("error:")] == [lines[-1]]
  assert lines[-1] == ("error: data.source=tfrecord needs TensorFlow, which is not installed: "
                       "pip install -e '.[tf]' (or add TF=1 to make install)")
  assert not os.path.exists(tmp_path / "out" / "shards")


def test_every_tf_path_names_the_extra(without_tf):
  """Raw sources when built, the tf reader when built, TFDS caption sets when read."""
  cases = [
      ("data.source=tfrecord", lambda: raw_sources.TFRecordSource("/data/*.tfrecord")),
      ("data.source=tfds", lambda: raw_sources.TFDSSource("coco_captions", None)),
      ("data.reader=tf", lambda: input_pipeline.TFRecordTokenSource(
          [], [], None, {}, batch=1, seed=0, shuffle=False, shuffle_buffer=1)),
      ("--captions=tfds:coco:val", lambda: tfds_captions.read(
          "tfds:coco:val", "coco", "val", "captions/text", None))]
  for what, build in cases:
    with pytest.raises(tf_import.MissingTensorFlow) as err:
      build()
    assert str(err.value) == (f"{what} needs TensorFlow, which is not installed: "
                              f"{tf_import.INSTALL}")
    # Every entry point maps ConfigError (a ValueError) to exit status 2; code that probes for
    # an optional module catches ImportError.
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ImportError)
    assert err.value.name == "tensorflow"


def test_tfds_without_tensorflow_datasets_names_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))  # present
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(tf_import.MissingTensorFlow, match=r"^data.source=tfds needs TensorFlow "
                     r"Datasets, which is not installed: pip install -e '\.\[tf\]'"):
    raw_sources.TFDSSource("coco_captions", None)


def test_training_with_the_tf_reader_without_tensorflow_exits_2(tmp_path, without_tf, capsys):
  """The trainer's input as train.py runs it: run_or_exit with no extra user errors."""
  write_dataset(str(tmp_path))
  config = tiny.get_config()
  config.model.update(dict(grid_size=4, text_length=8))
  config.data.update(dict(source="precomputed", path=str(tmp_path), reader="tf"))
  stage = BaseStage.__new__(BaseStage)  # the input needs only the config and features()
  stage.config = config
  with pytest.raises(SystemExit) as exit_:
    run_or_exit(lambda: open_input(stage, "train", 0, 1))
  assert exit_.value.code == EXIT_USER_ERROR
  assert capsys.readouterr().err == (f"error: data.reader=tf needs TensorFlow, which is not "
                                     f"installed: {tf_import.INSTALL}\n")


def test_the_default_paths_do_not_import_tensorflow():
  """The trainer, the grain reader, precompute's library and caption sets import no TensorFlow
  until a tf path runs (tests/data/test_input_pipeline.py reads batches without it)."""
  code = ("import sys\n"
          "import muse_jax.train, muse_jax.training.loop, muse_jax.data.input_pipeline\n"
          "import muse_jax.data.grain_reader, muse_jax.precompute.run, muse_jax.data.tf_import\n"
          "import muse_jax.evaluation.captions, muse_jax.evaluation.runner\n"
          "print(sorted(m for m in sys.modules\n"
          "             if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True,
                        text=True, timeout=120, check=True)
  assert proc.stdout.strip() == "[]"
