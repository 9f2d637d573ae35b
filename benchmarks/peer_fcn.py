"""The Fig. 1 FCN benchmark for the peer, neural-tangents, run INSIDE its own venv.

It imports neural_tangents (0.6.5, on JAX 0.4.23) and `benchmarks/common.py` (stdlib, numpy and
jax only), never ntk_zoo, and writes the same JSONL schema as `fcn.py` with
`"library": "neural-tangents"`. Build the venv once with
`bash benchmarks/peer/setup_neural_tangents.sh ~/.cache/ntk_zoo/nt-venv`, then either

    ~/.cache/ntk_zoo/nt-venv/bin/python benchmarks/peer_fcn.py --quick     # the peer alone
    /work/venv/bin/python benchmarks/fcn.py --peer-venv ~/.cache/ntk_zoo/nt-venv   # side by side

(`fcn.py` calls this script with the hidden `--cell` flag, one subprocess per cell.)

The peer's kernel is `nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=i)`,
jitted, with i = 1 (JACOBIAN_CONTRACTION), 2 (NTK_VECTOR_PRODUCTS), 3 (STRUCTURED_DERIVATIVES),
0 (AUTO). Its package `__init__` imports `neural_tangents.experimental`, which imports TensorFlow
(~6 s and ~0.5 GB per process, for the TF-interop helpers only); unless `--import-tf` is given we
put an empty module in its place before the import. Nothing `empirical_ntk_fn` uses is affected.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

LIBRARY = "neural-tangents"


def _import_nt(import_tf: bool):
  if not import_tf and "neural_tangents.experimental" not in sys.modules:
    sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
  import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  return nt


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in ("benchmark", "library", "implementation", "n", "width", "outputs",
                               "depth", "dtype")}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    nt = _import_nt(cell.get("import_tf", False))
    info = {"library_version": getattr(nt, "__version__", common.package_version("neural-tangents")),
            "peer_implementation_id": common.PEER_IDS[cell["implementation"]]}
    info.update(common.jax_info())
    params = [jnp.asarray(w) for w in common.fcn_params(cell["width"], cell["outputs"], cell["depth"])]
    x1, x2 = (jnp.asarray(x) for x in common.fcn_inputs(cell["n"], cell["width"]))
    kernel = nt.empirical_ntk_fn(common.fcn_apply, trace_axes=(), vmap_axes=0,
                                 implementation=common.PEER_IDS[cell["implementation"]])
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 3.0
    info.update(common.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                               repeats=cell["repeats"], time_budget_s=budget))
    return info

  common.cell_main(measure, meta)


def jobs_for(grid: list[dict], implementations, args, python: str = sys.executable) -> list:
  """(meta, cmd) per cell for this script, run by `python` (the peer venv's interpreter)."""
  jobs = []
  for cfg in grid:
    for impl in implementations:
      meta = {"benchmark": "fcn", "library": LIBRARY, "implementation": impl, "dtype": "float32",
              **cfg}
      cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout,
                  import_tf=getattr(args, "import_tf", False))
      jobs.append((meta, [python, os.path.abspath(__file__), "--cell", json.dumps(cell)]))
  return jobs


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  common.add_grid_args(p, default_out=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "out", "peer_fcn.jsonl"))
  p.add_argument("--import-tf", action="store_true",
                 help="import neural_tangents.experimental (and TensorFlow) as usual")
  args = p.parse_args(argv)
  if args.cell:
    run_one_cell(json.loads(args.cell))
    return
  jobs = jobs_for(common.grid_from_args(args), args.implementations, args)
  common.run_sweep(jobs, args.out, args.timeout, args.mem_limit_mb, resume=args.resume,
                   append=args.append)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
