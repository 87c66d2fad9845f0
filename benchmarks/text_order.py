r"""How much word order a demo's frozen text features keep: captions with the colours swapped.

  python benchmarks/text_order.py --config=configs/demo_gpu.py [--num=256 --seed=0]

For --num two-group train captions with two different colours ("two red circles above a blue
square"), encodes the caption and the one with the two colours swapped ("two blue circles
above a red square") with the demo's text encoder (its precompute section: the sentencepiece
model trained on the demo's captions as precompute trains it, and the random T5 of its size
and seed), then prints, over the caption pairs:
  nearest-neighbour distance  for each text row of one caption, the distance to the closest
                              row of the other, averaged over the rows;
  distance between rows       the median distance between different rows of one caption;
  ratio                       the first over the second.
The transformers' cross-attention has no positions of its own (without `model.text_pos_embed`)
and sees the rows as a set: at a small ratio the two captions, which mean different scenes,
are nearly the same set, and which colour goes with which shape rests on small differences.
Runs on CPU in under a minute; writes only to a temporary directory.
"""
import argparse
import os
import runpy
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def swapped_pairs(num: int, seed: int, options: dict):
  """(caption, caption with the two groups' colours swapped) for `num` two-group scenes."""
  import dataclasses
  import numpy as np
  from muse_jax.data.shapes import dataset, grammar
  rng = np.random.default_rng(seed)
  pairs = []
  while len(pairs) < num:
    ex = dataset.generate(int(rng.integers(1 << 30)), "train", seed, resolution=16,
                          **{**options, "two_group_prob": 1.0})
    a, b = ex.scene.groups
    if a.colour == b.colour:
      continue
    swapped = dataclasses.replace(ex.scene, groups=(dataclasses.replace(a, colour=b.colour),
                                                    dataclasses.replace(b, colour=a.colour)))
    pairs.append((ex.caption, grammar.scene_to_caption(swapped)))
  return pairs


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--config", required=True, help="a demo config (configs/demo_*.py)")
  p.add_argument("--num", type=int, default=256, help="caption pairs")
  p.add_argument("--seed", type=int, default=0, help="scene sampling seed")
  args = p.parse_args(argv)
  import numpy as np
  from muse_jax.data.shapes import dataset
  from muse_jax.demo.stage_configs import stage_configs
  from muse_jax.encoders.text_encoder import TextEncoder
  from muse_jax.precompute.run import ensure_spiece_model

  config = runpy.run_path(args.config)["get_config"]()
  with tempfile.TemporaryDirectory() as tmp:
    pre = stage_configs(config, tmp)["precompute"]
    te = pre.text_encoder
    te.spiece_model = ensure_spiece_model(pre, tmp)
    encoder = TextEncoder.from_config(te)
    pairs = swapped_pairs(args.num, args.seed, dataset.scene_options(pre.data.shapes))
    emb, mask = encoder.encode([c for pair in pairs for c in pair])
  emb, lengths = np.asarray(emb, np.float64), np.asarray(mask).sum(1)
  nearest, between = [], []
  for i in range(len(pairs)):
    a = emb[2 * i, :lengths[2 * i]]
    b = emb[2 * i + 1, :lengths[2 * i + 1]]
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    nearest.append(0.5 * (d.min(1).mean() + d.min(0).mean()))
    within = np.linalg.norm(a[:, None] - a[None], axis=-1)
    between.append(np.median(within[~np.eye(len(a), dtype=bool)]))
  nearest, between = np.array(nearest), np.array(between)
  print(f"{args.config}: T5 {te.size} (seed {te.seed}), {len(pairs)} caption pairs, "
        f"e.g. {pairs[0][0]!r} / {pairs[0][1]!r}")
  print(f"{'':28s}{'median':>10s}{'p10':>10s}{'p90':>10s}")
  for name, v in (("nearest-neighbour distance", nearest), ("distance between rows", between),
                  ("ratio", nearest / between)):
    print(f"{name:28s}" + "".join(f"{x:10.3f}" for x in np.percentile(v, [50, 10, 90])))


if __name__ == "__main__":
  main()
