"""Fixtures shared by the precompute tests."""
import pytest

from configs import shapes_precompute
from muse_jax.parallel.mesh import make_mesh
from muse_jax.precompute import run as precompute


@pytest.fixture(scope="session")
def precompute_models(tmp_path_factory):
  """Tiny random precompute models (f8 VQ tokenizers at 32 and 64 px, T5 'tiny') and the
  spiece.model they use, built once: random init is the slow part on CPU (tens of seconds on
  2 cores)."""
  config = shapes_precompute.get_config()
  config.tokenizer.resolution, config.sr_tokenizer.resolution = 32, 64
  # The spiece.model is trained on the captions of test_precompute.py's 60 train scenes, as
  # its runs train theirs: subprocess runs there must tokenise as these models do.
  config.data.shapes.num_train = 60
  config.precompute.spiece_corpus_size = 200
  spiece = precompute.ensure_spiece_model(config, str(tmp_path_factory.mktemp("spiece")))
  return precompute.build_models(config, make_mesh(config.mesh), spiece), spiece
