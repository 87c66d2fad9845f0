"""T5 weight loading: HF safetensors key checks, T5X checkpoints (msgpack + zarr), safety."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization
from safetensors.numpy import save_file

from muse_jax.encoders.text_encoder import TextEncoder
from muse_jax.models import t5
from muse_jax.parallel.mesh import make_mesh
from muse_jax.weights.safetensors_io import WeightsError
from muse_jax.weights.t5_hf import load_hf_params
from muse_jax.weights.t5x import iter_t5x_params, load_t5x_params

CFG = t5.CONFIGS["tiny"]  # d 32, ff 48, 3 heads x 8, 2 layers, vocab 256


def hf_tensors(cfg, seed=0):
  """Random weights under HF T5EncoderModel names and (out, in) layouts."""
  rng = np.random.default_rng(seed)
  d, f, inner = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv

  def r(*shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
  out = {"shared.weight": rng.standard_normal((cfg.vocab_size, d)).astype(np.float32),
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
             rng.standard_normal((cfg.num_buckets, cfg.num_heads)).astype(np.float32),
         "encoder.final_layer_norm.weight": 1 + 0.3 * r(d)}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer"
    out.update({
        f"{p}.0.layer_norm.weight": 1 + 0.3 * r(d),
        f"{p}.0.SelfAttention.q.weight": r(inner, d),
        f"{p}.0.SelfAttention.k.weight": r(inner, d),
        f"{p}.0.SelfAttention.v.weight": r(inner, d),
        f"{p}.0.SelfAttention.o.weight": r(d, inner),
        f"{p}.1.layer_norm.weight": 1 + 0.3 * r(d),
        f"{p}.1.DenseReluDense.wi_0.weight": r(f, d),
        f"{p}.1.DenseReluDense.wi_1.weight": r(f, d),
        f"{p}.1.DenseReluDense.wo.weight": r(d, f),
    })
  return out


def t5x_target(hf, cfg):
  """The same weights under T5X names/layouts (kernels (in, out), heads merged)."""
  tgt = {"token_embedder/embedding": hf["shared.weight"],
         "encoder/relpos_bias/rel_embedding":
             hf["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
         "encoder/encoder_norm/scale": hf["encoder.final_layer_norm.weight"]}
  for i in range(cfg.num_layers):
    p, t = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    tgt[f"{t}/pre_attention_layer_norm/scale"] = hf[f"{p}.0.layer_norm.weight"]
    tgt[f"{t}/pre_mlp_layer_norm/scale"] = hf[f"{p}.1.layer_norm.weight"]
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      tgt[f"{t}/attention/{ours}/kernel"] = hf[f"{p}.0.SelfAttention.{theirs}.weight"].T
    for name in ("wi_0", "wi_1", "wo"):
      tgt[f"{t}/mlp/{name}/kernel"] = hf[f"{p}.1.DenseReluDense.{name}.weight"].T
  tgt["decoder/decoder_norm/scale"] = np.ones(cfg.d_model, np.float32)  # ignored
  return {k: np.ascontiguousarray(v) for k, v in tgt.items()}


def _nest(flat):
  tree = {}
  for key, value in flat.items():
    node = tree
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return tree


def write_t5x(directory, target, inline=(), spec_paths=None, chunking=None):
  """Writes a T5X checkpoint: msgpack `checkpoint` + one gzip zarr dir per array.

  Names in `inline` are stored inline in the msgpack; `spec_paths` overrides the relative
  path stored in a spec (to forge malicious checkpoints); `chunking` maps a name to extra
  zarr metadata (chunks, dimension_separator), one chunk per array otherwise.
  """
  os.makedirs(directory, exist_ok=True)
  leaves = {}
  for name, arr in target.items():
    if name in inline:
      leaves[name] = arr
      continue
    rel = "target." + name.replace("/", ".")
    metadata = {"shape": list(arr.shape), "chunks": list(arr.shape), "dtype": "<f4",
                "compressor": {"id": "gzip", "level": 1}, **(chunking or {}).get(name, {})}
    ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                           "path": os.path.join(directory, rel)},
             "metadata": metadata}, create=True, delete_existing=True).result().write(
                 arr).result()
    rel = (spec_paths or {}).get(name, rel)
    leaves[name] = {"driver": "zarr", "dtype": "float32",
                    "kvstore": {"driver": "file", "path": rel}, "metadata": metadata}
  state = {"version": 3, "optimizer": {
      "target": _nest(leaves),
      "state": {"step": np.asarray(1000, np.int32), "param_states": {}}}}
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  return directory


@pytest.fixture(scope="module")
def weights():
  return hf_tensors(CFG)


def _flat(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_hf_single_and_sharded_index(weights, tmp_path):
  save_file(weights, str(tmp_path / "model.safetensors"))
  single = load_hf_params(str(tmp_path / "model.safetensors"), CFG)
  q = weights["encoder.block.1.layer.0.SelfAttention.q.weight"]
  np.testing.assert_array_equal(single["layers"][1]["attention"]["query"]["kernel"],
                                q.T.reshape(32, 3, 8))
  o = weights["encoder.block.0.layer.0.SelfAttention.o.weight"]
  np.testing.assert_array_equal(single["layers"][0]["attention"]["out"]["kernel"],
                                o.T.reshape(3, 8, 32))
  # Sharded: two files + index json; the embedding under its alias; a decoder key ignored.
  shard = tmp_path / "sharded"
  shard.mkdir()
  keys = sorted(weights)
  parts = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
           "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
  weight_map = {}
  for fname, ks in parts.items():
    tensors = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): weights[k]
               for k in ks}
    if fname.startswith("model-00002"):
      tensors["decoder.final_layer_norm.weight"] = np.ones(32, np.float32)
    save_file(tensors, str(shard / fname))
    weight_map.update({k: fname for k in tensors})
  (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  sharded = load_hf_params(str(shard), CFG)
  a, b = _flat(single), _flat(sharded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_hf_errors_name_keys(weights, tmp_path):
  bad = dict(weights)
  del bad["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  bad["encoder.block.7.layer.0.SelfAttention.q.weight"] = np.zeros((24, 32), np.float32)
  bad["encoder.final_layer_norm.weight"] = np.ones(31, np.float32)
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(WeightsError) as e:
    load_hf_params(str(tmp_path / "bad.safetensors"), CFG)
  msg = str(e.value)
  assert "missing: encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg
  assert "unexpected: encoder.block.7.layer.0.SelfAttention.q.weight" in msg
  assert "encoder.final_layer_norm.weight: file (31,) vs model (32,)" in msg
  # A different size in the config is a shape error, not a silent load.
  save_file(weights, str(tmp_path / "ok.safetensors"))
  with pytest.raises(WeightsError, match="misshapen"):
    load_hf_params(str(tmp_path / "ok.safetensors"), t5.CONFIGS["tiny_even"])


def test_t5x_matches_safetensors(weights, tmp_path):
  save_file(weights, str(tmp_path / "model.safetensors"))
  target = t5x_target(weights, CFG)
  # Norm scales inline in the msgpack (as small T5X arrays may be), the rest in zarr; one
  # attention kernel stored with heads split out.
  target["encoder/layers_1/attention/key/kernel"] = (
      target["encoder/layers_1/attention/key/kernel"].reshape(32, 3, 8))
  inline = [k for k in target if k.endswith("/scale")]
  # Several chunks, the last one partial; nested chunk keys ("0/1") for another array.
  chunking = {"token_embedder/embedding": {"chunks": [100, 32]},
              "encoder/layers_0/mlp/wi_0/kernel": {"chunks": [16, 20],
                                                   "dimension_separator": "/"}}
  ckpt = write_t5x(str(tmp_path / "checkpoint_1000"), target, inline=inline, chunking=chunking)
  assert os.path.isdir(os.path.join(ckpt, "target.encoder.layers_0.attention.query.kernel"))
  assert os.path.isfile(os.path.join(ckpt, "target.token_embedder.embedding", "2.0"))
  assert os.path.isfile(os.path.join(ckpt, "target.encoder.layers_0.mlp.wi_0.kernel", "1", "2"))
  from_t5x = load_t5x_params(ckpt, CFG)
  from_hf = load_hf_params(str(tmp_path / "model.safetensors"), CFG)
  a, b = _flat(from_t5x), _flat(from_hf)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Same outputs through the encoder, loaded by config from each format.
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  kw = dict(mesh=mesh, dtype=jnp.float32, param_dtype=jnp.float32,
            output_dtype=jnp.float32, max_length=12)
  ids = np.array([[5, 9, 200, 1] + [0] * 8, [7] * 11 + [1]], np.int32)
  mask = (np.arange(12)[None] < np.array([[4], [12]])).astype(np.int32)
  out_t5x = TextEncoder(CFG, iter_t5x_params(ckpt, CFG), **kw).encode_tokens(ids, mask)[0]
  out_hf = TextEncoder(CFG, from_hf, **kw).encode_tokens(ids, mask)[0]
  np.testing.assert_array_equal(np.asarray(out_t5x), np.asarray(out_hf))
  assert np.abs(np.asarray(out_hf)).max() > 0


def test_t5x_missing_and_misshapen_keys(weights, tmp_path):
  target = t5x_target(weights, CFG)
  del target["encoder/layers_1/mlp/wo/kernel"]
  target["encoder/encoder_norm/scale"] = np.ones(7, np.float32)
  target["encoder/extra/kernel"] = np.ones(3, np.float32)
  ckpt = write_t5x(str(tmp_path / "ckpt"), target, inline=["encoder/extra/kernel"])
  with pytest.raises(WeightsError) as e:
    load_t5x_params(ckpt, CFG)
  msg = str(e.value)
  assert "missing: encoder/layers_1/mlp/wo/kernel" in msg
  assert "unexpected: encoder/extra/kernel" in msg
  assert "encoder/encoder_norm/scale: file (7,) vs model (32,)" in msg
  with pytest.raises(FileNotFoundError):
    load_t5x_params(str(tmp_path), CFG)


@pytest.mark.parametrize("kind", ["parent", "absolute", "url", "symlink", "driver", "kvstore"])
def test_t5x_refuses_specs_outside_the_checkpoint(weights, tmp_path, kind):
  target = t5x_target(weights, CFG)
  victim = "encoder/layers_0/mlp/wi_0/kernel"
  # A real zarr array outside the checkpoint that an unchecked spec would happily read.
  outside = str(tmp_path / "outside")
  ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": outside},
           "metadata": {"shape": [32, 48], "chunks": [32, 48], "dtype": "<f4"}},
          create=True).result().write(np.zeros((32, 48), np.float32)).result()
  ckpt = str(tmp_path / "ckpt")
  rel = {"parent": "../outside", "absolute": outside, "url": "file://" + outside,
         "symlink": "target.link", "driver": "target.encoder.layers_0.mlp.wi_0.kernel",
         "kvstore": "target.encoder.layers_0.mlp.wi_0.kernel"}[kind]
  write_t5x(ckpt, target, spec_paths={victim: rel})
  if kind == "symlink":
    os.symlink(outside, os.path.join(ckpt, "target.link"))
  if kind in ("driver", "kvstore"):  # forge the spec's driver instead of its path
    with open(os.path.join(ckpt, "checkpoint"), "rb") as f:
      state = serialization.msgpack_restore(f.read())
    node = state["optimizer"]["target"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    if kind == "driver":
      node["driver"] = "json"
    else:
      node["kvstore"] = {"driver": "http", "base_url": "http://example.com/", "path": rel}
    with open(os.path.join(ckpt, "checkpoint"), "wb") as f:
      f.write(serialization.msgpack_serialize(state))
  with pytest.raises(WeightsError, match="encoder/layers_0/mlp/wi_0/kernel"):
    load_t5x_params(ckpt, CFG)


EMBEDDING = "target.token_embedder.embedding"


def _outside_array(tmp_path, shape):
  """A zarr array outside the checkpoint, of ones, with one chunk `0.0`."""
  outside = str(tmp_path / "outside")
  ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": outside},
           "metadata": {"shape": list(shape), "chunks": list(shape), "dtype": "<f4",
                        "compressor": {"id": "gzip", "level": 1}}},
          create=True).result().write(np.ones(shape, np.float32)).result()
  return outside


@pytest.mark.parametrize("file", ["0.0", ".zarray", "checkpoint"])
def test_t5x_refuses_files_symlinked_outside_the_checkpoint(weights, tmp_path, file):
  """The array's directory is inside, but one file in it (or the msgpack) links outside."""
  ckpt = os.path.realpath(write_t5x(str(tmp_path / "ckpt"), t5x_target(weights, CFG)))
  outside = _outside_array(tmp_path, (CFG.vocab_size, CFG.d_model))
  if file == "checkpoint":
    link, target = os.path.join(ckpt, "checkpoint"), str(tmp_path / "checkpoint.outside")
    os.replace(link, target)
  else:
    link, target = os.path.join(ckpt, EMBEDDING, file), os.path.join(outside, file)
    os.remove(link)
  os.symlink(target, link)
  with pytest.raises(WeightsError, match=re.escape(link) + " resolves to .*outside the checkpoint"):
    load_t5x_params(ckpt, CFG)


