"""Paper Fig. 2 / Fig. 4: time and peak memory of the full O×O NTK of ImageNet models, every method.

    python experiments/imagenet_models.py                    # CPU-sized (O = 10, 100), ~6-9 h
    python experiments/imagenet_models.py --publish          # + figures/ PNG and RESULTS.md
    python experiments/imagenet_models.py --full             # + O = 1000 (accelerator)
    python experiments/imagenet_models.py --set models=rn18,rn50 --set outputs=10  # ~1 h
    python experiments/imagenet_models.py --set peer_venv=     # no neural-tangents cells
    python experiments/imagenet_models.py --full --set plot_only=true \\
        --set records=benchmarks/out/imagenet.jsonl         # plot benchmarks/imagenet.py's records

The cells are `benchmarks/imagenet.py`'s (its `build_jobs`, one subprocess per cell through
`benchmarks.harness.run_cell`): one pair of 224² images (N = 1), kernel Θ(x1, x2) of shape
(1, 1, O, O) from `ntk_fn(f, implementation=…, trace_axes=(), vmap_axes=0)` with the default
memory budget, jitted, float32, random init. Models: ResNet-18/50/152 (`benchmarks/pure_resnet`, a
pure JAX function that neural-tangents 0.6.5 runs unchanged in its own venv) and the zoo's
wide_resnet50_2, ViT-B/16, Mixer-B/16. Methods: `implementations` (SD, VP, JC, auto; "naive" is
the benchmark's per-logit-VJP baseline); with a neural-tangents venv (`peer_venv`), its
`nt.empirical_ntk_fn` on the ResNets for the methods in both `implementations` and
`peer_implementations`. Each cell also checks an 8×8 sub-block of Θ against per-logit `jax.grad`
Grams (inside the cell's time limit). A cell past `timeout_s` or `mem_limit_mb` (resident memory
of the process tree) is a missing point, and larger O of the same model and method are not tried
(`skip_larger_outputs`).

Plotted (one row per O): time — `time_metric="run"`: the warm-run median where the cell recorded
one (`repeats` ≥ 1), else its first run after compiling; `"first_call"`: compile + first run —
and peak memory (`memory_metric`, default the cell process's peak RSS in MB; the device peak where
a record has no host figure). x: the models ordered by parameter count (at the largest O shown).

Records: `out_dir/cells.jsonl` (finished cells, skipped on a rerun; cells found in the `records`
files are copied there and not rerun), `out_dir/runs.jsonl`, `out_dir/imagenet_models.png`,
`out_dir/report.md`. `plot_only` runs nothing and draws the config's grid from the records
(`out_dir/cells.jsonl` and `records`); O = 1000 needs `--full` or `--set outputs=10,100,1000`.

Time (2 shared cores, load 3-5; `benchmarks/RESULTS.md`): a cell costs imports, init, compile
(10-90 s) and the 8x8 check (16 `jax.grad` compiles: ~2 min for ResNet-18, more for the larger
models) before its run (ResNet-50 SD: ~5 s at O = 10, ~30 s at O = 100; VP ~3.5x SD), so the
66 default cells (48 ours, 18 neural-tangents) take ~6-9 h; ResNet-18/50 at O = 1000 alone take
~4 and ~9 min per SD run at ~9 and ~15 GB.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import types

import ml_collections

if __package__ in (None, ""):  # Run as a script: make `experiments` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import fcn_scaling  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks import harness, methods, reporting  # noqa: E402
from benchmarks import imagenet  # noqa: E402  pylint: disable=g-import-not-at-top

NAME = "imagenet_models"
BEGIN, END = f"<!-- {NAME}:begin -->", f"<!-- {NAME}:end -->"
OURS, PEER = methods.OURS, methods.PEER  # The `library` of a record.
FAILED = ("oom", "timeout")
DONE = ("ok", "unavailable", *FAILED)  # Not rerun; "error" cells are.
DEFAULT_PEER_VENV = os.path.expanduser("~/.cache/ntk_zoo/nt-venv")
TIME_METRICS = ("run", "first_call")
MEMORY_METRICS = ("peak_rss_mb", "run_peak_mb", "peak_mb", "child_maxrss_mb")
# Parameter counts without the head, and the head's input width (the head adds (F + 1)·O): the
# torchvision / timm counts at O = 1000 minus 1001·F. For the x-axis order and labels where no
# record of a model finished (a finished record's own `num_params` is used where there is one).
BACKBONE = {"rn18": (11_176_512, 512), "rn50": (23_508_032, 2048), "rn152": (58_143_808, 2048),
            "wrn50_2": (66_834_240, 2048), "vit_b16": (85_798_656, 768),
            "mixer_b16": (59_111_472, 768)}
STYLE = {imagenet.SD: ("C2", "^"), imagenet.VP: ("C0", "s"), imagenet.JC: ("C3", "o"),
         imagenet.AUTO: ("k", "x"), imagenet.NAIVE: ("C7", "d")}


def get_config(full: bool = False) -> ml_collections.ConfigDict:
  """The CPU-sized grid (O = 10, 100), or the paper's (`full`: O = 1000 too, accelerator limits).

  Fields: `models` (of `benchmarks/imagenet.py`: rn18, rn50, rn152, wrn50_2, vit_b16,
  mixer_b16), `outputs` (O), `implementations` (ours; full names or sd/vp/jc/auto/naive);
  `peer_venv` ("auto": ~/.cache/ntk_zoo/nt-venv if it exists; "": no peer cells; else a venv
  path) and `peer_implementations` (neural-tangents on the ResNets; only the methods also in
  `implementations`); `repeats` (warm runs per cell; 0: the first run only); `timeout_s` and
  `mem_limit_mb` (per cell subprocess; 0: no memory cap); `skip_larger_outputs` (after an
  oom/timeout, do not try larger O for that model and method); `plot_only` (run nothing, plot
  the records) and `records` (more JSONL files of `benchmarks/imagenet.py` records to reuse);
  `time_metric` ("run" | "first_call") and `memory_metric` (a record field in MB: peak_rss_mb,
  run_peak_mb, peak_mb or child_maxrss_mb).
  """
  c = ml_collections.ConfigDict()
  c.full = full
  c.publish = False
  c.models = ["rn18", "rn50", "mixer_b16", "rn152", "wrn50_2", "vit_b16"]
  c.outputs = [10, 100, 1000] if full else [10, 100]
  c.implementations = [imagenet.SD, imagenet.VP, imagenet.JC, imagenet.AUTO]
  c.peer_venv = "auto"
  c.peer_implementations = [imagenet.SD, imagenet.VP, imagenet.JC]
  # The first run after compiling only: at these sizes one run is seconds to minutes, so the
  # first-call overhead is small, and a warm run would double each cell.
  c.repeats = 0
  c.timeout_s = 900.0  # Imports, init, compile, the run(s) and the 8x8 block check.
  c.mem_limit_mb = 16000.0  # A 16 GB accelerator's worth, on a 23 GB machine.
  c.skip_larger_outputs = True
  c.plot_only = False
  c.records = [""]  # Empty strings are ignored.
  c.time_metric = "run"
  c.memory_metric = "peak_rss_mb"
  if full:
    c.repeats = 3
    c.timeout_s = 3600.0
    c.mem_limit_mb = 0.0  # On an accelerator: device memory is the limit (RESOURCE_EXHAUSTED).
  return c


# ---------------------------------------------------------------------------------------------
# The grid.

def _impl(name: str) -> str:
  return imagenet.ALIASES.get(name, name)


def _check(config) -> None:
  bad = [m for m in config.models if m not in imagenet.MODELS]
  if bad:
    raise ValueError(f"unknown model(s) {bad}; choose from {', '.join(imagenet.MODELS)}")
  for field in ("implementations", "peer_implementations"):
    bad = [i for i in config[field] if i and _impl(i) not in imagenet.SHORT]
    if bad:
      raise ValueError(f"{field}: unknown {bad}; choose from {', '.join(imagenet.ALIASES)}")
  if config.time_metric not in TIME_METRICS:
    raise ValueError(f"time_metric {config.time_metric!r}: one of {TIME_METRICS}")
  if config.memory_metric not in MEMORY_METRICS:
    raise ValueError(f"memory_metric {config.memory_metric!r}: one of {MEMORY_METRICS}")


def peer_python(config) -> str | None:
  """The neural-tangents venv's python, or None (no peer cells)."""
  venv = config.peer_venv
  if venv == "auto":
    venv = DEFAULT_PEER_VENV if os.path.exists(os.path.join(DEFAULT_PEER_VENV, "bin",
                                                            "python")) else ""
  if not venv:
    return None
  python = os.path.join(os.path.expanduser(venv), "bin", "python")
  if not os.path.exists(python):
    raise FileNotFoundError(f"peer_venv {config.peer_venv!r}: no {python}")
  return python


