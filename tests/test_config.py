"""Bad configs fail early with one line that says what to change."""
import pytest

from configs import base_3b, base_632m, tiny
from muse_jax.configs import common
from muse_jax.configs.checks import ConfigError
from muse_jax.parallel.mesh import MeshError, make_mesh
from muse_jax.training import registry
from muse_jax.training.base_stage import BaseStage
from muse_jax.training.loop import Trainer
from tests.training.helpers import run_cli


@pytest.mark.parametrize("module", [tiny, base_632m, base_3b])
def test_shipped_configs_validate(module):
  registry.validate(module.get_config())


def test_unknown_key_suggests_the_closest_name():
  c = tiny.get_config()
  c.model.hiden_size = 3
  with pytest.raises(ConfigError, match=r"unknown config key config.model.hiden_size; "
                     r"did you mean config.model.hidden_size\?"):
    registry.validate(c)


@pytest.mark.parametrize("section,key,value,message", [
    ("model", "attention", "flash", "choose xla, cudnn, auto or pallas"),
    ("model", "dtype", "bfloat17", "is not a dtype"),
    ("model", "num_layers", 0, "must be a positive integer"),
    ("train", "grad_accum", 3, "not divisible by train.grad_accum=3"),
    ("optimizer", "name", "sgd", "choose adafactor or adamw"),
    ("objective", "cfg_dropout", 1.5, "must be in"),
    ("model", "remat", "some", None),
])
def test_invalid_values(section, key, value, message):
  c = tiny.get_config()
  c[section][key] = value
  if message is None:  # checked when the model is built
    with pytest.raises(ValueError, match="model.remat='some'"):
      Trainer(c, "/tmp/unused")
    return
  with pytest.raises(ConfigError, match=message):
    registry.validate(c)


def test_cudnn_attention_needs_text_length_multiple_of_64():
  c = base_632m.get_config()
  c.model.update(dict(attention="cudnn", text_length=77))
  with pytest.raises(ConfigError, match="text_length=77: cuDNN flash attention needs a multiple"):
    registry.validate(c)


def test_mesh_size_must_match_devices():
  c = tiny.get_config()
  c.mesh.update(dict(data=3, fsdp=1, tensor=1))
  with pytest.raises(MeshError, match="data\\*fsdp\\*tensor = 3 but there are 8 devices"):
    make_mesh(c.mesh)
  c.mesh.update(dict(data=-1, fsdp=-1))
  with pytest.raises(MeshError, match="only one axis may be -1"):
    make_mesh(c.mesh)
  c.mesh.update(dict(data=-1, fsdp=3))
  with pytest.raises(MeshError, match="not divisible by the fixed axes"):
    make_mesh(c.mesh)
  c.mesh.update(dict(data=-1, fsdp=2, tensor=2))
  assert dict(make_mesh(c.mesh).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_batch_must_divide_data_parallel_size():
  c = tiny.get_config()
  c.train.batch_size = 12
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the data-parallel "
                     "size 8"):
    Trainer(c, "/tmp/unused")


def test_cli_reports_bad_config_in_one_line(tmp_path):
  proc = run_cli(str(tmp_path), "--config.mesh.data=3", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: mesh: data*fsdp*tensor = 3")


def test_registry_knows_the_stages():
  assert registry.get_stage("base").reference_config().model.hidden_size > 0
  with pytest.raises(ConfigError, match="config.stage='gan'; choose one of vqgan, base, sr"):
    registry.get_stage("gan")


class _ToyStage(BaseStage):
  """A stage added as the registry says: one class, one line in STAGES."""
  name = "toy"

  @classmethod
  def reference_config(cls):
    return common.get_config("toy")

  @classmethod
  def validate(cls, config):
    if config.model.num_layers != 1:
      raise ConfigError("toy stages have one layer")
    super().validate(config)


def test_a_registered_stage_is_validated_built_and_trained(monkeypatch, tmp_path):
  monkeypatch.setitem(registry.STAGES, "toy", _ToyStage)
  c = tiny.get_config()
  c.stage = "toy"
  with pytest.raises(ConfigError, match="toy stages have one layer"):
    registry.validate(c)
  c.model.num_layers = 1
  c.train.update(num_steps=2, eval_every=0, tensorboard=False)
  registry.validate(c)
  abstract = registry.stage_model(c).abstract_params()
  assert abstract["stack"]["blocks"]
  result = Trainer(c, str(tmp_path)).run()
  assert result.step == 2
