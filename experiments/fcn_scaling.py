"""Paper Fig. 1: time and FLOPs per NTK entry of a 10-layer ReLU FCN vs width, every method.

    python experiments/fcn_scaling.py                        # CPU-sized (W 64..2048), ~10 min
    python experiments/fcn_scaling.py --publish              # + figures/ PNG and RESULTS.md
    python experiments/fcn_scaling.py --full                 # the paper's sizes (accelerator)
    python experiments/fcn_scaling.py --set widths=64,128 --set outputs=1,16

Model: `benchmarks.fcn_model.fcn_apply` (10 dense layers without biases, input dim = width W, ReLU
in between, NTK parameterization), full kernel Θ(x1, x2) of shape (N, N, O, O) from
`ntk_fn(f, implementation=..., trace_axes=(), vmap_axes=0, memory_budget=...)`, float32,
jitted. Every (N, O, W, method) cell runs in its own subprocess (`benchmarks.harness.run_cell`):
a cell that passes `timeout_s` or `mem_limit_mb` (or whose kernel raises `BudgetError`, i.e.
no blocking fits `memory_budget_mb`) is a missing point, and wider cells of that method and
(N, O) are not tried. Time: the warm-run median of `benchmarks.harness.time_fn`. FLOPs: XLA's
`cost_analysis()` of the compiled kernel, with every `scan` unrolled where the kernel has loops
(XLA counts a loop body once; see `_flops.py`), counted in a second subprocess where the timed
one has no time left. Per NTK entry: divided by (N·O)².

Records: `out_dir/cells.jsonl` (finished cells, skipped on a rerun), `out_dir/fcn_scaling.png`,
`out_dir/report.md`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import math  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import ml_collections  # noqa: E402

if __package__ in (None, ""):  # Run as a script: make `experiments` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks import fcn_model, harness, methods, reporting  # noqa: E402

NAME = "fcn_scaling"
METHODS = methods.IMPLEMENTATIONS  # jacobian_contraction, ntk_vector_products, structured_.., auto
SHORT = methods.SHORT
FAILED = ("oom", "timeout")
BEGIN, END = f"<!-- {NAME}:begin -->", f"<!-- {NAME}:end -->"


def get_config(full: bool = False) -> ml_collections.ConfigDict:
  """The CPU-sized grid, or the paper's (`full`: W up to 8192, meant for an accelerator).

  Fields: `depth`, `n`, `outputs`, `widths` (the grid); `implementations`; `repeats` and
  `min_time_s` (warm runs: at least `repeats`, more until `min_time_s` in all); `timeout_s` and
  `mem_limit_mb` (per cell subprocess; 0: no memory cap); `memory_budget_mb` (passed to
  `ntk_fn`, 0: its default); `skip_wider` (after a failure, do not try wider cells).
  """
  c = ml_collections.ConfigDict()
  c.full = full
  c.publish = False
  c.depth = 10
  c.n = [1, 8]
  c.outputs = [1, 16, 128]
  c.widths = [64, 128, 256, 512, 1024, 2048]
  c.implementations = list(METHODS)
  c.repeats = 3
  c.min_time_s = 0.2
  c.timeout_s = 30.0
  # A small accelerator's worth of memory, so out-of-memory shows within the CPU grid. No
  # `memory_budget`: the engines plan for the machine's RAM, as they would for a device's
  # memory, and a method that needs more than the cap is killed (a missing point).
  c.mem_limit_mb = 2500.0
  c.memory_budget_mb = 0.0
  c.skip_wider = True
  if full:
    c.widths = [2 ** k for k in range(6, 14)]  # 64 ... 8192
    c.repeats = 5
    c.min_time_s = 1.0
    c.timeout_s = 600.0
    c.mem_limit_mb = 0.0  # On an accelerator: device memory is the limit (RESOURCE_EXHAUSTED).
    c.memory_budget_mb = 0.0
  return c


# ---------------------------------------------------------------------------------------------
# One cell, in its own subprocess.

def _measure(cell: dict) -> dict:
  """Times the kernel (`cell["mode"] == "time"`) or only counts its FLOPs ("flops")."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk.memory import BudgetError  # pylint: disable=g-import-not-at-top
  from experiments import _flops  # pylint: disable=g-import-not-at-top

  params = [jnp.asarray(w) for w in fcn_model.fcn_params(cell["width"], cell["outputs"],
                                                          cell["depth"])]
  x1, x2 = (jnp.asarray(x) for x in fcn_model.fcn_inputs(cell["n"], cell["width"]))
  budget = cell["memory_budget_mb"] * 2 ** 20 or None
  kernel = ntk_zoo.ntk_fn(fcn_model.fcn_apply, implementation=cell["implementation"],
                          trace_axes=(), vmap_axes=0, memory_budget=budget)
  fn = lambda a, b, p: kernel(a, b, p)  # noqa: E731
  if cell["mode"] == "flops":
    res = _flops.unrolled_flops(fn, x1, x2, params)
    return {**res, "xla_flops": res["flops_unrolled"]}
  left = lambda: cell["timeout_s"] - (time.time() - _PROC_T0) - 3.0  # noqa: E731
  try:
    res = harness.time_fn(fn, x1, x2, params, repeats=cell["repeats"], time_budget_s=left(),
                          min_time_s=cell["min_time_s"])
  except BudgetError as e:  # No blocking fits the budget: out of memory, by plan.
    raise MemoryError(f"BudgetError: {e}") from e
  res.update(harness.jax_info(), library_version=harness.package_version("ntk_zoo"))
  d = kernel.last_decision
  if d is not None:
    res.update(chosen=d.chosen, plan=str(d.plan), plan_flops=d.plan.flops)
  res["loops"] = _flops.loops(fn, x1, x2, params)
  if not res["loops"]:
    res["xla_flops"] = res["flops"]
  elif left() > 3 * res["compile_s"] + 5:  # Else `run` counts them in a cell of their own.
    res.update(_flops.unrolled_flops(fn, x1, x2, params))
    res["xla_flops"] = res["flops_unrolled"]
  return res


