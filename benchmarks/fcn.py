"""Fig. 1 of "Fast Finite Width NTK": full empirical NTK of a 10-layer ReLU FCN, per method.

Model: `depth` (10) dense layers without biases, input dim W, hidden width W, O outputs, ReLU in
between, standard-normal weights scaled by 1/sqrt(fan_in) in the forward pass (common.fcn_apply).
Kernel: `ntk_fn(f, implementation=..., trace_axes=(), vmap_axes=0)` on two float32 batches of N
inputs, i.e. Θ of shape (N, N, O, O), jitted. Each (config, implementation) runs in its own
subprocess (compile time, warm-run median/min and peak memory; see common.time_fn), one at a time.

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
import json
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_fcn  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBRARY = "ntk_zoo"
PEER = peer_fcn.LIBRARY
PEAK = "run_peak_mb"  # Table's memory column: peak RSS during execution (see common.time_fn).
BEGIN, END = "<!-- fcn:begin -->", "<!-- fcn:end -->"


# ---------------------------------------------------------------------------------------------
# One cell (runs in a subprocess).

def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in ("benchmark", "library", "implementation", "n", "width", "outputs",
                               "depth", "dtype")}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
    info = {"library_version": common.package_version("ntk_zoo")}
    info.update(common.jax_info())
    params = [jnp.asarray(w) for w in common.fcn_params(cell["width"], cell["outputs"], cell["depth"])]
    x1, x2 = (jnp.asarray(x) for x in common.fcn_inputs(cell["n"], cell["width"]))
    kernel = ntk_fn(common.fcn_apply, implementation=cell["implementation"], trace_axes=(),
                    vmap_axes=0)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 3.0
    info.update(common.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                               repeats=cell["repeats"], time_budget_s=budget))
    return info

  common.cell_main(measure, meta)


def availability(implementations) -> dict[str, str | None]:
  """None if ntk_zoo can build and trace `impl` on a tiny FCN, else why not (skip note)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
  params = common.fcn_params(4, 2, depth=3)
  x1, x2 = common.fcn_inputs(1, 4)
  out = {}
  for impl in implementations:
    try:
      k = ntk_fn(common.fcn_apply, implementation=impl, trace_axes=(), vmap_axes=0)
      jax.eval_shape(lambda a, b, p, k=k: k(a, b, p), x1, x2, params)
      out[impl] = None
    except (NotImplementedError, ImportError) as e:
      out[impl] = f"{type(e).__name__}: {e}"
    except Exception:  # pylint: disable=broad-except
      out[impl] = None  # Some other failure: run the cells and let them record the error.
  return out


def our_jobs(grid, implementations, args) -> list:
  jobs = []
  for cfg in grid:
    for impl in implementations:
      meta = {"benchmark": "fcn", "library": LIBRARY, "implementation": impl, "dtype": "float32",
              **cfg}
      cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout)
      jobs.append((meta, [sys.executable, os.path.abspath(__file__), "--cell", json.dumps(cell)]))
  return jobs


# ---------------------------------------------------------------------------------------------
# Markdown.

def _cell_text(rec: dict | None, field: str, scale: float = 1.0) -> str:
  if rec is None:
    return "—"
  st = rec.get("status")
  if st != "ok":
    return {"unavailable": "n/a", "timeout": "timeout", "oom": "OOM"}.get(st, "error")
  v = rec.get(field)
  if v is None:
    return "—"
  s = common.fmt_num(v * scale)
  if field == "median_s" and rec.get("runs", 0) < 3:  # Fewer than the default --repeats.
    s += "†"
  return s


def _ratio(a: dict | None, b: dict | None, field: str) -> float | None:
  if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
    return None
  va, vb = a.get(field), b.get(field)
  if va is None or vb is None or vb <= 0:
    return None
  return va / vb


def _fastest(recs: dict, lib: str, impls) -> str:
  best = None
  for impl in impls:
    r = recs.get((lib, impl))
    if impl == "auto" or not r or r.get("status") != "ok":
      continue
    if best is None or r["median_s"] < best[1]:
      best = (impl, r["median_s"])
  return common.SHORT[best[0]] if best else "—"


