"""Does `implementation="auto"` pick the fastest method? Checked on the FCN grid.

For every FCN cell measured by `benchmarks/fcn.py` (records in benchmarks/out/fcn.jsonl), this
asks `auto` for its decision on the same shapes (tracing only, nothing runs) and compares it with
the measured times (min of ≥ 3 warm runs) of ours JC / VP / SD. A decision counts as good when the chosen
method's time is within 10 % of the fastest measured one.

    python benchmarks/auto_check.py [--jsonl benchmarks/out/fcn.jsonl] [--markdown]

With --markdown the table is written to benchmarks/RESULTS.md between
`<!-- auto:begin -->` and `<!-- auto:end -->`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fcn_model  # noqa: E402  pylint: disable=wrong-import-position
import methods  # noqa: E402  pylint: disable=wrong-import-position
import reporting  # noqa: E402  pylint: disable=wrong-import-position

import ntk_zoo  # noqa: E402  pylint: disable=wrong-import-position

# The methods auto chooses between, in table order: JC, VP, SD.
SHORT = {m: methods.SHORT[m] for m in (methods.JC, methods.VP, methods.SD)}


def measured(path: pathlib.Path) -> dict:
  """{(n, w, o): {implementation: min seconds}} for ours, latest record per cell wins.

  The minimum of the warm runs, not the median: on a shared machine it is the least noisy
  estimate of a method's cost, and the decision is about cost, not about the load.
  """
  cells: dict = {}
  for line in path.read_text().splitlines():
    r = json.loads(line)
    if r.get("library") != "ntk_zoo" or r.get("implementation") not in SHORT:
      continue
    key = (r["n"], r["width"], r["outputs"])
    t = r.get("times_s")
    cells.setdefault(key, {})[r["implementation"]] = float(np.min(t)) if t else None
  return cells


def decision(n: int, w: int, o: int, depth: int = 10):
  """auto's Decision for the FCN cell (the same model as fcn.py; shapes only, nothing runs)."""
  params = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in fcn_model.fcn_params(w, o, depth)]
  x = jax.ShapeDtypeStruct((n, w), np.float32)
  kernel = ntk_zoo.ntk_fn(fcn_model.fcn_apply, trace_axes=(), vmap_axes=0)
  jax.eval_shape(kernel, x, x, params)
  return next(iter(kernel.decisions.values()))


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--jsonl", default=str(pathlib.Path(__file__).parent / "out" / "fcn.jsonl"))
  ap.add_argument("--markdown", action="store_true")
  ap.add_argument("--results-md", default=str(pathlib.Path(__file__).parent / "RESULTS.md"))
  args = ap.parse_args(argv)

  rows, good, total = [], 0, 0
  for (n, w, o), times in sorted(measured(pathlib.Path(args.jsonl)).items()):
    d = decision(n, w, o)
    known = {k: v for k, v in times.items() if v is not None}
    if not known:
      continue
    best = min(known, key=known.get)
    t_chosen = known.get(d.chosen)
    ok = t_chosen is not None and t_chosen <= 1.10 * known[best]
    total += 1
    good += ok
    cols = " | ".join(f"{known[k] * 1e3:.1f}" if k in known else "—" for k in SHORT)
    rows.append(f"| {n} | {w} | {o} | {cols} | {SHORT[best]} | {SHORT[d.chosen]} | "
                f"{'yes' if ok else 'NO'} |")
  table = "\n".join([
      f"Command: `python benchmarks/auto_check.py --markdown` (jax {jax.__version__}, "
      f"{platform.machine()}; measured times from `{pathlib.Path(args.jsonl).name}`, ours only).",
      "",
      f"auto picked the fastest measured method (or one within 10 %) in **{good}/{total}** cells.",
      "",
      "| N | W | O | JC ms (min) | VP ms (min) | SD ms (min) | fastest | auto | ok |",
      "|---|---|---|---|---|---|---|---|---|",
      *rows,
  ])
  print(table)
  if args.markdown:
    reporting.replace_between_markers(args.results_md, "<!-- auto:begin -->",
                                      "<!-- auto:end -->", f"## auto on the FCN grid\n\n{table}")


if __name__ == "__main__":
  main()
