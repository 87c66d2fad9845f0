"""Golden shardings: which mesh axes each parameter and optimizer statistic uses."""
import jax
from jax.sharding import PartitionSpec as P

from configs import base_632m, tiny
from muse_jax.parallel import sharding as shd
from muse_jax.parallel.mesh import make_mesh
from muse_jax.training.base_stage import BaseStage


def stage_for(module, **mesh):
  c = module.get_config()
  c.mesh.update(mesh)
  return BaseStage(c, make_mesh(c.mesh))


def specs(tree):
  return {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))}


def test_base_632m_parameter_shardings_on_2x2x2():
  stage = stage_for(base_632m, data=2, fsdp=2, tensor=2)
  s = specs(stage.param_shardings())
  blk = "['stack']['blocks']"
  assert s["['token_embed']"] == P("tensor", "fsdp")
  assert s["['pos_embed']"] == P(None, "fsdp")
  assert s[f"{blk}['self_attn']['qkv']['kernel']"] == P(None, "fsdp", None, "tensor", None)
  assert s[f"{blk}['self_attn']['out']['kernel']"] == P(None, "tensor", None, "fsdp")
  assert s[f"{blk}['cross_attn']['kv']['kernel']"] == P(None, "fsdp", None, "tensor", None)
  assert s[f"{blk}['mlp']['wi']['kernel']"] == P(None, "fsdp", "tensor")
  assert s[f"{blk}['mlp']['wo']['kernel']"] == P(None, "tensor", "fsdp")
  assert s[f"{blk}['norm_mlp']['scale']"] == P(None, "fsdp")
  assert s["['head']['kernel']"] == P("fsdp", "tensor")
  assert s["['text_proj']['kernel']"] == P(None, "fsdp")


def test_adafactor_factored_moments_follow_their_parameters():
  stage = stage_for(base_632m, data=2, fsdp=2, tensor=2)
  abstract = jax.eval_shape(stage.init_state, jax.random.key(0))
  s = specs(stage.state_shardings(abstract).opt_state)
  wi = [v for k, v in s.items() if "['mlp']['wi']['kernel']" in k]
  # v_row drops the last dim, v_col the second-to-last; momentum matches the parameter
  assert P(None, "fsdp") in wi and P(None, "tensor") in wi and P(None, "fsdp", "tensor") in wi


def test_indivisible_dims_fall_back_to_replication():
  mesh = make_mesh(dict(data=1, fsdp=8, tensor=1))
  rules = tiny.get_config().mesh.rules
  assert shd.logical_to_spec(("embed", "mlp"), mesh, rules, (12, 64)) == P(None, None)
  assert shd.logical_to_spec(("embed", "mlp"), mesh, rules, (16, 64)) == P("fsdp", None)
  # a mesh axis is used at most once per array
  assert shd.logical_to_spec(("act_batch", "embed"), mesh, rules, (16, 16)) == P("fsdp", None)


def test_constrain_is_a_noop_outside_activation_rules():
  x = jax.numpy.ones((8, 4))
  assert shd.constrain(x, ("act_batch", None)) is x


def test_per_shard_runs_on_local_shards_and_matches_the_whole():
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = tiny.get_config().mesh.rules
  x = jax.numpy.arange(8 * 3 * 4, dtype=jax.numpy.float32).reshape(8, 3, 4)
  seen = []

  def fn(a):
    seen.append(a.shape)
    return a * 2 + a.sum(axis=1, keepdims=True)  # independent along batch and the last dim

  axes = ("act_batch", None, "act_heads")
  assert shd.per_shard(fn, (x,), (axes,), axes) is not None and seen == [(8, 3, 4)]
  seen.clear()
  with shd.activation_rules(mesh, rules):
    out = jax.jit(lambda a: shd.per_shard(fn, (a,), (axes,), axes))(x)
  assert (2, 3, 2) in seen  # batch over data x fsdp, the last dim over tensor
  assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")
  assert (jax.numpy.asarray(out) == fn(x)).all()