def _row(cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _geomean(xs):
  xs = [x for x in xs if x and x > 0]
  return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def markdown(records: list[dict], meta: dict) -> str:
  latest = {}
  for r in records:
    latest[common.cell_key(r)] = r
  records = list(latest.values())
  by_cfg: dict[tuple, dict] = {}
  for r in records:
    by_cfg.setdefault((r["n"], r["width"], r["outputs"]), {})[(r["library"], r["implementation"])] = r
  cfgs = sorted(by_cfg)
  impls = [i for i in common.IMPLEMENTATIONS if any(r["implementation"] == i for r in records)]
  has_peer = any(r["library"] == PEER for r in records)
  ours = [r for r in records if r["library"] == LIBRARY and r.get("status") == "ok"]
  peers = [r for r in records if r["library"] == PEER and r.get("status") == "ok"]
  m = meta.get("machine", {})
  lines = ["## FCN (paper Fig. 1)", ""]
  cmds = meta.get("commands") or [meta.get("command", "?")]
  lines.append("Command" + ("s (in order, " if len(cmds) > 1 else " (") + "from the repository root): "
               + "; ".join(f"`{c}`" for c in cmds))
  lines.append("")
  jv = sorted({r.get("jax_version") for r in ours if r.get("jax_version")})
  pv = sorted({f"{r.get('library_version')} on JAX {r.get('jax_version')}" for r in peers})
  lines.append(
      f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model', '?')}), shared with other jobs; "
      f"{meta.get('platform', 'cpu')}; ntk_zoo on JAX {', '.join(jv) or '?'}"
      + (f"; neural-tangents {', '.join(pv)}" if pv else "") + f"; last command run {m.get('date', '?')}.")
  lines.append("")
  lines.append(
      f"Model: {meta.get('depth', 10)}-layer ReLU FCN, no biases, input dim = width W, NTK "
      "parameterization; full kernel Θ(x1, x2) of shape (N, N, O, O) (`trace_axes=()`, "
      "`vmap_axes=0`), float32, jitted. Each (config, implementation, library) ran in a fresh "
      "subprocess, one at a time"
      + (", ours then the peer's back to back" if has_peer else "")
      + f". Time: median of ≥ {meta.get('repeats', 3)} warm runs after one untimed first run "
      "(fast cells: as many runs as fill ~1 s, at most 100; † fewer than "
      f"{meta.get('repeats', 3)} fitted the per-cell time limit). Compile: `jit(...).lower().compile()`, "
      "trace + lower + compile. Peak MB: process peak RSS (`ru_maxrss`) minus the RSS after "
      "imports and input creation, during the runs only (`run_peak_mb`: the peak mark is reset "
      "after compiling; the compile-inclusive peak is `peak_mb` in the JSONL); it includes the "
      "resident executable and output, a CPU-only proxy with a few MB of noise. "
      f"timeout: the cell exceeded {meta.get('timeout', '?'):.0f} s (imports + compile + "
      f"runs); OOM: resident memory passed the {meta.get('mem_limit_mb', '?'):.0f} MB cap; n/a: "
      "implementation not available.")
  lines.append("")
  loads = sorted(l for r in records for l in (r.get("loadavg_1m") or []))
  if loads:
    n_load = sum(1 for r in records if r.get("loadavg_1m"))
    lines.append(
        f"Machine load (1-min load average on {m.get('cpu_count')} CPUs, sampled at each cell's "
        f"start and end; recorded for {n_load} of {len(records)} cells): median {loads[len(loads) // 2]:.1f}, range {loads[0]:.1f}–"
        f"{loads[-1]:.1f}. Other jobs shared the CPUs; ours and the peer's ran back to back per "
        "cell, so compare ratios within a row, and treat sub-10 ms cells as ±2×.")
    lines.append("")
  skipped = meta.get("skipped") or {}
  for impl, why in skipped.items():
    lines.append(f"- ntk_zoo `{impl}` skipped: {why}")
  if skipped:
    lines.append("")

  if not has_peer:
    head = ["N", "W", "O"]
    for i in impls:
      s = common.SHORT[i]
      head += [f"{s} ms", f"{s} compile s", f"{s} peak MB"]
    head.append("fastest")
    lines += [_row(head), _row(["---"] * len(head))]
    for c in cfgs:
      rc = by_cfg[c]
      row = list(c)
      for i in impls:
        r = rc.get((LIBRARY, i))
        row += [_cell_text(r, "median_s", 1e3), _cell_text(r, "compile_s"),
                _cell_text(r, PEAK)]
      row.append(_fastest(rc, LIBRARY, impls))
      lines.append(_row(row))
  else:
    lines.append("**Median time (ms)**; ratio = ours / peer (< 1: ntk_zoo faster).")
    lines.append("")
    head = ["N", "W", "O"]
    for i in impls:
      s = common.SHORT[i]
      head += [f"{s} ours", f"{s} peer", f"{s} ratio"]
    head += ["fastest ours", "fastest peer"]
    lines += [_row(head), _row(["---"] * len(head))]
    for c in cfgs:
      rc = by_cfg[c]
      row = list(c)
      for i in impls:
        a, b = rc.get((LIBRARY, i)), rc.get((PEER, i))
        row += [_cell_text(a, "median_s", 1e3), _cell_text(b, "median_s", 1e3),
                common.fmt_num(_ratio(a, b, "median_s"), 2)]
      row += [_fastest(rc, LIBRARY, impls), _fastest(rc, PEER, impls)]
      lines.append(_row(row))
    lines.append("")
    lines.append("**Compile s and peak MB, ours / peer**; mem ratio = ours / peer peak MB.")
    lines.append("")
    head = ["N", "W", "O"]
    for i in impls:
      s = common.SHORT[i]
      head += [f"{s} compile s", f"{s} peak MB", f"{s} mem ratio"]
    lines += [_row(head), _row(["---"] * len(head))]
    for c in cfgs:
      rc = by_cfg[c]
      row = list(c)
      for i in impls:
        a, b = rc.get((LIBRARY, i)), rc.get((PEER, i))
        row += [f"{_cell_text(a, 'compile_s')} / {_cell_text(b, 'compile_s')}",
                f"{_cell_text(a, PEAK)} / {_cell_text(b, PEAK)}",
                common.fmt_num(_ratio(a, b, PEAK), 2)]
      lines.append(_row(row))
    lines.append("")
    lines.append("Summary over cells where both ran (geometric mean of ours / peer):")
    lines.append("")
    for i in impls:
      tr = [_ratio(by_cfg[c].get((LIBRARY, i)), by_cfg[c].get((PEER, i)), "median_s") for c in cfgs]
      mr = [_ratio(by_cfg[c].get((LIBRARY, i)), by_cfg[c].get((PEER, i)), "min_s") for c in cfgs]
      cr = [_ratio(by_cfg[c].get((LIBRARY, i)), by_cfg[c].get((PEER, i)), "compile_s") for c in cfgs]
      tr_ok = [t for t in tr if t]
      if not tr_ok:
        continue
      lines.append(
          f"- {common.SHORT[i]}: time {common.fmt_num(_geomean(tr_ok), 2)} "
          f"(range {common.fmt_num(min(tr_ok), 2)}–{common.fmt_num(max(tr_ok), 2)}, ours faster "
          f"in {sum(t < 1 for t in tr_ok)}/{len(tr_ok)}); with min instead of median "
          f"{common.fmt_num(_geomean([x for x in mr if x]), 2)}; compile "
          f"{common.fmt_num(_geomean([c for c in cr if c]), 2)}.")

  # Cross-check: every implementation (and library) should give the same kernel.
  worst = (0.0, None)
  for c in cfgs:
    norms = [r["kernel_norm"] for r in by_cfg[c].values()
             if r.get("status") == "ok" and r.get("kernel_norm")]
    if len(norms) > 1:
      rel = (max(norms) - min(norms)) / max(norms)
      if rel > worst[0]:
        worst = (rel, c)
  lines.append("")
  lines.append(
      "Agreement: the Frobenius norm of Θ agrees across all implementations"
      + (" and both libraries" if has_peer else "")
      + f" to a relative {worst[0]:.1e} at worst"
      + (f" (N, W, O = {worst[1]})" if worst[1] else "") + ".")
  lines.append("")
  lines.append(f"Raw records (all fields, incl. min, first run, XLA FLOPs and temp buffers): "
               f"`{meta.get('out_rel', 'benchmarks/out/fcn.jsonl')}` (not committed).")
  return "\n".join(lines)


RESULTS_HEADER = """# ntk_zoo benchmark results

Generated by the scripts in `benchmarks/` (see `benchmarks/README.md`); each section is rewritten
between its markers by the script named in it. Timings on a shared 2-core CPU are noisy (±10–20 %);
compare within one table, not across runs.

"""


def write_markdown(args, records, meta) -> None:
  common.replace_between_markers(args.results_md, BEGIN, END, markdown(records, meta),
                                 header=RESULTS_HEADER)
  print(f"wrote the FCN section of {args.results_md}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_grid_args(p, default_out=os.path.join(HERE, "out", "fcn.jsonl"))
  p.add_argument("--peer-venv", default=None,
                 help="neural-tangents venv (setup_neural_tangents.sh); runs the peer side by side")
  p.add_argument("--markdown", action="store_true",
                 help="(re)write the FCN section of --results-md from --out")
  p.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
  p.add_argument("--report-only", action="store_true",
                 help="run nothing; with --markdown, rebuild the table from --out")
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  if args.cell:
    run_one_cell(json.loads(args.cell))
    return

  meta_path = args.out + ".meta.json"
  if not args.report_only:
    grid = common.grid_from_args(args)
    avail = availability(args.implementations)
    skipped = {i: why for i, why in avail.items() if why}
    for i, why in skipped.items():
      print(f"ntk_zoo {i}: skipped ({why})", file=sys.stderr)
    ours = our_jobs(grid, [i for i in args.implementations if not avail[i]], args)
    jobs = ours
    if args.peer_venv:
      py = os.path.join(os.path.expanduser(args.peer_venv), "bin", "python")
      if not os.path.exists(py):
        p.error(f"--peer-venv: {py} not found; build it with setup_neural_tangents.sh")
      peer = peer_fcn.jobs_for(grid, args.implementations, args, python=py)
      # Per (config, implementation): ours, then the peer's, back to back (peer cells also run
      # for implementations ours skipped).
      jobs = sorted(ours + peer, key=lambda mc: (
          mc[0]["n"], mc[0]["width"], mc[0]["outputs"],
          common.IMPLEMENTATIONS.index(mc[0]["implementation"]), mc[0]["library"] != LIBRARY))
    import jax  # pylint: disable=g-import-not-at-top
    meta = {"command": shlex.join([os.path.relpath(sys.executable, REPO)
                                   if sys.executable.startswith(REPO) else sys.executable,
                                   os.path.relpath(os.path.abspath(__file__), REPO), *argv]),
            "machine": common.machine_info(), "platform": jax.devices()[0].platform,
            "repeats": args.repeats, "timeout": args.timeout, "mem_limit_mb": args.mem_limit_mb,
            "depth": args.depth, "skipped": skipped,
            "out_rel": os.path.relpath(os.path.abspath(args.out), REPO)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if (args.resume or args.append) and os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      meta["commands"] = old.get("commands", [old.get("command")]) + [meta["command"]]
      meta["skipped"] = {k: v for k, v in {**old.get("skipped", {}), **skipped}.items()
                         if not (k in args.implementations and k not in skipped)}
    with open(meta_path, "w") as f:
      json.dump(meta, f, indent=1)
    t0 = time.time()
    print(f"{len(jobs)} cells, one at a time, timeout {args.timeout:.0f} s each", file=sys.stderr)
    common.run_sweep(jobs, args.out, args.timeout, args.mem_limit_mb, resume=args.resume,
                     append=args.append, cwd=REPO)
    print(f"done in {time.time() - t0:.0f} s; wrote {args.out}", file=sys.stderr)
  if args.markdown:
    if not os.path.exists(meta_path):
      p.error(f"{meta_path} not found: run the sweep first")
    with open(meta_path) as f:
      meta = json.load(f)
    write_markdown(args, common.read_jsonl(args.out), meta)


if __name__ == "__main__":
  main()
