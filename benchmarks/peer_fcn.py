"""The Fig. 1 FCN benchmark for the peer, neural-tangents, run INSIDE its own venv.

It imports neural_tangents (0.6.5, on JAX 0.4.23) and this directory's `harness`, `methods`,
`fcn_model` and `peer_nt` (stdlib, numpy and jax only), never ntk_zoo, and writes the same JSONL
schema as `fcn.py` with `"library": "neural-tangents"`. Build the venv once with
`bash benchmarks/peer/setup_neural_tangents.sh ~/.cache/ntk_zoo/nt-venv`, then either

    ~/.cache/ntk_zoo/nt-venv/bin/python benchmarks/peer_fcn.py --quick     # the peer alone
    /work/venv/bin/python benchmarks/fcn.py --peer-venv ~/.cache/ntk_zoo/nt-venv   # side by side

(`fcn.py` calls this script with the hidden `--cell` flag, one subprocess per cell.)

The peer's kernel is `nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=i)`,
jitted, with i = 1 (JACOBIAN_CONTRACTION), 2 (NTK_VECTOR_PRODUCTS), 3 (STRUCTURED_DERIVATIVES),
0 (AUTO). `neural_tangents.experimental` (TensorFlow interop) is replaced by an empty module
unless `--import-tf` is given (`peer_nt.import_nt`).
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fcn_model  # pylint: disable=g-import-not-at-top,wrong-import-position
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_nt  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in fcn_model.META_KEYS}

  def measure():
    _, kernel, info = peer_nt.kernel(fcn_model.fcn_apply, cell)
    params, x1, x2 = fcn_model.cell_arrays(cell)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 3.0
    info.update(harness.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                                repeats=cell["repeats"], time_budget_s=budget))
    return info

  harness.cell_main(measure, meta)


def jobs_for(grid: list[dict], implementations, args, python: str = sys.executable) -> list:
  """(meta, cmd) per cell for this script, run by `python` (the peer venv's interpreter)."""
  return fcn_model.jobs(grid, implementations, args, methods.PEER, __file__, python,
                        import_tf=getattr(args, "import_tf", False))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  fcn_model.add_grid_args(p, default_out=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "out", "peer_fcn.jsonl"))
  p.add_argument("--import-tf", action="store_true",
                 help="import neural_tangents.experimental (and TensorFlow) as usual")
  args = p.parse_args(argv)
  jobs = jobs_for(fcn_model.grid_from_args(args), args.implementations, args)
  harness.run_sweep(jobs, args.out, args.timeout, args.mem_limit_mb, key=fcn_model.cell_key,
                    describe=fcn_model.describe, resume=args.resume, append=args.append)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  harness.script_main(main, run_one_cell)