def params_at(arch: str, outputs: int, cells: list[dict] = ()) -> int:
  """The model's parameter count with an O-way head: a finished record's, else `BACKBONE`'s."""
  for c in cells:
    if (c.get("arch"), c.get("outputs")) == (arch, outputs) and c.get("num_params"):
      return int(c["num_params"])
  base, features = BACKBONE[arch]
  return base + (features + 1) * outputs


def model_order(models, outputs: int, cells: list[dict] = ()) -> list[str]:
  return sorted(models, key=lambda m: params_at(m, outputs, cells))


def jobs(config, python: str | None) -> list[tuple[dict, list[str]]]:
  """`(meta, command)` per cell, from `benchmarks.imagenet.build_jobs`: smallest O first."""
  out = []
  for o in sorted(config.outputs):
    args = types.SimpleNamespace(
        models=model_order(config.models, max(config.outputs)), outputs=[o],
        implementations=[_impl(i) for i in config.implementations if i],
        peer_implementations=[_impl(i) for i in config.peer_implementations if i],
        repeats=config.repeats, timeout=config.timeout_s)
    out += imagenet.build_jobs(args, python)
  return out


def _group(key: tuple) -> tuple:
  library, impl, arch, _ = key
  return library, impl, arch


def read_sources(config) -> dict[tuple, dict]:
  """The latest record per cell in `config.records` (relative paths: cwd, else the repo)."""
  by_key: dict[tuple, dict] = {}
  for p in config.records:
    if not p:
      continue
    path = pathlib.Path(os.path.expanduser(p))
    if not path.is_absolute() and not path.exists():
      path = _cli.REPO / path
    if not path.exists():
      raise FileNotFoundError(f"records: no file {p}")
    for r in harness.read_jsonl(str(path)):
      if r.get("benchmark", "imagenet") == "imagenet" and r.get("arch"):
        by_key[imagenet.cell_key(r)] = r
  return by_key


