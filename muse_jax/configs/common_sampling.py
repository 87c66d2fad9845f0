"""Shared `sampling` config section: parallel decoding and zero-shot editing defaults.

Use it from a runnable config:

  from muse_jax.configs import common_sampling
  config.sampling = common_sampling.get_sampling_config()

and override on the command line, e.g. `--config.sampling.guidance_scale=6`.
Values from the Muse paper (arXiv 2301.00704) are marked; the rest are documented choices.
"""
import ml_collections
from ml_collections import config_dict


def get_sampling_config() -> ml_collections.ConfigDict:
  """Returns the `sampling` ConfigDict (see field comments)."""
  c = ml_collections.ConfigDict()
  c.base_steps = 24  # Muse Sec. 2.8.
  c.sr_steps = 8  # Muse Sec. 2.8.
  c.schedule = "cosine"  # Muse Sec. 2.8; names in muse_jax.sampling.mask_schedule.
  # Guidance t in l_g = (1 + t) l_c - t l_u (Muse Sec. 2.7). Muse does not publish the value for
  # generation; 4.0 matches its editing setting. 0 disables CFG (no unconditional forward).
  c.guidance_scale = 4.0
  c.sr_guidance_scale = 4.0
  # 'linear': t ramps from 0 at the first step to guidance_scale at the last (Muse: "increased
  # linearly"); 'constant': t = guidance_scale at every step.
  c.guidance_schedule = "linear"
  # Sampling temperature; 0 = argmax. If temperature_end is set, it ramps linearly to it
  # (aMUSEd anneals 2 -> 0). Not published for Muse.
  c.temperature = 1.0
  c.temperature_end = config_dict.placeholder(float)
  # Gumbel noise on confidences, annealed linearly to 0 (MaskGIT default 4.5).
  c.choice_temperature = 4.5
  c.top_k = config_dict.placeholder(int)  # None = full distribution.
  # Unroll the decoding loop into straight-line code (base/SR decode; not mask-free editing):
  # longer compiles, no per-step loop round trip. See benchmarks/sample.py for its effect.
  c.unroll_loop = False
  c.negative_prompt = ""  # Empty: the unconditional branch uses the null condition.

  # Zero-shot editing (Muse Sec. 3.3).
  c.editing = ml_collections.ConfigDict()
  # Inpainting/outpainting reuse base_steps/sr_steps and the guidance settings above.
  c.editing.mask_free_iterations = 100  # Muse Sec. 3.3.2.
  c.editing.mask_free_resample_fraction = 0.08  # Muse Sec. 3.3.2.
  c.editing.mask_free_guidance_scale = 4.0  # Muse Sec. 3.3.2 (constant).
  c.editing.mask_free_top_k = 3  # Muse Sec. 3.3.2.
  c.editing.mask_free_temperature = 1.0  # Not published.
  return c
