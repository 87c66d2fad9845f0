"""Every entry point turns a bad flag, config, path or input into one line on stderr and exit
status 2. The cases run concurrently: each is mostly interpreter start-up."""
import os
import subprocess
import sys

from tests.training.helpers import REPO, cli_env

CASES = {
    "train: indivisible batch": (
        ["muse_jax.train", "--config=configs/tiny.py", "--workdir={tmp}/train",
         "--config.train.batch_size=12"],
        "error: train.batch_size=12 is not divisible by the data-parallel size 8"),
    "precompute": (
        ["muse_jax.precompute", "--config=configs/shapes_precompute.py",
         "--workdir={tmp}/pre", "--config.precompute.batch_size=0"],
        "error: precompute.batch_size=0 must be a positive multiple"),
    "sample": (
        ["muse_jax.sample", "--config=configs/pipeline_tiny.py", "--workdir={tmp}/runs",
         "--config.pipeline.base.config=sr_tiny", "--prompt=a red circle",
         "--out={tmp}/x.png"],
        "error: pipeline.base.config='sr_tiny' is a 'sr' config"),
    "export": (
        ["muse_jax.export", "--workdir={tmp}/missing", "--out={tmp}/export"],
        "error: --workdir={tmp}/missing: no such directory"),
    "train: a misspelt --config. key": (
        ["muse_jax.train", "--config=configs/tiny.py", "--workdir={tmp}/typo",
         "--config.train.num_step=3"],
        "error: --config.train.num_step: no config key 'num_step'; did you mean 'num_steps'?"),
    "train: no manifest at data.path": (
        ["muse_jax.train", "--config=configs/shapes_base_tiny.py", "--workdir={tmp}/nodata",
         "--config.data.path={tmp}/missing"],
        "error: the train input: no manifest.json in '{tmp}/missing'"),
    "train: a corrupt manifest": (
        ["muse_jax.train", "--config=configs/shapes_base_tiny.py", "--workdir={tmp}/baddata",
         "--config.data.path={tmp}/corrupt"],
        "error: data.path='{tmp}/corrupt': a manifest is not valid JSON"),
    "precompute: a config file that does not exist": (
        ["muse_jax.precompute", "--config=configs/missing.py", "--workdir={tmp}/pre2"],
        "error: --config=configs/missing.py: the config file does not load: [Errno 2]"),
    "sample: a --base that is not a workdir": (
        ["muse_jax.sample", "--base={tmp}/missing", "--prompt=a red circle",
         "--out={tmp}/x.png"],
        "error: --base={tmp}/missing: no such directory"),
    "evaluate: an unknown flag": (
        ["muse_jax.evaluate", "--wrkdir={tmp}/x"],
        "error: Unknown command line flag 'wrkdir'"),
    "demo": (
        ["muse_jax.demo", "--config=configs/demo_cpu.py", "--workdir={tmp}/demo",
         "--config.lowres_size=4096"],
        "error: image_size="),
}


def test_each_entry_point_reports_a_bad_config_in_one_line(tmp_path):
  os.makedirs(tmp_path / "corrupt")
  (tmp_path / "corrupt" / "manifest.json").write_text('{"format_version": 1, "spl')
  procs = {}
  for name, (args, _) in CASES.items():  # concurrently: each is mostly interpreter start-up
    cmd = [sys.executable, "-m"] + [a.format(tmp=tmp_path) for a in args]
    procs[name] = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    want = CASES[name][1].format(tmp=tmp_path)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith(want), f"{name}:\n{err[-3000:]}"


def test_job_entry_points_list_their_flags_in_help():
  """train and precompute define their flags through cli_flags.define_job_flags; --help (the
  main module's flags) must still list them, distributed's included."""
  procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=REPO, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for m in ("muse_jax.train", "muse_jax.precompute")}
  for module, proc in procs.items():
    out, _ = proc.communicate(timeout=120)
    for flag in ("--config:", "--workdir:", "--coordinator_address:", "--heartbeat_timeout:"):
      assert flag in out, f"{module} --help lacks {flag}\n{out[-2000:]}"
