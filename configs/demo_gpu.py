"""The end-to-end shapes demo, bigger, for one NVIDIA H100 or H200 (the benchmark's limit is
15 minutes; the measured time: docs/demo.md).

COMMAND: python -m muse_jax.demo --config=configs/demo_gpu.py --workdir=demo_gpu_out
Same stages and outputs as configs/demo_cpu.py (samples_train.png, samples_heldout.png,
inpaint.png, outpaint.png, maskfree.png, metrics.json) at the same resolutions (64px SR output,
32px base), with a wider tokenizer, larger transformers trained for longer in
bfloat16 with fused attention where cuDNN takes it (`attention=auto`), 96x the precompute data
(393,216 training scenes), 1024 evaluation captions per split and 256 validation captions to
choose guidance and temperature on (docs/demo.md#choosing-guidance). Needs no TensorFlow:
precompute writes its records without it and training reads them with the numpy reader. Its
time and results per attribute and per object count, with and without guidance, and each
stage's train/eval gap: docs/demo.md.

Text is padded to 64 tokens (captions have <= 28) so that cuDNN flash attention can take the
cross-attention keys (base: 64 text keys; SR: 8x8 low-res tokens + 64 text keys = 128).
"""
from configs import demo_cpu


def get_config():
  c = demo_cpu.get_config()

  v = c.vqgan
  # f4 as on CPU: demo_cpu's tokenizer (2x2 patch stem + two levels, 64px -> 32x32 -> 16x16;
  # 512 l2-normalised 8-dim codes; no dead-code restarts), twice as wide, two res blocks per
  # level.
  v.model.update(dict(block_out_channels=(64, 128), layers_per_block=2, norm_groups=16,
                      dtype="bfloat16"))
  v.optimizer.update(dict(learning_rate=2e-3, warmup_steps=50))
  # Images are drawn on the host in the loop, at a fixed cost each, so batch x steps bounds the
  # time (python benchmarks/data_sources.py: shapes examples/s; docs/demo.md).
  v.train.update(dict(batch_size=16, num_steps=3000, log_every=100))
  # Drawing a scene is Python that holds the GIL, so the loop's own thread drew one core's
  # worth of them between steps; 12 spawned processes draw the next batches (the same ones)
  # and leave 4 of the GPU host's 16 cores to the loop and the GPU runtime.
  v.data.num_workers = 12
  v.checkpoint.update(dict(every_steps=1000))

  p = c.precompute
  # Data is the lever: more scenes raised the held-out captions' fully right rate at each step,
  # while 3x the steps on a quarter of them memorised them (docs/demo.md). The scenes are
  # drawn on processes, so precompute's time grows far slower than their number.
  # The whole grammar (up to four objects per group, half the scenes with two groups), unlike
  # demo_cpu's one group of at most two.
  # Objects at their default size (demo_cpu draws them 1.5x): the tokenizer's reconstructions
  # of these 64 px scenes read right on every attribute, and eight objects fit the canvas.
  p.data.shapes.update(dict(num_train=393216, num_heldout=1024, max_count=4,
                            two_group_prob=0.5, object_scale=1.0))
  p.data.num_workers = 8
  # The scenes themselves on 12 spawned processes (the same records): the preprocessing
  # threads above only wait for them then, and threads do not multiply GIL-bound drawing.
  p.data.shapes.processes = 12
  p.text_encoder.max_length = 64
  p.precompute.update(dict(batch_size=512, examples_per_shard=4096, log_every=8))

  # text_pos_embed (both stages): the random T5's features keep little word order, so "two red
  # circles above a blue square" and "two blue circles above a red square" give nearly the
  # same set of text rows; learned positions let the cross-attention bind each colour and
  # count to its shape, also for the held-out pairs (docs/demo.md).
  c.base.model.update(dict(hidden_size=512, num_layers=8, num_heads=8, head_dim=64,
                           mlp_dim=2048, dtype="bfloat16", attention="auto",
                           text_pos_embed=True))
  c.base.optimizer.update(dict(learning_rate=1e-3, warmup_steps=200))
  # About 8.5 passes over the scenes: the eval loss still falls at the end.
  c.base.train.update(dict(batch_size=256, num_steps=13000, log_every=100, eval_every=1000,
                           eval_batches=4))
  c.base.checkpoint.update(dict(every_steps=1000))
  # Accuracy curves: 256 captions per split twice per stage; each evaluation decodes and scores
  # its samples on the host while the GPU waits, so more would cost the demo's time limit.
  c.base.eval.samples.update(dict(every=6500, num=256, batch_size=256))

  # lowres_skip as in demo_cpu (inherited; stated here). It raises the held-out captions' fully
  # right rate, most at guidance 3 (docs/demo.md compares runs with and without it).
  c.sr.model.update(dict(hidden_size=256, num_layers=6, lowres_num_layers=2, num_heads=4,
                         head_dim=64, mlp_dim=1024, dtype="bfloat16", attention="auto",
                         lowres_skip=True, text_pos_embed=True))
  c.sr.optimizer.update(dict(learning_rate=1e-3, warmup_steps=200))
  c.sr.train.update(dict(batch_size=128, num_steps=11000, log_every=100, eval_every=1000,
                         eval_batches=4))
  c.sr.checkpoint.update(dict(every_steps=1000))
  c.sr.eval.samples.update(dict(every=5500, num=256, batch_size=256))

  # Guidance 0.5 on both stages and temperature 0.25: the settings that 256 validation captions
  # chose for this config's stages with 262,144 scenes and 10,000 / 8000 steps (docs/demo.md);
  # they are the tie-breakers of the sweeps below, and the guidance sweep is scored at this
  # temperature.
  c.sampling.update(dict(base_steps=16, sr_steps=8, guidance_scale=0.5, sr_guidance_scale=0.5,
                         temperature=0.25))
  c.sampling.editing.mask_free_iterations = 50
  # 1024 captions per split: a rate's binomial standard error is at most 1.6 points.
  # The evaluation samples at the guidance and then the temperature that score best on 256
  # validation captions (train-split scenes of their own; docs/demo.md#choosing-guidance):
  # guidance 0.5, none, 1.0, 0.25 and 0.5 with an unguided SR stage (half the SR stage's rows:
  # its speed is in docs/performance.md), then temperatures 0.25, 0.5 and 0.1, so no setting
  # of the evaluation rows is chosen on the evaluation captions. Each entry compiles the
  # samplers once more and samples the validation captions once more.
  c.eval.update(dict(num_captions=1024, batch_size=256, grid_images=64,
                     validation_captions=256, guidance_sweep=(1.0, 0.25, (0.5, 0.0)),
                     use_chosen_guidance=True, temperature_sweep=(0.5, 0.1),
                     use_chosen_temperature=True))
  return c
