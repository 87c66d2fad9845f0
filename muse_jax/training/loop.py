"""The training loop: devices, input, jit, checkpoints, signals and reporting around a stage.

`train(config, workdir)` resumes from the newest checkpoint in `workdir/checkpoints` if there
is one, then runs `train_step` until `config.train.num_steps`. The step's randomness is
`fold_in(key(seed), step)`, and the input position is checkpointed, so a resumed run
continues the same run. Stops (stops.py):
- SIGTERM, a cluster preemption notice or Ctrl-C, on any process: every process checkpoints
  the same step (within `checkpoint.stop_check_every` steps, `AgreedStop`), raise `Preempted`;
- a non-finite loss, or a non-finite state at a save: raise `NonFiniteLoss` naming the step.
  That state is never saved, and a checkpoint of the step before it, whose parameters the
  failing step started from, is moved out of the way, so the newest checkpoint is a good one;
- a failed checkpoint or metrics write: `WorkdirWriteError` at the next step.
A newest checkpoint that cannot be restored intact is skipped (one line on stderr) in favour
of the newest intact one (`Checkpointer.restore_newest`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
from typing import Any, Sequence

import jax
import numpy as np

from muse_jax import paths
from muse_jax.configs.checks import ConfigError
from muse_jax.data.batch import BatchSource
from muse_jax.parallel.distributed import global_batch
from muse_jax.parallel.mesh import data_parallel_size, make_mesh
from muse_jax.training.flops import peak_flops_per_device
from muse_jax.training.hooks import Hook, HookContext
from muse_jax.training.inputs import open_input
from muse_jax.training.registry import validate
from muse_jax.training.reporting import Reporter
from muse_jax.training.resume import check_state_matches, resolve_schedule
from muse_jax.training.steps import StepFunctions
from muse_jax.training.stops import AgreedStop, NonFiniteLoss, Preempted, StopSignals
from muse_jax.workdir.access import WorkdirWriteError, check_writable
from muse_jax.workdir.checkpointer import Checkpointer, NonFiniteState
from muse_jax.workdir.checkpoints import checkpoint_dir
from muse_jax.workdir.saved_config import write_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  stage: Any
  eval_metrics: dict


def console_metrics(stage, metrics: dict) -> dict:
  """The metrics a progress line shows: those the stage names in `console_metrics` (the ones
  present, in that order), or all when it names none. metrics.jsonl and TensorBoard get all."""
  keys = stage.console_metrics
  if keys is None:
    return metrics
  return {k: metrics[k] for k in keys if k in metrics}


def check_batch(config, mesh):
  b = int(config.train.batch_size)
  dp = data_parallel_size(mesh)
  if b % dp:
    raise ConfigError(f"train.batch_size={b} is not divisible by the data-parallel size {dp} "
                      f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); "
                      "change --config.train.batch_size or the mesh")
  if b % jax.process_count():
    raise ConfigError(f"train.batch_size={b} is not divisible by {jax.process_count()} "
                      "processes")
  a = int(config.train.grad_accum)
  if a < 1 or b % a or (b // a) % dp:
    raise ConfigError(f"train.grad_accum={a}: the microbatch batch_size/grad_accum must be a "
                      f"whole multiple of the data-parallel size {dp}")


class Trainer(StepFunctions):
  """Holds the compiled step functions of one run; `run()` executes the loop."""

  def __init__(self, config, workdir: str, *, train_source: BatchSource | None = None,
               eval_source: BatchSource | None = None, stream=None, devices=None,
               hooks: Sequence[Hook] = ()):
    self.workdir = str(paths.resolve(workdir))
    validate(config)  # every start-time check before anything is built
    self.schedule_note = resolve_schedule(config, self.workdir)  # before the optimizer is built
    mesh = make_mesh(config.mesh, devices)
    check_batch(config, mesh)
    super().__init__(config, mesh)
    check_state_matches(config, self.workdir, self.abstract_state)  # before any data is read
    self.is_main = jax.process_index() == 0
    pi, pc = jax.process_index(), jax.process_count()
    self.train_source = train_source or open_input(self.stage, "train", pi, pc)
    self.eval_source = eval_source
    if eval_source is None and config.train.eval_every > 0:
      self.eval_source = open_input(self.stage, "eval", pi, pc)
    check_writable(self.workdir)  # config.json, metrics.jsonl; Checkpointer checks its own
    self.ckpt = Checkpointer(checkpoint_dir(self.workdir), config.checkpoint)
    self.stream = stream
    self.hooks = list(hooks)

  def initial_state(self):
    """(state, step): restored from the newest checkpoint, or freshly initialised."""
    state, data_state, step, notes = self.ckpt.restore_newest(self.abstract_with_shardings())
    if self.is_main:
      for note in notes:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    if step is None:
      init = jax.jit(self.stage.init_state, out_shardings=self.state_sh)
      return init(self.init_key), 0
    self.train_source.set_state(data_state)
    return state, step

  def fresh_state_and_batch(self):
    """A newly initialised state and the first global batch (for benchmarks and profiling)."""
    batch = global_batch(next(self.train_source), self.batch_sh)
    state = jax.jit(self.stage.init_state, out_shardings=self.state_sh)(self.init_key)
    return state, batch

  def evaluate(self, state) -> dict:
    self.eval_source.set_state({"position": 0})
    totals: dict[str, float] = {}
    n = int(self.config.train.eval_batches)
    for i in range(n):
      batch = global_batch(next(self.eval_source), self.batch_sh)
      m = jax.device_get(self.eval_step_fn(state, batch, np.int32(i)))
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + float(v) / n
    return totals

  def _nonfinite(self, step: int, what: str) -> NonFiniteLoss:
    """The error for a non-finite step `step`. A checkpoint of step - 1 holds the parameters
    this step started from, and resuming from it would run this very step first, so it is
    moved out of the way; the newest remaining checkpoint is then the last good one."""
    self.ckpt.wait()
    newest, moved = self.ckpt.latest_step(), ""
    if newest is not None and newest == step - 1:
      moved = (f" Checkpoint step {newest}, whose parameters step {step} started from, was "
               f"moved to {self.ckpt.reject(newest)}.")
      newest = self.ckpt.latest_step()
    if newest is None:
      advice = ("Last good checkpoint: none. Lower the learning rate or check the data, then "
                "rerun (it starts a new run)")
    else:
      advice = (f"Last good checkpoint: step {newest} in {self.ckpt.directory}. Lower the "
                "learning rate or check the data, then rerun to resume from that checkpoint")
    return NonFiniteLoss(f"{what}; stopped without saving it.{moved} {advice}")

  def run(self) -> TrainResult:
    try:
      result = self._run()
    except WorkdirWriteError as e:
      self.ckpt.close(quiet=True)
      newest = self.ckpt.latest_step()
      where = "none" if newest is None else f"step {newest} in {self.ckpt.directory}"
      raise WorkdirWriteError(f"{e}. Newest checkpoint: {where}; free space or fix the "
                              "permissions, then rerun the same command to resume") from None
    except BaseException:
      self.ckpt.close(quiet=True)  # the error that stopped the run is the one to report
      raise
    self.ckpt.close()
    return result

  def _run(self) -> TrainResult:
    cfg = self.config
    total = int(cfg.train.num_steps)
    if self.is_main:
      write_config(self.workdir, cfg)
    state, step = self.initial_state()
    start = step
    reporter = Reporter(self.workdir, total_steps=total, start_step=step,
                        enabled=self.is_main, tensorboard=bool(cfg.train.tensorboard),
                        stream=self.stream)
    ckpt_dir = self.ckpt.directory
    if step:
      reporter.message(f"Resuming from step {step} (checkpoint in {ckpt_dir})")
      if self.schedule_note:
        reporter.message(f"note: {self.schedule_note}")
    else:
      reporter.message(f"Starting a new run in {self.workdir}")
    b = int(cfg.train.batch_size)
    flops_per_step = self.stage.flops_per_example() * b
    peak = peak_flops_per_device(jax.devices()[0], cfg.train.peak_tflops_per_device)
    peak *= jax.device_count()
    log_every = max(int(cfg.train.log_every), 1)
    eval_every = int(cfg.train.eval_every)
    image_every = int(cfg.train.get("image_grid_every", 0))
    eval_metrics: dict = {}
    pending = None

    def finish(item):
      s, m = item
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      if not math.isfinite(m["loss"]):
        raise self._nonfinite(s, f"loss is {m['loss']} at step {s}")
      reporter.record(s, m)
      return m

    @contextlib.contextmanager
    def off_the_clock():
      """Evaluation, images, hooks and saves: first the dispatched step is waited for (and
      checked and recorded), so that its collectives come before theirs and its device time
      stays on the rate clock; then their own time is left out of the rates and the ETA."""
      nonlocal pending
      if pending is not None:
        finish(pending)
        pending = None
      with reporter.paused():
        yield

    try:
      with StopSignals() as signals:
        agreed_stop = AgreedStop(signals, cfg.checkpoint.stop_check_every)
        while step < total:
          local = next(self.train_source)
          batch = global_batch(local, self.batch_sh)
          state, metrics = self.train_step_fn(state, batch, np.int32(step))
          step += 1
          logged = step % log_every == 0 or step == total
          if step == start + 1:  # keep compilation out of the throughput numbers
            jax.block_until_ready(metrics)
            reporter.message(f"step {step} compiled and ran in {reporter.reset_timer(step):.1f}s")
          if pending is not None:
            finish(pending)
          pending = (step, metrics)
          if logged or agreed_stop.due(step):
            # The all-gathers below run only once this step is done: on CPU, XLA may run
            # programs that share no arrays side by side, and two processes could then enter
            # their collectives in different orders and wait for each other for ever.
            m = finish(pending)
            pending = None
          # A failed background save stops the run now, not at the next save. Processes
          # agree only on logged steps.
          self.ckpt.poll(collective=logged)
          if logged:
            reporter.scalars(step, m, prefix="train/")
            reporter.console(step, console_metrics(self.stage, m), examples_per_step=b,
                             flops_per_step=flops_per_step, peak_flops=peak)
          if eval_every > 0 and self.eval_source is not None and (
              step % eval_every == 0 or step == total):
            with off_the_clock():
              eval_metrics = self.evaluate(state)
              reporter.record(step, eval_metrics, prefix="eval_")
              reporter.scalars(step, eval_metrics, prefix="eval/")
              reporter.message(f"eval @ {step}: " + " ".join(
                  f"{k} {v:.4g}" for k, v in eval_metrics.items()))
          if image_every > 0 and step % image_every == 0:
            with off_the_clock():  # every process: the grid may be a collective
              for name, grid in self.stage.images(state, batch).items():
                reporter.images(step, name, grid)
          due = [h for h in self.hooks if h.due(step, total)]
          if due:
            ctx = HookContext(step=step, state=state, stage=self.stage, mesh=self.mesh,
                              reporter=reporter, total_steps=total, is_main=self.is_main)
            with off_the_clock():
              for hook in due:
                hook(ctx)
          stop = agreed_stop(step)
          if stop or step == total or self.ckpt.should_save(step):
            with off_the_clock():
              try:
                self.ckpt.save(step, state, self.train_source.get_state(), force=True)
              except NonFiniteState as e:
                raise self._nonfinite(step, str(e)) from None
          if stop:
            self.ckpt.wait()
            raise Preempted(step, ckpt_dir, agreed_stop.signum)
        if pending is not None:
          finish(pending)
    finally:
      for hook in self.hooks:
        hook.close()
      reporter.close()
    reporter.message(f"Done: {step} steps; checkpoints in {ckpt_dir}")
    return TrainResult(state=state, step=step, stage=self.stage, eval_metrics=eval_metrics)


def train(config, workdir: str, **kwargs) -> TrainResult:
  return Trainer(config, workdir, **kwargs).run()


def read_metrics(workdir: str) -> list[dict]:
  """The per-step records of `workdir/metrics.jsonl`."""
  text = (paths.resolve(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]
