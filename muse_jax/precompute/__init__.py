"""Precompute: VQ tokens and frozen T5 embeddings of raw images and captions, written as shards.

run.py (the library behind the command), models.py (the frozen encoders on the mesh), shards.py
(resumable shard writing); `python -m muse_jax.precompute` is __main__.py.
"""