def _best(*recs: dict | None) -> dict | None:
  """The first "ok" record of `recs`, else the first finished one, else the first there is."""
  for statuses in (("ok",), DONE):
    for r in recs:
      if r is not None and r.get("status") in statuses:
        return r
  return next((r for r in recs if r is not None), None)


def run(config: ml_collections.ConfigDict, out_dir: pathlib.Path) -> dict:
  """Runs the missing cells of `config`'s grid (none with `plot_only`), then plots and reports.

  Returns:
    A summary: paths written, cells run, cell counts by status, the points plotted per panel
    and the cells that are missing points.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  _check(config)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records = _cli.Records(out_dir / "cells.jsonl", imagenet.cell_key)
  sources = read_sources(config)
  load_start = _cli.uptime()
  python = None if config.plot_only else peer_python(config)
  if config.plot_only:  # The peer cells that records hold are drawn whether or not a venv is.
    python = "(plot only)"
  grid = jobs(config, python)
  ran = 0
  if not config.plot_only:
    commit = fcn_scaling._commit()  # pylint: disable=protected-access
    cmd = _cli.command(NAME, config, get_config)
    failed_at: dict[tuple, int] = {}  # (library, implementation, arch) -> smallest O failed.
    bar = tqdm(grid, desc=NAME, unit="cell", file=sys.stderr)
    for meta, job in bar:
      key = imagenet.cell_key(meta)
      if config.skip_larger_outputs and failed_at.get(_group(key), math.inf) < meta["outputs"]:
        continue
      bar.set_postfix_str(f"{meta['arch']} O={meta['outputs']} {meta['library']} "
                          f"{imagenet.SHORT.get(meta['implementation'])}")
      mine, theirs = records.get(key), sources.get(key)
      rec = _best(mine, theirs)
      if rec is None or rec.get("status") not in DONE:
        rec = harness.run_cell(job, config.timeout_s, config.mem_limit_mb or None,
                               cwd=str(_cli.REPO))
        rec.update({k: v for k, v in meta.items() if k not in rec})
        rec.update(command=cmd, commit=commit, timeout_s=config.timeout_s,
                   mem_limit_mb=config.mem_limit_mb)
        records.add(rec)
        ran += 1
      elif rec is not mine:  # Reused from `records`: keep it with the others.
        records.add(rec)
      if rec.get("status") in FAILED:
        failed_at[_group(key)] = min(failed_at.get(_group(key), math.inf), meta["outputs"])
    bar.close()
  cells = []
  for meta, _ in grid:
    key = imagenet.cell_key(meta)
    rec = _best(records.get(key), sources.get(key))
    if rec is not None:
      cells.append(rec)
    elif not config.plot_only:
      cells.append({**meta, "status": "not run"})
  figure, plotted = plot(cells, config, out_dir / f"{NAME}.png")
  runs = _cli.log_run(out_dir, _cli.command(NAME, config, get_config), load_start, ran)
  report = markdown(cells, config, runs)
  _cli.write_report(out_dir, NAME, figure, report, BEGIN, END, config.publish)
  statuses: dict[str, int] = {}
  for c in cells:
    statuses[c.get("status", "?")] = statuses.get(c.get("status", "?"), 0) + 1
  missing = [f"{c['arch']} O={c['outputs']} {c['library']} "
             f"{imagenet.SHORT.get(c['implementation'], c['implementation'])}: {c.get('status')}"
             for c in cells if c.get("status") != "ok" or time_of(c, config) is None]
  return {"out_dir": str(out_dir), "records": str(records.path), "figure": str(figure),
          "report": str(out_dir / "report.md"), "ran": ran, "cells": statuses,
          "plotted": plotted, "missing": missing}


# ---------------------------------------------------------------------------------------------
# Analysis.

def _ok(r: dict | None) -> bool:
  return bool(r) and r.get("status") == "ok"


def time_of(r: dict, config) -> float | None:
  """Seconds: warm median, else the first run (`"run"`); or compile + first run."""
  if not _ok(r):
    return None
  if config.time_metric == "first_call":
    c, f = r.get("compile_s"), r.get("first_run_s")
    return None if c is None or f is None else c + f
  return r.get("median_s") or r.get("first_run_s")


def memory_of(r: dict, config) -> float | None:
  """MB: `config.memory_metric`, else the record's `peak_mb` (the device peak on an accelerator)."""
  if not _ok(r):
    return None
  v = r.get(config.memory_metric)
  return v if v is not None else r.get("peak_mb")


