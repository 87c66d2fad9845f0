"""muse_jax: a JAX/Flax trainer for Muse (masked generative transformers for text-to-image)."""
import os

# etils.epath picks its gs:// backend once per process, at its first path operation (local ones
# included), from EPATH_USE_TF: TensorFlow's GCS client when TensorFlow is installed, unless this
# says false. Set here, before any module of the package can touch epath, so that gs:// goes to
# gcsfs whichever module reads a file first (muse_jax/paths.py says why gcsfs).
os.environ.setdefault("EPATH_USE_TF", "false")
