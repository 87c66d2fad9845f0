r"""A pipeline bundle: a whole sampling cascade in one directory, checked when it is loaded.

  write_bundle(OUT, config)        # config: a sampling config (chain.pipeline_config(...), ...)
  Pipeline.from_bundle(OUT)        # muse_jax/sampling/pipeline.py; or sample --bundle=OUT

Layout (every file 0644 and directory 0755 under the usual umask 022):
  manifest.json         written last: format, provenance, the files (bytes and sha256 of each)
                        and, per stage, its tensors {key: shape}; no manifest, no bundle
  pipeline.json         the sampling defaults: {"seed", "sampling", "pipeline"}, the stage
                        sections with workdirs relative to the bundle (their runtime model keys:
                        dtype, attention, ...) and the text encoder section
  base/, sr/            exports of the transformer stages (muse_jax/workdir/export_io.py:
                        model.safetensors [or shards + index], config.json, export.json)
  vq_lo/, vq_hi/        the tokenizers: exports of vqgan stages, or copies of a diffusers
                        VQModel's files; no vq_hi/ when it is vq_lo's tokenizer
  spiece.model          the text encoder's sentencepiece model
  text_encoder/         only with text_encoder="weights": the T5 encoder's parameters as
                        safetensors, in its param_dtype; otherwise the text encoder is the
                        reference in pipeline.json: its size and seed (random weights, as the
                        tiny quick-start T5) or a weights_path to read where the bundle is loaded
                        (not copied, not hashed)

Writes go to OUT.tmp-<pid> and are renamed to OUT when complete; on a gs:// URL (no rename)
they go to OUT directly with manifest.json last, after deleting the old one. Loading verifies
the sha256 of every file the manifest lists and every stage's tensor keys and shapes, and
fails with one line naming the first file or the keys that differ.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections

from muse_jax import paths
from muse_jax.configs import common_pipeline
from muse_jax.sampling import loading
from muse_jax.weights.safetensors_io import SafetensorsReader, WeightsError, check_keys
from muse_jax.workdir import export_io

FORMAT = "muse_jax.pipeline_bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE = "pipeline.json"
SPIECE = "spiece.model"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_CHOICES = ("reference", "weights")
_DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "config.json")


def _json(value) -> str:
  return json.dumps(value, indent=2) + "\n"


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _tuples(value):
  """JSON values back to config values (lists were tuples)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------


def _stage_params(section, name: str, root: Optional[str], which: str):
  """(training config, params, info) of one stage from its workdir or export."""
  workdir = loading.stage_workdir(section, name, root)
  if export_io.is_export(workdir):
    info = export_io.read_info(workdir)
    want = name if name in loading.TRANSFORMER_STAGES else "vqgan"
    if info.get("stage") != want:
      raise ValueError(f"pipeline.{name}.workdir={workdir} is an export of a "
                       f"{info.get('stage')!r} stage; pipeline.{name} needs a {want} stage")
    config, _, params = loading.load_exported(workdir)
    return config, params, {"step": info["step"], "params": info["params"],
                            "source": str(paths.resolve(workdir))}
  config = loading.stage_config(section, workdir)
  want = name if name in loading.TRANSFORMER_STAGES else "vqgan"
  if config.stage != want:
    raise ValueError(f"pipeline.{name}: {workdir} holds a {config.stage!r} stage; it needs a "
                     f"{want} stage")
  params, step, source = loading.restore_stage_params(
      config, workdir, step=section.step, which=which, name=name,
      config_name=str(section.config), model_overrides=section.model)
  return config, params, {"step": int(step), "params": source,
                          "source": str(paths.resolve(workdir))}


def _copy_files(src_dir, names, dst_dir) -> list[str]:
  for name in names:
    (dst_dir / name).write_bytes((src_dir / name).read_bytes())
  return list(names)


def _write_stage(section, name: str, root, tmp, *, which: str, dtype: str,
                 max_shard_bytes: int) -> dict:
  """Writes one stage into tmp/<name>; returns its manifest entry (files relative to tmp)."""
  workdir = loading.stage_workdir(section, name, root)
  out = tmp / name
  if workdir and loading.is_diffusers(workdir):
    # A VQModel's weights and the config.json beside them (its architecture) are copied.
    src = paths.resolve(workdir)
    weights = src if workdir.endswith(".safetensors") else src / _DIFFUSERS_FILES[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / _DIFFUSERS_FILES[0]).write_bytes(weights.read_bytes())
    files = [_DIFFUSERS_FILES[0]]
    if (weights.parent / _DIFFUSERS_FILES[1]).is_file():
      files += _copy_files(weights.parent, [_DIFFUSERS_FILES[1]], out)
    reader = SafetensorsReader(str(out / _DIFFUSERS_FILES[0]))
    tensors = {k: list(reader.shape(k)) for k in reader}
    entry = {"kind": "diffusers_vq", "source": str(src)}
  else:
    config, params, info = _stage_params(section, name, root, which)
    written = export_io.write_export(str(out), params, _config_dict(config),
                                     {"stage": config.stage, **info}, dtype=dtype,
                                     max_shard_bytes=max_shard_bytes)
    files = list(written["files"]) + [export_io.INFO_FILE]
    tensors = {k: list(v.shape) for k, v in export_io.flatten(params).items()}
    entry = {"kind": "export", "stage": config.stage, **info, "dtype": dtype}
  return {"dir": name, **entry, "files": [f"{name}/{f}" for f in files], "tensors": tensors}


