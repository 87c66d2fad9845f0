"""Raw sources stored as sharded files (WebDataset tar shards, parquet) and their path helpers.

`muse_jax.data.raw_sources` chooses a source by config; the modules here do not import it.
"""
