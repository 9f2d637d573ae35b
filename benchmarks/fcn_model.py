"""The paper's Fig. 1 model, an L-layer ReLU FCN without biases, and the grid of cells over it.

numpy and jax only, so `fcn.py` (ntk_zoo's venv) and `peer_fcn.py` (the neural-tangents venv)
build bit-identical parameters and inputs from a seeded numpy generator, and sweep the same
cells; `experiments/fcn_scaling.py` uses the model as `benchmarks.fcn_model`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

if __package__:  # `benchmarks.fcn_model` (experiments/); else a script in benchmarks/.
  from . import harness, methods
else:
  import harness  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top


def fcn_params(width: int, outputs: int, depth: int = 10, seed: int = 0,
               dtype=np.float32) -> list[np.ndarray]:
  """`depth` weight matrices: (depth - 1) of W×W, then W×O; standard normal entries.

  Generated in float64 by numpy's PCG64 and cast, so every library and JAX version gets the
  same numbers.
  """
  rng = np.random.default_rng(seed)
  shapes = [(width, width)] * (depth - 1) + [(width, outputs)]
  return [rng.standard_normal(s).astype(dtype) for s in shapes]


def fcn_inputs(n: int, width: int, seed: int = 1, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Two batches x1, x2 of shape (n, width)."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, width)).astype(dtype),
          rng.standard_normal((n, width)).astype(dtype))


def cell_arrays(cell: dict):
  """(params, x1, x2) of a cell (`width`, `outputs`, `depth`, `n`) as jax arrays."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = [jnp.asarray(w) for w in fcn_params(cell["width"], cell["outputs"], cell["depth"])]
  x1, x2 = (jnp.asarray(x) for x in fcn_inputs(cell["n"], cell["width"]))
  return params, x1, x2


def fcn_apply(params, x):
  """ReLU between layers, none after the last; NTK parameterization (h @ w / sqrt(fan_in)).

  Standard-normal weights scaled by 1/sqrt(W) in the forward pass, as neural-tangents'
  `stax.Dense(parameterization='ntk')`; no biases.
  """
  import jax  # pylint: disable=g-import-not-at-top
  h = x
  for i, w in enumerate(params):
    h = (h @ w) * (1.0 / np.sqrt(w.shape[0]))
    if i + 1 < len(params):
      h = jax.nn.relu(h)
  return h


# ---------------------------------------------------------------------------------------------
# The grid: (N, W, O) configs × implementations, one cell each.

META_KEYS = ("benchmark", "library", "implementation", "n", "width", "outputs", "depth", "dtype")
QUICK = {"n": [1], "widths": [64, 128], "outputs": [1, 16]}
FULL = {"n": [1, 8], "widths": [64, 128, 256, 512, 1024], "outputs": [1, 16, 128]}


def add_grid_args(p: argparse.ArgumentParser, default_out: str) -> None:
  p.add_argument("--widths", type=methods.int_list, default=None,
                 help="comma-separated widths W (default 64,128,256,512,1024)")
  p.add_argument("--n", type=methods.int_list, default=None,
                 help="comma-separated batch sizes N (default 1,8)")
  p.add_argument("--outputs", type=methods.int_list, default=None,
                 help="comma-separated output sizes O (default 1,16,128)")
  p.add_argument("--implementations", type=methods.impl_list,
                 default=list(methods.IMPLEMENTATIONS),
                 help="comma-separated: jacobian_contraction, ntk_vector_products, "
                      "structured_derivatives, auto (aliases jc, vp, sd)")
  p.add_argument("--depth", type=int, default=10, help="number of dense layers (default 10)")
  p.add_argument("--repeats", type=int, default=3, help="warm runs per cell (median/min)")
  p.add_argument("--timeout", type=float, default=120.0,
                 help="seconds per cell subprocess (imports + compile + runs); past it the cell "
                      "is recorded as 'timeout'")
  p.add_argument("--mem-limit-mb", type=float, default=8000.0,
                 help="kill a cell whose resident memory exceeds this (recorded as 'oom')")
  p.add_argument("--quick", action="store_true",
                 help="tiny smoke grid: N=1, W in {64,128}, O in {1,16}")
  p.add_argument("--out", default=default_out, help="JSONL output path")
  p.add_argument("--resume", action="store_true",
                 help="append to --out and skip cells already recorded there with status ok")
  p.add_argument("--append", action="store_true",
                 help="append to --out and rerun every cell; the latest record per cell wins")


def grid_from_args(args) -> list[dict]:
  base = QUICK if args.quick else FULL
  ns = args.n or base["n"]
  ws = args.widths or base["widths"]
  os_ = args.outputs or base["outputs"]
  return [{"n": n, "width": w, "outputs": o, "depth": args.depth}
          for n in ns for w in ws for o in os_]


cell_key = harness.record_key("library", "implementation", "n", "width", "outputs", "depth")


def jobs(grid: list[dict], implementations, args, library: str, script: str,
         python: str = sys.executable, **cell_extra) -> list:
  """(meta, cmd) per (config, implementation): `script --cell` run by `python`.

  The cell is `meta` plus `args.repeats`, `args.timeout` and `cell_extra`.
  """
  out = []
  for cfg in grid:
    for impl in implementations:
      meta = {"benchmark": "fcn", "library": library, "implementation": impl, "dtype": "float32",
              **cfg}
      cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout, **cell_extra)
      out.append((meta, harness.cell_command(script, cell, python)))
  return out


def describe(rec: dict) -> str:
  """One line of a sweep's log for the cell's record."""
  ms = "" if rec.get("median_s") is None else f" median {rec['median_s'] * 1e3:.2f} ms"
  extra = (f" compile {rec['compile_s']:.2f} s peak {rec.get('peak_mb', 0):.0f} MB (runs "
           f"{rec.get('run_peak_mb', float('nan')):.0f} MB)" if ms else "")
  return (f"{rec.get('library')} {methods.SHORT.get(rec.get('implementation'))} "
          f"N={rec.get('n')} W={rec.get('width')} O={rec.get('outputs')}: {rec['status']}"
          f"{ms}{extra} (cell {rec['cell_wall_s']:.1f} s)"
          + ("" if rec["status"] == "ok" else f" — {str(rec.get('error', ''))[:200]}"))
