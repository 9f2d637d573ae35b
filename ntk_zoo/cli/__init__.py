"""`ntk-zoo`: the command line (`python -m ntk_zoo` is the same command).

    ntk-zoo                               # = ntk-zoo ntk: full NTK of resnet18 on 4 bundled photos
    ntk-zoo ntk --model vit_tiny --images photos/ --n 8 --out results/
    ntk-zoo ntk --model resnet50 --checkpoint resnet50.safetensors --image-size 224
    ntk-zoo kernel --n 256 --out k.zarr
    ntk-zoo score --preset full --sample 5
    ntk-zoo reproduce --list
    ntk-zoo reproduce fig1 --full

Each subcommand is one `add_<name>(subparsers)` function listed in `COMMANDS`: it adds its
parser and sets `run` to a function of the parsed arguments. Bad input ends in one line on
stderr (`ntk-zoo: error: ...`), exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ntk_zoo
from ntk_zoo.cli import kernel, ntk, reproduce, score
from ntk_zoo.cli._common import (DEFAULT_MODEL, DEFAULT_NUM_CLASSES, EXPERIMENTS_ENV,
                                 IMPLEMENTATIONS, PROG, Parser, UsageError, fail, models_epilog)
from ntk_zoo.cli.ntk import condition_number, full_ntk, spectrum
from ntk_zoo.cli.reproduce import experiments_dir, list_experiments

__all__ = ["COMMANDS", "DEFAULT_MODEL", "DEFAULT_NUM_CLASSES", "EXPERIMENTS_ENV",
           "IMPLEMENTATIONS", "PROG", "UsageError", "build_parser", "condition_number",
           "experiments_dir", "full_ntk", "list_experiments", "main", "spectrum"]

# Subcommands, in the order `--help` lists them: one `add_<name>(subparsers)` each.
COMMANDS: tuple[Callable[[Any], None], ...] = (ntk.add_ntk, score.add_score,
                                               reproduce.add_reproduce, kernel.add_kernel)


DESCRIPTION = """Finite-width empirical NTKs of the model zoo. With no command, runs `ntk`.

examples:
  ntk-zoo                               # full NTK of resnet18 on 4 bundled photos
  ntk-zoo ntk --model vit_tiny --images photos/ --n 8 --out results/
  ntk-zoo ntk --model resnet50 --checkpoint resnet50.safetensors --image-size 224
  ntk-zoo kernel --n 256 --out k.zarr   # NTK of 256 digits, tiled into a resumable store
  ntk-zoo reproduce --list"""


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line `argv` (default: `sys.argv[1:]`); with no subcommand, `ntk`.

  Returns:
    0 on success. Bad input raises `SystemExit(2)` after one line on stderr.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  if not argv or argv[0] not in (*parser.commands, "-h", "--help", "--version"):
    argv = ["ntk", *argv]
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except UsageError as e:
    fail(str(e))
  except BrokenPipeError:  # `ntk-zoo ... | head`: the reader left; no traceback.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(1) from None
  return 0


def build_parser() -> Parser:
  parser = Parser(prog=PROG, description=DESCRIPTION, epilog=models_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"ntk_zoo {ntk_zoo.__version__}")
  subparsers = parser.add_subparsers(title="commands", metavar="COMMAND",
                                     parser_class=Parser)
  for add in COMMANDS:
    add(subparsers)
  parser.commands = tuple(subparsers.choices)
  return parser