def _cell_main(cell: dict) -> None:
  meta = {k: cell[k] for k in ("n", "width", "outputs", "depth", "implementation")}
  harness.cell_main(lambda: _measure(cell), meta)


# ---------------------------------------------------------------------------------------------
# The sweep.

def _key(r: dict) -> tuple:
  return (r["n"], r["outputs"], r["width"], r["depth"], r["implementation"])


def _subprocess(job: dict, config, mode: str) -> dict:
  """One cell in its own process: "time" (the measurement) or "flops" (the unrolled count)."""
  cell = dict(job, mode=mode, repeats=config.repeats, min_time_s=config.min_time_s,
              timeout_s=config.timeout_s, memory_budget_mb=config.memory_budget_mb)
  cmd = harness.cell_command(__file__, cell)
  return harness.run_cell(cmd, config.timeout_s, config.mem_limit_mb or None, cwd=_cli.REPO)


def _jobs(config) -> list[dict]:
  return [{"n": n, "outputs": o, "width": w, "depth": config.depth, "implementation": impl}
          for n in config.n for o in config.outputs for w in sorted(config.widths)
          for impl in config.implementations]


def _commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_cli.REPO, text=True,
                         capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "ntk_zoo"], cwd=_cli.REPO,
                           text=True, capture_output=True, check=True).stdout.strip()
    return out + ("+dirty ntk_zoo" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def run(config: ml_collections.ConfigDict, out_dir: pathlib.Path) -> dict:
  """Runs the missing cells of `config`'s grid, then writes the plot and the report.

  Returns:
    A summary: paths written, cell counts by status, and the paper's predictions checked.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records = _cli.Records(out_dir / "cells.jsonl", _key)
  load_start, commit = _cli.uptime(), _commit()
  failed_at: dict[tuple, int] = {}  # (n, o, impl) -> smallest width that failed.
  ran = 0
  jobs = _jobs(config)
  bar = tqdm(jobs, desc=NAME, unit="cell", file=sys.stderr)
  for job in bar:
    group = (job["n"], job["outputs"], job["implementation"])
    if config.skip_wider and failed_at.get(group, math.inf) < job["width"]:
      continue
    rec = records.get(_key(job))
    bar.set_postfix_str(f"N={job['n']} O={job['outputs']} W={job['width']} "
                        f"{SHORT[job['implementation']]}")
    if rec is None or rec.get("status") not in ("ok", *FAILED):  # Errors are retried.
      rec = {**_subprocess(job, config, "time"), **job, "commit": commit}
      records.add(rec)
      ran += 1
    if _ok(rec) and rec.get("xla_flops") is None and "flops_cell" not in rec:
      # Loops, and no time left in the timed cell to count them unrolled.
      counted = _subprocess(job, config, "flops")
      rec = {**rec, "flops_cell": counted["status"], "xla_flops": counted.get("xla_flops"),
             **{k: counted[k] for k in ("loops", "flops_unrolled", "loops_left") if k in counted}}
      records.add(rec)
      ran += 1
    if rec.get("status") in FAILED:
      failed_at[group] = min(failed_at.get(group, math.inf), job["width"])
  bar.close()
  cells = [records.get(_key(j)) for j in jobs]
  cells = [c for c in cells if c is not None]
  checks = predictions(cells)
  figure = plot(cells, config, out_dir / f"{NAME}.png")
  runs = _cli.log_run(out_dir, _cli.command(NAME, config, get_config), load_start, ran)
  report = markdown(cells, config, checks, runs)
  _cli.write_report(out_dir, NAME, figure, report, BEGIN, END, config.publish)
  statuses: dict[str, int] = {}
  for c in cells:
    statuses[c.get("status", "?")] = statuses.get(c.get("status", "?"), 0) + 1
  return {"out_dir": str(out_dir), "records": str(records.path), "figure": str(figure),
          "report": str(out_dir / "report.md"), "ran": ran, "cells": statuses,
          "predictions": checks}


# ---------------------------------------------------------------------------------------------
# Analysis.

def _ok(r: dict | None) -> bool:
  return bool(r) and r.get("status") == "ok"


def per_entry(r: dict, field: str) -> float | None:
  """`r[field]` (seconds or FLOPs) divided by the number of NTK entries, (N·O)²."""
  v = r.get(field) if _ok(r) else None
  return None if v is None else v / (r["n"] * r["outputs"]) ** 2


def _grid(cells: list[dict]) -> dict[tuple, dict[str, dict]]:
  """(n, outputs, width) -> implementation -> record."""
  g: dict[tuple, dict[str, dict]] = {}
  for c in cells:
    g.setdefault((c["n"], c["outputs"], c["width"]), {})[c["implementation"]] = c
  return g


def _tally(pairs: list[bool]) -> dict:
  return {"holds": sum(pairs), "of": len(pairs)}


def predictions(cells: list[dict]) -> dict:
  """The paper's Fig. 1 predictions, checked cell by cell (FLOPs and wall time).

  * `vp_best_at_n1`: at N = 1, NTK-vector products cost least among JC/VP/SD (within 5 %).
  * `sd_beats_vp_iff_o_lt_w`: SD < VP exactly when O < W (every N; O = W cells left out).
  * `widest`: per (N, O), the widest W each method finished, and SD's over JC's.
  """
  jc, vp, sd = METHODS[:3]
  g = _grid(cells)
  out: dict = {}
  for field, name in (("xla_flops", "flops"), ("median_s", "time")):
    best, iff = [], []
    for (n, o, w), by in g.items():
      vals = {m: by.get(m, {}).get(field) if _ok(by.get(m)) else None for m in (jc, vp, sd)}
      if None in vals.values():
        continue
      if n == 1:
        best.append(vals[vp] <= 1.05 * min(vals[jc], vals[sd]))
      if o != w:
        iff.append((vals[sd] < vals[vp]) == (o < w))
    out[f"vp_best_at_n1_{name}"] = _tally(best)
    out[f"sd_beats_vp_iff_o_lt_w_{name}"] = _tally(iff)
  widest: dict[str, dict] = {}
  for n, o in sorted({(n, o) for n, o, _ in g}):
    reach = {SHORT[m]: max([w for (n2, o2, w), by in g.items() if (n2, o2) == (n, o)
                            and _ok(by.get(m))], default=None) for m in METHODS}
    tried = max(w for n2, o2, w in g if (n2, o2) == (n, o))
    ratio = reach["SD"] / reach["JC"] if reach["SD"] and reach["JC"] else None
    widest[f"N={n},O={o}"] = {**reach, "grid_max": tried, "sd_over_jc": ratio}
  out["widest"] = widest
  return out


def plot(cells: list[dict], config, path: pathlib.Path) -> pathlib.Path:
  """Log-log FLOPs and time per NTK entry vs width; rows N, columns O (FLOPs | time)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ns, os_ = sorted(config.n), sorted(config.outputs)
  style = {"jacobian_contraction": ("C3", "o", "-"), "ntk_vector_products": ("C0", "s", "-"),
           "structured_derivatives": ("C2", "^", "-"), "auto": ("k", "x", ":")}
  fig, axes = plt.subplots(len(ns), 2 * len(os_), figsize=(3.1 * 2 * len(os_), 2.8 * len(ns)),
                           squeeze=False, sharex=True)
  for i, n in enumerate(ns):
    for j, o in enumerate(os_):
      for k, (field, label) in enumerate((("xla_flops", "FLOPs / NTK entry"),
                                          ("median_s", "seconds / NTK entry"))):
        ax = axes[i, j + k * len(os_)]
        for m in config.implementations:
          pts = sorted((c["width"], per_entry(c, field)) for c in cells
                       if (c["n"], c["outputs"], c["implementation"]) == (n, o, m))
          pts = [(w, v) for w, v in pts if v]
          if pts:
            color, marker, ls = style.get(m, ("C7", ".", "-"))
            ax.plot(*zip(*pts), color=color, marker=marker, ls=ls, ms=4, label=SHORT[m])
        ws = sorted(config.widths)
        if ws[0] <= o <= ws[-1]:
          ax.axvline(o, color="0.85", lw=3, zorder=0)  # O = W: where SD and VP should cross.
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"N={n}, O={o}", fontsize=9)
        if j == 0:
          ax.set_ylabel(label, fontsize=9)
        if i == len(ns) - 1:
          ax.set_xlabel("width W", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
  if axes[0, 0].get_legend_handles_labels()[0]:
    axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"{config.depth}-layer ReLU FCN, full NTK Θ (N, N, O, O): XLA FLOPs (left) and "
               "wall time (right) per entry; missing points: out of memory / time", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _fmt(r: dict | None, field: str, scale: float = 1.0) -> str:
  if r is None:
    return "·"
  if r.get("status") != "ok":
    if r.get("status") == "oom" and "BudgetError" in str(r.get("error")):
      return "OOM¹"
    return {"oom": "OOM", "timeout": "timeout"}.get(r.get("status"), "error")
  v = r.get(field)
  if v is None and field == "xla_flops" and r.get("flops_cell"):
    return f"{r['flops_cell']}²"
  return "—" if v is None else reporting.fmt_num(v * scale)


def markdown(cells: list[dict], config, checks: dict, runs: list[dict]) -> str:
  """The report: commands, machine and load, the table, the predictions tallied."""
  g = _grid(cells)
  m = harness.machine_info()
  jax_v = sorted({c.get("jax_version") for c in cells if c.get("jax_version")})
  loads = sorted(x for c in cells for x in (c.get("loadavg_1m") or []))
  commits = sorted({c.get("commit", "?") for c in cells})
  impls = list(config.implementations)
  lines = [
      "Commands (from the repository root; the last one reused the cells of the others from "
      "`cells.jsonl`), with the machine load (`uptime`) at their start and end:", "",
      _cli.runs_markdown(runs), "",
      f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), shared with other jobs; JAX "
      f"{', '.join(jax_v) or '?'}; ntk_zoo at {', '.join(commits)}"
      + (f"; 1-min load at the cells' start/end: median {loads[len(loads) // 2]:.1f}, range "
         f"{loads[0]:.1f}–{loads[-1]:.1f}" if loads else "") + ".", "",
      f"Limits per cell: {config.timeout_s:.0f} s (imports + compile + runs), resident memory "
      + (f"{config.mem_limit_mb:.0f} MB" if config.mem_limit_mb else "uncapped")
      + (f", `memory_budget={config.memory_budget_mb:.0f} MB`" if config.memory_budget_mb
         else "") + ". OOM: killed at the memory cap; OOM¹: the engine's plan did not fit the "
      "budget (`BudgetError` before anything ran); timeout: past the time limit; · = not run "
      "(the method failed at a smaller W).", "",
      "Time: warm-run median, ms. GFLOP: XLA `cost_analysis()` of the compiled kernel, scans "
      "unrolled (counted in a second subprocess where the timed cell had no time left; ² that "
      "count failed). auto: the method it chose in brackets.", "",
  ]
  head = ["N", "O", "W"] + [f"{SHORT[i]} ms" for i in impls] + [
      f"{SHORT[i]} GFLOP" for i in impls if i != "auto"] + ["fastest", "fewest FLOPs"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for (n, o, w) in sorted(g):
    by = g[(n, o, w)]
    row = [str(n), str(o), str(w)]
    for i in impls:
      s = _fmt(by.get(i), "median_s", 1e3)
      if i == "auto" and _ok(by.get(i)) and by[i].get("chosen"):
        s += f" ({SHORT.get(by[i]['chosen'], by[i]['chosen'])})"
      row.append(s)
    row += [_fmt(by.get(i), "xla_flops", 1e-9) for i in impls if i != "auto"]
    for field in ("median_s", "xla_flops"):
      ok = {i: by[i][field] for i in impls if i != "auto" and _ok(by.get(i))
            and by[i].get(field)}
      row.append(SHORT[min(ok, key=ok.get)] if ok else "—")
    lines.append("| " + " | ".join(row) + " |")
  lines += ["", "Predictions of the paper (Fig. 1), counted over the cells where JC, VP and SD "
            "all finished:", ""]
  for key, text in (("vp_best_at_n1", "NTK-vector products cost least at N = 1 (within 5 %)"),
                    ("sd_beats_vp_iff_o_lt_w", "SD beats VP iff O < W (every N, O ≠ W)")):
    f, t = checks[f"{key}_flops"], checks[f"{key}_time"]
    lines.append(f"- {text}: FLOPs {f['holds']}/{f['of']} cells, time {t['holds']}/{t['of']}.")
  lines.append("- Widest W finished (SD / JC / VP / auto; grid max), SD's reach over JC's:")
  for panel, r in checks["widest"].items():
    ratio = r["sd_over_jc"]
    bound = "≥ " if ratio and r["SD"] == r["grid_max"] else ""
    lines.append(f"  {panel}: {r['SD']} / {r['JC']} / {r['VP']} / {r['auto']} "
                 f"(grid max {r['grid_max']}); SD/JC {bound}{reporting.fmt_num(ratio, 2)}×.")
  norms = []
  for by in g.values():
    ns = [r["kernel_norm"] for r in by.values() if _ok(r) and r.get("kernel_norm")]
    if len(ns) > 1:
      norms.append((max(ns) - min(ns)) / max(ns))
  lines += ["", f"Agreement: ‖Θ‖_F of all methods agrees to a relative "
            f"{max(norms, default=0):.1e} at worst.", ""]
  return "\n".join(lines)


if __name__ == "__main__":
  if not harness.run_cell_arg(_cell_main, sys.argv[1:]):
    _cli.main(__doc__, get_config, run, name=NAME)
