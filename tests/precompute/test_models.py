"""Precompute's tokenizer follows the trained tokenizer workdir it is given."""
from configs import shapes_precompute, vqgan_tiny
from muse_jax.precompute.models import tokenizer_model_config
from tests.sampling.test_pipeline import save_random_stage


def test_the_tokenizer_workdir_config_gives_the_model_shapes(tmp_path):
  trained = vqgan_tiny.get_config()
  trained.model.codebook_size = 32
  save_random_stage(trained, str(tmp_path), seed=0)
  section = shapes_precompute.tokenizer_section(16, **trained.model.to_dict())
  section.model.codebook_size = 64  # what the precompute config says
  assert tokenizer_model_config(section, "tokenizer").codebook_size == 64  # no weights yet
  section.weights = str(tmp_path)
  assert tokenizer_model_config(section, "tokenizer").codebook_size == 32