def _write_text_encoder(text_encoder, tmp, mode: str, max_shard_bytes: int) -> dict:
  """The text encoder's manifest entry; with mode 'weights' its parameters too."""
  from muse_jax.encoders.text_encoder import TextEncoder
  entry = {"weights": "included" if mode == "weights" else "reference",
           "size": text_encoder.size, "weights_format": text_encoder.weights_format,
           "weights_path": text_encoder.weights_path or ""}
  if mode != "weights":
    return entry
  encoder = TextEncoder.from_config(text_encoder, mesh=loading.single_device_mesh())
  flat = export_io.flatten(encoder.params)
  out = tmp / TEXT_ENCODER
  out.mkdir(parents=True, exist_ok=True)
  files = export_io.write_weights(flat, out, str(text_encoder.param_dtype), max_shard_bytes)
  entry["files"] = [f"{TEXT_ENCODER}/{f}" for f in files]
  entry["tensors"] = {k: list(v.shape) for k, v in flat.items()}
  return entry


def write_bundle(out: str, config, root: Optional[str] = None, *,
                 text_encoder: str = "reference", params: str = "auto",
                 dtype: str = "float32", max_shard_bytes: int = 2 << 30,
                 overwrite: bool = False, info: Optional[dict] = None) -> dict:
  """Writes the cascade a sampling config names into one bundle directory; returns the manifest.

  Args:
    out: the bundle directory (local or a URL); its parent is created.
    config: a sampling config (muse_jax/configs/common_pipeline.py): `pipeline` names the
      stages, `sampling` and `seed` become the bundle's sampling defaults.
    root: where stages with an empty workdir live (ROOT/<stage>), as for `from_config`.
    text_encoder: 'reference' (the config's encoder settings only) or 'weights' (its
      parameters copied into the bundle).
    params, dtype, max_shard_bytes: as for a single-stage export (muse_jax/export.py).
    overwrite: replace a non-empty `out` (else export_io.ExportExists).
    info: provenance merged into the manifest (muse_jax version, git commit, ...).
  """
  if text_encoder not in TEXT_ENCODER_CHOICES:
    raise ValueError(f"--text_encoder={text_encoder!r}: choose one of "
                     f"{', '.join(TEXT_ENCODER_CHOICES)}")
  p = config.pipeline
  spiece = str(p.text_encoder.spiece_model or "")
  if not spiece or not paths.resolve(spiece).is_file():
    raise FileNotFoundError(f"the text encoder's spiece_model {spiece!r} is not a file; give "
                            "the sentencepiece model the stages were trained with")
  out = paths.resolve(out)
  export_io.check_target(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = export_io.staging_dir(out, MANIFEST)
  try:
    manifest = _write_all(config, root, tmp, text_encoder=text_encoder, params=params,
                          dtype=dtype, max_shard_bytes=max_shard_bytes, info=info or {})
    if tmp != out:
      export_io.move_into_place(tmp, out)
  except BaseException:
    if tmp != out:
      tmp.rmtree(missing_ok=True)
    raise
  return manifest


def _same_tokenizer(p, root) -> bool:
  lo, hi = (loading.stage_workdir(p[n], n, root) for n in ("vq_lo", "vq_hi"))
  return (str(paths.resolve(lo)) == str(paths.resolve(hi)) and p.vq_lo.step == p.vq_hi.step
          and p.vq_lo.model.to_dict() == p.vq_hi.model.to_dict())


def _write_all(config, root, tmp, *, text_encoder, params, dtype, max_shard_bytes, info):
  p = config.pipeline
  use_sr = bool(p.sr.config)
  names = ("base", "sr", "vq_lo", "vq_hi") if use_sr else ("base", "vq_lo")
  stages = {}
  for name in names:
    if name == "vq_hi" and _same_tokenizer(p, root):
      stages[name] = {"dir": "vq_lo", "same_as": "vq_lo"}  # one tokenizer for both grids
      continue
    stages[name] = _write_stage(p[name], name, root, tmp, which=params, dtype=dtype,
                                max_shard_bytes=max_shard_bytes)
  (tmp / SPIECE).write_bytes(paths.resolve(p.text_encoder.spiece_model).read_bytes())
  stages[TEXT_ENCODER] = _write_text_encoder(p.text_encoder, tmp, text_encoder,
                                             max_shard_bytes)
  # pipeline.json: the sampling config with the stages as directories of the bundle.
  sections = {}
  for name in common_pipeline.STAGES:
    section = _config_dict(p[name])
    entry = stages.get(name)
    section["workdir"] = entry["dir"] if entry else ""
    # A stage's training config is its export's config.json; '' leaves the stage out.
    section["config"] = f"{entry['dir']}/{export_io.CONFIG_FILE}" if entry else ""
    section["step"] = None
    sections[name] = section
  te = _config_dict(p.text_encoder)
  te["spiece_model"] = SPIECE
  sections[TEXT_ENCODER] = te
  (tmp / PIPELINE).write_text(_json({"seed": int(config.get("seed", 0)),
                                     "sampling": _config_dict(config.sampling),
                                     "pipeline": sections}))
  files = [f for s in stages.values() for f in s.get("files", [])] + [SPIECE, PIPELINE]
  manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **info,
              "stages": {k: {key: v for key, v in s.items() if key != "files"}
                         for k, s in stages.items()},
              "files": {f: {"bytes": (tmp / f).stat().length, "sha256": export_io.sha256(tmp / f)}
                        for f in files}}
  (tmp / MANIFEST).write_text(_json(manifest))  # last: the bundle exists once this file does
  return manifest