def _series(cells: list[dict]) -> list[tuple[str, str]]:
  """(library, implementation) pairs present, ours first, in the benchmark's method order."""
  order = [imagenet.SD, imagenet.VP, imagenet.JC, imagenet.AUTO, imagenet.NAIVE]
  pairs = {(c["library"], c["implementation"]) for c in cells}
  return sorted(pairs, key=lambda p: (p[0] != OURS, p[0],
                                      order.index(p[1]) if p[1] in order else 99, p[1]))


def _label(library: str, impl: str) -> str:
  short = imagenet.SHORT.get(impl, impl)
  return short if library == OURS else f"{short} (neural-tangents)"


def _status_mark(r: dict | None) -> str:
  if r is None or r.get("status") == "not run":
    return "·"
  return {"oom": "OOM", "timeout": "timeout", "unavailable": "n/a"}.get(r.get("status"),
                                                                          "error")


def plot(cells: list[dict], config, path: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """Rows: O; columns: time | peak memory; x: models by parameter count; log y.

  Returns:
    The figure's path and {"O=o": {series label: number of points drawn}}.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  outputs = sorted({c["outputs"] for c in cells}) or sorted(config.outputs)
  models = model_order({c["arch"] for c in cells} or set(config.models), max(outputs), cells)
  series = _series(cells)
  by = {(c["library"], c["implementation"], c["arch"], c["outputs"]): c for c in cells}
  fig, axes = plt.subplots(len(outputs), 2, figsize=(10.5, 2.9 * len(outputs) + 0.6),
                           squeeze=False, sharex=True)
  plotted: dict[str, dict[str, int]] = {}
  caps = sorted({c.get("mem_limit_mb") for c in cells if c.get("mem_limit_mb")})
  mem_axis = "device peak memory (MB)" if cells and all(
      c.get("memory_kind") == "device_peak_bytes" for c in cells if _ok(c)) and any(
      _ok(c) for c in cells) else f"peak memory (MB, {config.memory_metric})"
  time_axis = ("compile + first run (s)" if config.time_metric == "first_call"
               else "time (s; warm median, else first run)")
  for i, o in enumerate(outputs):
    plotted[f"O={o}"] = {}
    for j, (value, ylabel) in enumerate(((time_of, time_axis), (memory_of, mem_axis))):
      ax = axes[i, j]
      for library, impl in series:
        ys = [value(by.get((library, impl, m, o)), config) if by.get((library, impl, m, o))
              else None for m in models]
        n = sum(y is not None for y in ys)
        if j == 0:
          plotted[f"O={o}"][_label(library, impl)] = n
        if not n:
          continue
        color, marker = STYLE.get(impl, ("C7", "."))
        ours = library == OURS
        ax.plot(range(len(models)), [math.nan if y is None else y for y in ys], color=color,
                marker=marker, ls="-" if ours else "--", ms=5 if ours else 6,
                mfc=color if ours else "none", label=_label(library, impl))
      if j == 1 and len(caps) == 1 and config.memory_metric in ("peak_rss_mb", "child_maxrss_mb"):
        ax.axhline(caps[0], color="0.6", lw=1, ls=":", label="memory cap")
      ax.set_yscale("log")
      ax.set_title(f"O = {o}", fontsize=9)
      ax.set_ylabel(ylabel, fontsize=8)
      ax.grid(True, which="major", alpha=0.3)
      ax.tick_params(labelsize=7)
  ticks = [f"{m}\n{params_at(m, max(outputs), cells) / 1e6:.1f}M" for m in models]
  for ax in axes[-1]:
    ax.set_xticks(range(len(models)), ticks)
    ax.set_xlabel(f"model (parameters at O = {max(outputs)})", fontsize=8)
  legend: dict = {}  # Every series drawn in any panel, once.
  for ax in axes.ravel():
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  if legend:
    axes[0, 0].legend(list(legend.values()), list(legend), fontsize=6.5, loc="best")
  fig.suptitle("Full NTK Θ(x1, x2) of shape (1, 1, O, O), one pair of 224² ImageNet-sized inputs;"
               " solid: ntk_zoo, dashed: neural-tangents.\nMissing points: out of memory, past "
               "the time limit, an error, or not run (see the report's table).", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path, plotted


def _gb(mb: float | None) -> str:
  return "—" if mb is None else reporting.fmt_num(mb / 1024)


def markdown(cells: list[dict], config, runs: list[dict]) -> str:
  """The report: commands and load, limits, then one table row per (model, O)."""
  m = harness.machine_info()
  outputs = sorted({c["outputs"] for c in cells})
  models = model_order({c["arch"] for c in cells}, max(outputs, default=10), cells)
  series = _series(cells)
  by = {(c["library"], c["implementation"], c["arch"], c["outputs"]): c for c in cells}
  ok = [c for c in cells if _ok(c)]
  jax_v = sorted({f"{c.get('library')} {c.get('library_version')} on JAX {c.get('jax_version')}"
                  for c in ok if c.get("jax_version")})
  devices = sorted({str(c.get("device_kind")) for c in ok if c.get("device_kind")})
  loads = sorted(x for c in cells for x in (c.get("loadavg_1m") or []))
  commits = sorted({c["commit"] for c in cells if c.get("commit")})
  done = [c for c in cells if c.get("status") != "not run"]
  timeouts = sorted({c["timeout_s"] for c in done if c.get("timeout_s")}) or [config.timeout_s]
  caps = sorted({c.get("mem_limit_mb") or 0 for c in done if "mem_limit_mb" in c}) or [
      config.mem_limit_mb]
  ours = _cli.command(NAME, config, get_config).split(" --set")[0]
  others = list(dict.fromkeys(c["command"] for c in done if c.get("command")
                              and not c["command"].startswith(ours)))
  unknown = any("timeout_s" not in c for c in done)
  wall = sum(c.get("cell_wall_s") or 0 for c in cells)
  lines = [
      "Commands (from the repository root; the last one reused the cells of the others from "
      "`cells.jsonl`), with the machine load (`uptime`) at their start and end:", "",
      _cli.runs_markdown(runs), "",
  ]
  if others:
    lines += ["Cells reused from other commands' records (`records`): "
              + "; ".join(f"`{c}`" for c in others) + ".", ""]
  lines += [
      f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), shared with other jobs; devices "
      f"{', '.join(devices) or '?'}; {'; '.join(jax_v) or 'no finished cell'}"
      + (f"; ntk_zoo at {', '.join(commits)}" if commits else "")
      + (f"; 1-min load at the cells' start/end: median {loads[len(loads) // 2]:.1f}, range "
         f"{loads[0]:.1f}–{loads[-1]:.1f}" if loads else "")
      + f". Cells' wall time in all: {wall / 3600:.2f} h.", "",
      "Limits per cell: " + "/".join(f"{t:.0f}" for t in timeouts) + " s (imports, init, "
      "compile, runs and the 8×8 block check), resident memory "
      + "/".join(f"{c:.0f} MB" if c else "uncapped" for c in caps)
      + (" (the cells of other commands: the limits of those)" if unknown
         else "") + ". OOM: killed at the memory cap or out of memory; timeout: past the time limit; "
      "error / n/a: the cell failed / the method is not available; · = not run (a smaller O "
      "of that model and method failed, or not in the records). Each is a missing point.", "",
      ("Time: compile + first run, s." if config.time_metric == "first_call" else
       "Time: warm-run median, s; ¹ the first run after compiling (the only run).")
      + f" Memory: `{config.memory_metric}` (GB; the device peak where the record has no host "
      "figure). auto: the method it chose in brackets. Block err: the 8×8 sub-block of Θ "
      "against per-logit `jax.grad` Grams, worst over the row's cells.", "",
  ]
  head = ["model", "params", "O"] + [f"{_label(*s)} s / GB" for s in series] + ["fastest",
                                                                                 "block err"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for o in outputs:
    for arch in models:
      row_cells = [by.get((*s, arch, o)) for s in series]
      if not any(row_cells):
        continue
      row = [arch, f"{params_at(arch, o, cells) / 1e6:.1f}M", str(o)]
      for r in row_cells:
        t = time_of(r, config) if r else None
        if t is None:
          row.append(_status_mark(r) if not _ok(r) else "—")
          continue
        mark = "¹" if config.time_metric == "run" and not r.get("median_s") else ""
        s = f"{reporting.fmt_num(t)}{mark} / {_gb(memory_of(r, config))}"
        if r["implementation"] == imagenet.AUTO and r.get("chosen"):
          s += f" ({imagenet.SHORT.get(r['chosen'], r['chosen'])})"
        row.append(s)
      times = {_label(*s): time_of(r, config) for s, r in zip(series, row_cells) if r}
      times = {k: v for k, v in times.items() if v is not None}
      row.append(min(times, key=times.get) if times else "—")
      errs = [r["block_err"] for r in row_cells if _ok(r) and r.get("block_err") is not None]
      row.append(f"{max(errs):.1e}" if errs else "—")
      lines.append("| " + " | ".join(row) + " |")
  norms = []
  for o in outputs:
    for arch in models:
      ns = [by[(*s, arch, o)]["kernel_norm"] for s in series
            if _ok(by.get((*s, arch, o))) and by[(*s, arch, o)].get("kernel_norm")]
      if len(ns) > 1:
        norms.append((max(ns) - min(ns)) / max(ns))
  lines += ["", f"Agreement: ‖Θ‖_F of all methods (both libraries) agrees to a relative "
            f"{max(norms):.1e} at worst per (model, O)." if norms else
            "Agreement: no (model, O) has two finished kernels to compare.", ""]
  return "\n".join(lines)


if __name__ == "__main__":
  _cli.main(__doc__, get_config, run, name=NAME)
