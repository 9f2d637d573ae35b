"""Fig. 1 of "Fast Finite Width NTK": full empirical NTK of a 10-layer ReLU FCN, per method.

Model: `depth` (10) dense layers without biases, input dim W, hidden width W, O outputs, ReLU in
between, standard-normal weights scaled by 1/sqrt(fan_in) in the forward pass (fcn_model.fcn_apply).
Kernel: `ntk_fn(f, implementation=..., trace_axes=(), vmap_axes=0)` on two float32 batches of N
inputs, i.e. Θ of shape (N, N, O, O), jitted. Each (config, implementation) runs in its own
subprocess (compile time, warm-run median/min and peak memory; see harness.time_fn), one at a time.

    python benchmarks/fcn.py --quick                          # smoke run, ours only
    python benchmarks/fcn.py --markdown                       # full grid, table into RESULTS.md
    python benchmarks/fcn.py --peer-venv ~/.cache/ntk_zoo/nt-venv --markdown   # side by side
    python benchmarks/fcn.py --report-only --markdown         # rewrite the table from --out

Implementations that ntk_zoo cannot build yet (`ntk_fn` raising NotImplementedError/ImportError)
are skipped with a note and picked up automatically once they work. With `--peer-venv`, every
cell runs ours then neural-tangents (`peer_fcn.py` in that venv) back to back, so both see the
same machine load, and the table gains ours/peer time and memory ratios.
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
import peer_fcn  # pylint: disable=g-import-not-at-top,wrong-import-position
import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position

OURS, PEER = methods.OURS, methods.PEER
PEAK = "run_peak_mb"  # Table's memory column: peak RSS during execution (see harness.time_fn).
BEGIN, END = "<!-- fcn:begin -->", "<!-- fcn:end -->"
SHORT = methods.SHORT


# ---------------------------------------------------------------------------------------------
# One cell (runs in a subprocess).

def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in fcn_model.META_KEYS}

  def measure():
    from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
    info = harness.cell_info(harness.package_version("ntk_zoo"))
    params, x1, x2 = fcn_model.cell_arrays(cell)
    kernel = ntk_fn(fcn_model.fcn_apply, implementation=cell["implementation"], trace_axes=(),
                    vmap_axes=0)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 3.0
    info.update(harness.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                                repeats=cell["repeats"], time_budget_s=budget))
    return info

  harness.cell_main(measure, meta)


def availability(implementations) -> dict[str, str | None]:
  """None if ntk_zoo can build and trace `impl` on a tiny FCN, else why not (skip note)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
  params = fcn_model.fcn_params(4, 2, depth=3)
  x1, x2 = fcn_model.fcn_inputs(1, 4)
  out = {}
  for impl in implementations:
    try:
      k = ntk_fn(fcn_model.fcn_apply, implementation=impl, trace_axes=(), vmap_axes=0)
      jax.eval_shape(lambda a, b, p, k=k: k(a, b, p), x1, x2, params)
      out[impl] = None
    except (NotImplementedError, ImportError) as e:
      out[impl] = f"{type(e).__name__}: {e}"
    except Exception:  # pylint: disable=broad-except
      out[impl] = None  # Some other failure: run the cells and let them record the error.
  return out


def build_jobs(args, grid, implementations, peer_python: str | None) -> list:
  """(meta, cmd) per cell: per (config, implementation), ours then the peer's, back to back.

  The peer's cells also run for implementations ours skipped.
  """
  jobs = fcn_model.jobs(grid, implementations, args, OURS, __file__)
  if not peer_python:
    return jobs
  jobs += peer_fcn.jobs_for(grid, args.implementations, args, python=peer_python)
  return sorted(jobs, key=lambda mc: (
      mc[0]["n"], mc[0]["width"], mc[0]["outputs"],
      methods.IMPLEMENTATIONS.index(mc[0]["implementation"]), mc[0]["library"] != OURS))


# ---------------------------------------------------------------------------------------------
# Markdown.

def _fastest(recs: dict, lib: str, impls) -> str:
  best = None
  for impl in impls:
    r = recs.get((lib, impl))
    if impl == "auto" or not r or r.get("status") != "ok":
      continue
    if best is None or r["median_s"] < best[1]:
      best = (impl, r["median_s"])
  return SHORT[best[0]] if best else "—"


def _grid_table(by_cfg: dict, impls, columns, extra=()) -> list[str]:
  """A row per (N, W, O): `columns` per implementation, then `extra` columns.

  columns: (name, cell(recs, impl)) pairs, headed "SHORT name"; extra: (head, cell(recs)) pairs;
  `recs` is the config's {(library, implementation): record}.
  """
  head = (["N", "W", "O"] + [f"{SHORT[i]} {name}" for i in impls for name, _ in columns]
          + [name for name, _ in extra])
  return reporting.table(head, [
      list(c) + [cell(by_cfg[c], i) for i in impls for _, cell in columns]
      + [cell(by_cfg[c]) for _, cell in extra] for c in sorted(by_cfg)])


