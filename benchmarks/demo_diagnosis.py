r"""Which stage of a finished demo loses what: the detector on each stage's images, alone.

  python benchmarks/demo_diagnosis.py --config=configs/demo_cpu.py --workdir=demo_out \
      [--split=train --num=64 --seed=0]

For the demo's first --num evaluation captions of --split (the captions its samples stage
scores; `validation`: the train-like validation captions that settings may be chosen on,
config eval.validation_seed_offset), prints the detector's accuracy per attribute on:
  dataset, low-res      the scenes drawn at the base stage's size, upsampled (nearest) to the
                        output size: what the low-res grid can show at all;
  tokenizer, low-res    the tokenizer's reconstructions of those, upsampled;
  tokenizer, output     its reconstructions at the output size (the samples' ceiling);
  base samples          the base stage's samples (the config's guidance), decoded, upsampled;
  SR from true low-res  the SR stage's samples given the dataset's own low-res tokens;
  ... other captions    the same, conditioned on the captions in another order (scored
                        against the true ones): what the SR stage takes from the text;
  cascade               base then SR, as the demo samples.
WORKDIR is only read; nothing is written. Guidance and sampling steps are the config's.
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ATTRIBUTES = ("count", "colour", "shape", "position", "overall")


def main(argv=None):
  from benchmarks.sample_quality import demo_parser
  p = demo_parser(__doc__)
  p.add_argument("--split", default="train", choices=("train", "heldout", "validation"))
  p.add_argument("--num", type=int, default=64, help="captions (the first of the split's)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  args = p.parse_args(argv)
  missing = [n for n in ("tokenizer", "base", "sr")
             if not os.path.isdir(os.path.join(args.workdir, n))]
  if missing:
    raise SystemExit(f"{args.workdir} has no {', '.join(missing)}: run the demo first")

  import jax.numpy as jnp
  import numpy as np
  from muse_jax.data.shapes.render import render
  from muse_jax.demo import images as I
  from muse_jax.demo.runner import Demo
  from muse_jax.evaluation import compositional

  demo = Demo(runpy.run_path(args.config)["get_config"](), args.workdir)
  pipe = demo.load_pipeline()
  if args.split == "validation":
    examples = demo.caption_scenes("train", args.num,
                                   int(demo.config.eval.validation_seed_offset))
  else:
    examples = demo.eval_captions(args.split)[:args.num]
  captions = [ex.caption for ex in examples]
  factor = pipe.image_size // pipe.lo_size

  def up(images):
    return np.repeat(np.repeat(np.asarray(images), factor, 1), factor, 2)

  def score(name, images):
    r = compositional.evaluate(I.to_uint8(np.asarray(images, np.float32)), captions)
    print(f"{name:22s} " + "  ".join(f"{k} {100 * r[k]:5.1f}%" for k in ATTRIBUTES))

  # The same scenes drawn natively at the base stage's size, as the precompute draws them.
  low = np.stack([render(ex.objects, pipe.lo_size) for ex in examples]).astype(np.float32) / 255
  real = np.stack([ex.image for ex in examples]).astype(np.float32) / 255.0
  tokens_lo = np.asarray(pipe.vq_lo.encode(low)).reshape(len(examples), -1)
  tokens_hi = np.asarray(pipe.vq_hi.encode(real)).reshape(len(examples), -1)
  print(f"{len(captions)} {args.split} captions of {args.workdir}; {pipe.lo_size} px base, "
        f"{pipe.image_size} px output")
  score("dataset, low-res", up(low))
  score("tokenizer, low-res", up(pipe.decode_tokens(tokens_lo)))
  score("tokenizer, output", pipe.decode_tokens(tokens_lo, tokens_hi))
  cond, uncond = pipe.conditions(captions)
  key_lo, key_hi = pipe._keys(args.seed)
  batch = len(captions)
  t_lo, t_hi = pipe.base.grid ** 2, pipe.sr.grid ** 2
  lo = pipe.run_stage("base", "decode", jnp.full((batch, t_lo), pipe.base.mask_id),
                      jnp.ones((batch, t_lo), bool), cond, uncond, key_lo)
  score("base samples", up(pipe.decode_tokens(lo)))
  other, _ = pipe.conditions([captions[(i + 1) % batch] for i in range(batch)])
  for name, given, text in (("SR from true low-res", tokens_lo, cond),
                            ("... other captions", tokens_lo, other), ("cascade", lo, cond)):
    hi = pipe.run_stage("sr", "decode", jnp.full((batch, t_hi), pipe.sr.mask_id),
                        jnp.ones((batch, t_hi), bool), text, uncond, key_hi, tokens_lo=given)
    score(name, pipe.decode_tokens(given, hi))


if __name__ == "__main__":
  main()
