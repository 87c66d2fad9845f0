"""Test set-up: 8 fake CPU devices and the test XLA flags (tests/xla_env.py), set before JAX is
imported anywhere, and one persistent compilation cache for the whole run."""
import os
import shutil
import sys
import tempfile

import pytest

from tests.xla_env import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same tiny steps again: in other test modules (new jitted functions,
# the same programs) and in the CLI subprocesses they start, which inherit this environment
# (as do the xdist workers, from the process that sets it first). A fresh directory per run,
# removed at its end, so no run reads another's entries.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="muse_jax_tests_jit_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def _forget_gcs_clients():
  """gcsfs instances keep the endpoint and credentials they looked up when made, and fsspec and
  epath keep the instances: any made before the environment changes are dropped."""
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs():
  """A GCS emulator on localhost for the session, with this process's environment pointed at
  it (subprocesses inherit it) and its clients made anew: tests/gcs_emulator.py. Yields the
  emulator (`.env`, BUCKET)."""
  from tests.gcs_emulator import GcsEmulator
  emulator = GcsEmulator()
  saved = {k: os.environ.get(k) for k in emulator.env}
  os.environ.update(emulator.env)
  _forget_gcs_clients()
  try:
    yield emulator
  finally:  # the server itself stops when this process exits (tests/gcs_emulator.py)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _forget_gcs_clients()


@pytest.fixture(scope="session")
def precompute_models(tmp_path_factory):
  """Tiny random precompute models (f8 VQ tokenizers at 32 and 64 px, T5 'tiny') and the
  spiece.model they use, built once for the session (tests/precompute, tests/storage): random
  init is the slow part on CPU (tens of seconds on 2 cores)."""
  from configs import shapes_precompute
  from muse_jax.parallel.mesh import make_mesh
  from muse_jax.precompute import run as precompute
  config = shapes_precompute.get_config()
  config.tokenizer.resolution, config.sr_tokenizer.resolution = 32, 64
  # The spiece.model is trained on the captions of test_precompute.py's 60 train scenes, as
  # its runs train theirs: subprocess runs there must tokenise as these models do.
  config.data.shapes.num_train = 60
  config.precompute.spiece_corpus_size = 200
  spiece = precompute.ensure_spiece_model(config, str(tmp_path_factory.mktemp("spiece")))
  return precompute.build_models(config, make_mesh(config.mesh), spiece), spiece