# --------------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------------


def read_manifest(path: str) -> dict:
  """The bundle's manifest.json; FileNotFoundError when `path` is not a (complete) bundle."""
  file = paths.resolve(path) / MANIFEST
  if not file.is_file():
    raise FileNotFoundError(f"{path} is not a complete pipeline bundle (no {MANIFEST}); write "
                            "one with python -m muse_jax.export --pipeline=DIR --base=...")
  try:
    manifest = json.loads(file.read_text())
  except ValueError as e:
    raise WeightsError(f"bundle {path}: {MANIFEST} is not JSON ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise WeightsError(f"bundle {path}: {MANIFEST} is not a {FORMAT} manifest")
  if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
    raise WeightsError(f"bundle {path} has format_version {manifest['format_version']}; this "
                       f"muse_jax reads up to {FORMAT_VERSION}: update muse_jax")
  return manifest


def verify(path: str, manifest: dict) -> None:
  """WeightsError naming the first file whose size or sha256 differs from the manifest, or the
  tensors of a stage whose keys or shapes differ."""
  root = paths.resolve(path)
  for name, meta in manifest["files"].items():
    file = root / name
    if not file.is_file():
      raise WeightsError(f"bundle {path}: {name} is missing")
    if file.stat().length != meta["bytes"] or export_io.sha256(file) != meta["sha256"]:
      raise WeightsError(f"bundle {path}: {name} does not match its sha256 in {MANIFEST}")
  for name, stage in manifest["stages"].items():
    if "tensors" not in stage:
      continue
    directory = root / stage.get("dir", name)
    reader = SafetensorsReader(str(directory / _DIFFUSERS_FILES[0])
                               if stage.get("kind") == "diffusers_vq" else str(directory))
    check_keys({k: tuple(v) for k, v in stage["tensors"].items()},
               {k: reader.shape(k) for k in reader}, source=f"bundle {path}: {name}")


def read_bundle(path: str):
  """A verified bundle -> (sampling config, text encoder params or None, manifest).

  The config is muse_jax/configs/common_pipeline.py's with the bundle's stages, text encoder
  and sampling defaults (stage workdirs point into the bundle).
  """
  manifest = read_manifest(path)
  verify(path, manifest)
  stored = json.loads((paths.resolve(path) / PIPELINE).read_text())
  root = str(paths.resolve(path))
  config = common_pipeline.get_config()
  config.seed = int(stored["seed"])
  config.sampling = ml_collections.ConfigDict(_tuples(stored["sampling"]))
  p = config.pipeline
  for name in common_pipeline.STAGES:
    section = stored["pipeline"][name]
    workdir, stage_config = section["workdir"], section["config"]
    p[name] = common_pipeline.stage_section(
        os.path.join(root, stage_config) if stage_config else "",
        os.path.join(root, workdir) if workdir else "", **_tuples(section["model"]))
  te = _tuples(stored["pipeline"][TEXT_ENCODER])
  te["spiece_model"] = os.path.join(root, SPIECE)
  p.text_encoder = ml_collections.ConfigDict(te)
  params = None
  entry = manifest["stages"][TEXT_ENCODER]
  if entry["weights"] == "included":
    reader = SafetensorsReader(os.path.join(root, TEXT_ENCODER))
    # Flat keys back to the T5 tree's paths: digit parts are layer indices.
    params = [(tuple(int(x) if x.isdigit() else x for x in k.split(".")), reader[k])
              for k in reader]
  return config, params, manifest
