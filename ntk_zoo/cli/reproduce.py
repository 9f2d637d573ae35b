"""`ntk-zoo reproduce`: runs one script of `experiments/` (a figure or study)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from ntk_zoo.cli import _common as C
from ntk_zoo.cli._common import UsageError


def add_reproduce(subparsers) -> None:
  p = subparsers.add_parser(
      "reproduce", help="run one experiment of experiments/ (a figure or study)",
      description=(
          "Runs experiments/<FIGURE>.py: get_config(full) then run(config, out_dir). CPU-sized "
          "by default, --full for the paper's sizes. The experiments live in the repository "
          f"checkout (an editable install), or in --experiments-dir / ${C.EXPERIMENTS_ENV}."))
  p.add_argument("figure", nargs="?", metavar="FIGURE", help="experiment name (see --list)")
  p.add_argument("--list", action="store_true", help="list the experiments and exit")
  p.add_argument("--full", action="store_true", help="the paper's sizes (default: CPU-sized)")
  p.add_argument("--out", type=pathlib.Path, metavar="DIR",
                 help="output directory (default: experiments/out/FIGURE)")
  p.add_argument("--experiments-dir", type=pathlib.Path, metavar="DIR",
                 help=f"where the experiments are (default: ${C.EXPERIMENTS_ENV}, else the "
                      "experiments/ folder next to the ntk_zoo package)")
  p.set_defaults(run=run_reproduce)


def experiments_dir(override: pathlib.Path | None = None) -> pathlib.Path:
  """`override`, else $NTK_ZOO_EXPERIMENTS, else `experiments/` beside the ntk_zoo package."""
  if override is None and os.environ.get(C.EXPERIMENTS_ENV):
    override = pathlib.Path(os.environ[C.EXPERIMENTS_ENV])
  path = override or pathlib.Path(__file__).resolve().parents[2] / "experiments"
  if not path.is_dir():
    raise UsageError(
        f"no experiments directory at {path}: `reproduce` runs the scripts of a repository "
        f"checkout (git clone, then pip install -e .), or pass --experiments-dir / set "
        f"${C.EXPERIMENTS_ENV}")
  return path


def list_experiments(path: pathlib.Path) -> dict[str, str]:
  """{name: first docstring line} of the modules in `path` defining get_config and run."""
  found = {}
  for file in sorted(path.glob("*.py")):
    if file.name.startswith("_"):
      continue
    try:
      tree = ast.parse(file.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
      continue
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    if {"get_config", "run"} <= defined:
      found[file.stem] = (ast.get_docstring(tree) or "").strip().split("\n")[0]
  return found


def run_reproduce(args: argparse.Namespace) -> dict[str, Any] | None:
  """`ntk-zoo reproduce`: runs one experiment; returns its result."""
  path = experiments_dir(args.experiments_dir)
  available = list_experiments(path)
  if args.list:
    width = max(map(len, available), default=0)
    for name, doc in available.items():
      print(f"{name:{width}s}  {doc}")
    if not available:
      print(f"(no experiments in {path})")
    return None
  if not args.figure:
    raise UsageError(f"name an experiment, or --list; available: {', '.join(available)}")
  name = args.figure.removesuffix(".py")
  if name not in available:
    raise UsageError(f"unknown experiment {args.figure!r} in {path}; available: "
                     f"{', '.join(available) or 'none'}")
  out = args.out or path / "out" / name
  C.check_writable(out)
  with _importable(path):
    module = _import_experiment(path, name)
    config = module.get_config(full=args.full)
    print(f"experiment {name} ({'full' if args.full else 'CPU-sized'}) -> {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    result = module.run(config, out)
  text = json.dumps(result, indent=2, default=_jsonable)
  C.write_outputs(out, {"result.json": lambda p: p.write_text(text + "\n")})
  print(text)
  print(f"wrote {out / 'result.json'}")
  return result


@contextlib.contextmanager
def _importable(path: pathlib.Path):
  """Lets an experiment import its siblings as `experiments.common` or `common`."""
  saved = list(sys.path)
  sys.path[:0] = [str(path.parent), str(path)]
  try:
    yield
  finally:
    sys.path[:] = saved


def _import_experiment(path: pathlib.Path, name: str):
  """Imports `path/name.py` as module `<path.name>.<name>`."""
  spec = importlib.util.spec_from_file_location(f"{path.name}.{name}", path / f"{name}.py")
  assert spec is not None and spec.loader is not None  # A .py file has a source loader.
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "tolist"):
    return value.tolist()
  if isinstance(value, pathlib.Path):
    return os.fspath(value)
  return str(value)