def _text(lib: str, field: str, scale: float = 1.0):
  return lambda recs, impl: reporting.cell_text(recs.get((lib, impl)), field, scale)


def _both(field: str):
  return lambda recs, impl: f"{_text(OURS, field)(recs, impl)} / {_text(PEER, field)(recs, impl)}"


def _ratio(field: str):
  return lambda recs, impl: reporting.fmt_num(
      reporting.ratio(recs.get((OURS, impl)), recs.get((PEER, impl)), field), 2)


def _fastest_of(lib: str, impls):
  return lambda recs: _fastest(recs, lib, impls)


def _ours_table(by_cfg: dict, impls) -> list[str]:
  return _grid_table(by_cfg, impls, [("ms", _text(OURS, "median_s", 1e3)),
                                     ("compile s", _text(OURS, "compile_s")),
                                     ("peak MB", _text(OURS, PEAK))],
                     [("fastest", _fastest_of(OURS, impls))])


def _peer_tables(by_cfg: dict, impls) -> list[str]:
  """Time (ours, peer, ratio), then compile time and memory (ours / peer); a summary."""
  lines = ["**Median time (ms)**; ratio = ours / peer (< 1: ntk_zoo faster).", ""]
  lines += _grid_table(by_cfg, impls, [("ours", _text(OURS, "median_s", 1e3)),
                                       ("peer", _text(PEER, "median_s", 1e3)),
                                       ("ratio", _ratio("median_s"))],
                       [("fastest ours", _fastest_of(OURS, impls)),
                        ("fastest peer", _fastest_of(PEER, impls))])
  lines += ["", "**Compile s and peak MB, ours / peer**; mem ratio = ours / peer peak MB.", ""]
  lines += _grid_table(by_cfg, impls, [("compile s", _both("compile_s")), ("peak MB", _both(PEAK)),
                                       ("mem ratio", _ratio(PEAK))])
  lines += ["", "Summary over cells where both ran (geometric mean of ours / peer):", ""]
  return lines + _summary(by_cfg, impls)


def _summary(by_cfg: dict, impls) -> list[str]:
  fmt = lambda v: reporting.fmt_num(v, 2)
  lines = []
  for i in impls:
    pairs = [(rc.get((OURS, i)), rc.get((PEER, i))) for _, rc in sorted(by_cfg.items())]
    tr, mr, cr = ([reporting.ratio(a, b, field) for a, b in pairs]
                  for field in ("median_s", "min_s", "compile_s"))
    tr_ok = [t for t in tr if t]
    if not tr_ok:
      continue
    lines.append(
        f"- {SHORT[i]}: time {fmt(reporting.geomean(tr_ok))} (range {fmt(min(tr_ok))}–"
        f"{fmt(max(tr_ok))}, ours faster in {sum(t < 1 for t in tr_ok)}/{len(tr_ok)}); with min "
        f"instead of median {fmt(reporting.geomean(mr))}; compile {fmt(reporting.geomean(cr))}.")
  return lines


def _agreement(by_cfg: dict, has_peer: bool) -> str:
  """Every implementation (and library) should give the same kernel: the worst spread of ‖Θ‖."""
  worst = (0.0, None)
  for c in sorted(by_cfg):
    norms = [r["kernel_norm"] for r in by_cfg[c].values()
             if r.get("status") == "ok" and r.get("kernel_norm")]
    if len(norms) > 1:
      rel = (max(norms) - min(norms)) / max(norms)
      if rel > worst[0]:
        worst = (rel, c)
  return ("Agreement: the Frobenius norm of Θ agrees across all implementations"
          + (" and both libraries" if has_peer else "")
          + f" to a relative {worst[0]:.1e} at worst"
          + (f" (N, W, O = {worst[1]})" if worst[1] else "") + ".")


def _intro(records: list[dict], meta: dict, has_peer: bool) -> list[str]:
  """Commands, machine, what was measured, the machine load, implementations skipped."""
  ok = [r for r in records if r.get("status") == "ok"]
  lines = reporting.header("## FCN (paper Fig. 1)", meta,
                           reporting.jax_versions(r for r in ok if r["library"] == OURS),
                           reporting.peer_versions(r for r in ok if r["library"] == PEER),
                           when="last command run ")
  repeats = meta.get("repeats", 3)
  lines += [
      f"Model: {meta.get('depth', 10)}-layer ReLU FCN, no biases, input dim = width W, NTK "
      "parameterization; full kernel Θ(x1, x2) of shape (N, N, O, O) (`trace_axes=()`, "
      "`vmap_axes=0`), float32, jitted. Each (config, implementation, library) ran in a fresh "
      "subprocess, one at a time"
      + (", ours then the peer's back to back" if has_peer else "")
      + f". Time: median of ≥ {repeats} warm runs after one untimed first run "
      "(fast cells: as many runs as fill ~1 s, at most 100; † fewer than "
      f"{repeats} fitted the per-cell time limit). Compile: `jit(...).lower().compile()`, "
      "trace + lower + compile. Peak MB: process peak RSS (`ru_maxrss`) minus the RSS after "
      "imports and input creation, during the runs only (`run_peak_mb`: the peak mark is reset "
      "after compiling; the compile-inclusive peak is `peak_mb` in the JSONL); it includes the "
      "resident executable and output, a CPU-only proxy with a few MB of noise. "
      f"timeout: the cell exceeded {meta.get('timeout', '?'):.0f} s (imports + compile + "
      f"runs); OOM: resident memory passed the {meta.get('mem_limit_mb', '?'):.0f} MB cap; n/a: "
      "implementation not available.", ""]
  load = reporting.load_range(records)
  if load:
    m = meta.get("machine", {})
    n_load = sum(1 for r in records if r.get("loadavg_1m"))
    lines += [
        f"Machine load (1-min load average on {m.get('cpu_count')} CPUs, sampled at each cell's "
        f"start and end; recorded for {n_load} of {len(records)} cells): {load}. Other jobs "
        "shared the CPUs; ours and the peer's ran back to back per cell, so compare ratios "
        "within a row, and treat sub-10 ms cells as ±2×.", ""]
  skipped = meta.get("skipped") or {}
  lines += [f"- ntk_zoo `{impl}` skipped: {why}" for impl, why in skipped.items()]
  return lines + ([""] if skipped else [])