@pytest.mark.parametrize("file", ["1.0", ".zarray"])
def test_t5x_missing_chunk_or_metadata_is_an_error(weights, tmp_path, file):
  ckpt = os.path.realpath(write_t5x(
      str(tmp_path / "ckpt"), t5x_target(weights, CFG),
      chunking={"token_embedder/embedding": {"chunks": [100, 32]}}))
  gone = os.path.join(ckpt, EMBEDDING, file)
  os.remove(gone)
  with pytest.raises(WeightsError, match=re.escape(gone) + " is missing"):
    load_t5x_params(ckpt, CFG)


def test_t5x_symlinks_inside_the_checkpoint_are_followed(weights, tmp_path):
  target = t5x_target(weights, CFG)
  ckpt = write_t5x(str(tmp_path / "ckpt"), target)
  chunk = os.path.join(ckpt, EMBEDDING, "0.0")
  os.replace(chunk, os.path.join(ckpt, "embedding_chunk"))
  os.symlink("../embedding_chunk", chunk)  # relative, resolving inside the checkpoint
  loaded = load_t5x_params(ckpt, CFG)
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                target["token_embedder/embedding"])


def test_t5x_undecodable_chunk_names_the_array(weights, tmp_path):
  ckpt = write_t5x(str(tmp_path / "ckpt"), t5x_target(weights, CFG))
  with open(os.path.join(ckpt, EMBEDDING, "0.0"), "wb") as f:
    f.write(b"not gzip")
  with pytest.raises(WeightsError, match="token_embedder/embedding: cannot decode"):
    load_t5x_params(ckpt, CFG)
