"""`ntk-zoo score`: the command line of `score_architectures`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys


from ntk_zoo.nas.space import parse_arch, sample_architectures
from ntk_zoo.nas.scores import PRESETS, get_preset, score_architectures


# ---------------------------------------------------------------------------------------------
# The `ntk-zoo score` subcommand.

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds the `score` subcommand's arguments to `parser`."""
  parser.description = ("NAS trainability scores (condition number of the full NTK and of the "
                        "pseudo-NTK, trace, kernel regression, #params, FLOPs) of NAS-Bench-201 "
                        "cells, on scikit-learn's digits (offline).")
  parser.add_argument("archs", nargs="*", metavar="ARCH",
                      help="NB201 cell strings, e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                           "|avg_pool_3x3~0|nor_conv_1x1~1|none~2|'")
  parser.add_argument("--sample", type=int, default=0, metavar="N",
                      help="also score N architectures sampled from the search space")
  parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                      help="tenas: TE-NAS's choices; full: full NTK, inference BN, float64 "
                           "(default)")
  parser.add_argument("--repeats", type=int, help="random inits and batches (preset's default)")
  parser.add_argument("--batch-size", type=int, help="examples per scored batch")
  parser.add_argument("--channels", type=int, help="stem channels C (preset's default)")
  parser.add_argument("--cells", type=int, help="cells per stage N (preset's default)")
  parser.add_argument("--image-size", type=int, help="input side in pixels (preset's default)")
  parser.add_argument("--implementation", default=None, help="ntk_fn implementation")
  parser.add_argument("--seed", type=int, default=0, help="seed of sampling, inits and batches")
  parser.add_argument("--out", type=pathlib.Path, help="directory to write scores.json to")
  return parser


def main(args: argparse.Namespace) -> int:
  """Runs `ntk-zoo score`: prints a table and writes `scores.json` to `--out`. Returns the exit
  status (2 with one line on stderr for bad arguments)."""
  try:
    archs = [parse_arch(a) for a in args.archs] + sample_architectures(args.sample, args.seed)
    if not archs:
      raise ValueError("no architectures: pass NB201 strings or --sample N.")
    preset = get_preset(args.preset)
    network = dataclasses.replace(preset.network, **{
        k: v for k, v in (("channels", args.channels), ("cells_per_stage", args.cells),
                          ("image_size", args.image_size)) if v is not None})
    preset = dataclasses.replace(preset, network=network, **{
        k: v for k, v in (("repeats", args.repeats), ("batch_size", args.batch_size),
                          ("implementation", args.implementation)) if v is not None})
    if args.out is not None:
      args.out.mkdir(parents=True, exist_ok=True)
      probe = args.out / ".write_test"
      probe.write_text("")
      probe.unlink()
    rows = score_architectures(archs, preset, seed=args.seed)
  except (ValueError, OSError) as e:
    print(f"ntk-zoo score: error: {e}", file=sys.stderr)
    return 2
  cols = ("kappa_ntk", "kappa_pseudo", "trace", "kr_accuracy")
  width = max(len(row["arch"]) for row in rows)
  print(f"{'arch':<{width}} " + " ".join(f"{c:>13}" for c in cols) + f" {'params':>8} {'MFLOPs':>8}")
  for row in rows:
    print(f"{row['arch']:<{width}} " + " ".join(f"{row[c + '_mean']:13.4g}" for c in cols)
          + f" {row['params']:8d} {row['flops'] / 1e6:8.2f}")
  if args.out is not None:
    tmp = args.out / "scores.json.tmp"
    tmp.write_text(json.dumps({"preset": dataclasses.asdict(preset), "rows": rows}, indent=1))
    tmp.replace(args.out / "scores.json")
    print(f"wrote {args.out / 'scores.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main(add_arguments(argparse.ArgumentParser("ntk-zoo score")).parse_args()))