def markdown(records: list[dict], meta: dict) -> str:
  records = reporting.latest(records, fcn_model.cell_key)
  by_cfg: dict[tuple, dict] = {}  # (N, W, O) -> (library, implementation) -> record.
  for r in records:
    cfg = by_cfg.setdefault((r["n"], r["width"], r["outputs"]), {})
    cfg[(r["library"], r["implementation"])] = r
  impls = [i for i in methods.IMPLEMENTATIONS if any(r["implementation"] == i for r in records)]
  has_peer = any(r["library"] == PEER for r in records)
  lines = _intro(records, meta, has_peer)
  lines += _peer_tables(by_cfg, impls) if has_peer else _ours_table(by_cfg, impls)
  lines += ["", _agreement(by_cfg, has_peer), "",
            f"Raw records (all fields, incl. min, first run, XLA FLOPs and temp buffers): "
            f"`{meta.get('out_rel', 'benchmarks/out/fcn.jsonl')}` (not committed)."]
  return "\n".join(lines)


def write_markdown(args, records, meta) -> None:
  reporting.replace_between_markers(args.results_md, BEGIN, END, markdown(records, meta),
                                    header=reporting.RESULTS_HEADER)
  print(f"wrote the FCN section of {args.results_md}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------

def run(args, argv, peer_python: str | None, meta_path: str) -> None:
  """The sweep: checks which implementations ours has, writes the .meta.json, runs the cells."""
  grid = fcn_model.grid_from_args(args)
  avail = availability(args.implementations)
  skipped = {i: why for i, why in avail.items() if why}
  for i, why in skipped.items():
    print(f"ntk_zoo {i}: skipped ({why})", file=sys.stderr)
  jobs = build_jobs(args, grid, [i for i in args.implementations if not avail[i]], peer_python)
  meta = harness.sweep_meta(__file__, argv, args, short_python=True, depth=args.depth,
                            skipped=skipped)
  old = harness.read_meta(meta_path) if args.resume or args.append else {}
  if old:
    harness.chain_commands(meta, old)
    meta["skipped"] = {k: v for k, v in {**old.get("skipped", {}), **skipped}.items()
                       if not (k in args.implementations and k not in skipped)}
  harness.write_meta(meta_path, meta)
  t0 = time.time()
  print(f"{len(jobs)} cells, one at a time, timeout {args.timeout:.0f} s each", file=sys.stderr)
  harness.run_sweep(jobs, args.out, args.timeout, args.mem_limit_mb, key=fcn_model.cell_key,
                    describe=fcn_model.describe, resume=args.resume, append=args.append,
                    cwd=harness.REPO)
  print(f"done in {time.time() - t0:.0f} s; wrote {args.out}", file=sys.stderr)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  fcn_model.add_grid_args(p, default_out=os.path.join(harness.BENCHMARKS, "out", "fcn.jsonl"))
  p.add_argument("--peer-venv", default=None,
                 help="neural-tangents venv (setup_neural_tangents.sh); runs the peer side by side")
  p.add_argument("--markdown", action="store_true",
                 help="(re)write the FCN section of --results-md from --out")
  p.add_argument("--results-md", default=os.path.join(harness.BENCHMARKS, "RESULTS.md"))
  p.add_argument("--report-only", action="store_true",
                 help="run nothing; with --markdown, rebuild the table from --out")
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  meta_path = args.out + ".meta.json"
  if not args.report_only:
    run(args, argv, harness.peer_python(p, args.peer_venv), meta_path)
  if args.markdown:
    if not os.path.exists(meta_path):
      p.error(f"{meta_path} not found: run the sweep first")
    write_markdown(args, harness.read_jsonl(args.out), harness.read_meta(meta_path))


if __name__ == "__main__":
  harness.script_main(main, run_one_cell)
