"""`ntk-zoo score`: NAS trainability scores of NAS-Bench-201 cells (`ntk_zoo.nas`)."""

from __future__ import annotations

import argparse


from ntk_zoo import nas



def add_score(subparsers) -> None:
  p = subparsers.add_parser(
      "score", help="NAS trainability scores of NAS-Bench-201 cells (presets tenas, full)")
  nas.add_arguments(p)
  p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> None:
  status = nas.main(args)  # Prints its table, or one line on stderr for bad input.
  if status:
    raise SystemExit(status)
