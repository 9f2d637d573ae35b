"""Dataset-scale NTK: throughput of a tiled run vs one call, and the largest N each method reaches.

Model: `pure_resnet` ResNet-18 at 32×32 (default; `--arch`, `--image-size`), O = 10 logits, the
full NTK (`trace_axes=()`, `vmap_axes=0`), float32, symmetric: Θ(x, x) with x2 = None, x =
`pure_resnet.inputs(N, image_size)[0]` (a prefix of one seeded stream, so the examples of a
smaller N are the first of a larger one). The kernel has N² · O² entries; throughput is entries
per second. Cells, one subprocess each (`harness.run_cell`: timeout and resident-memory cap):

* `single` (ours): one jitted call `ntk_fn(f, trace_axes=(), vmap_axes=0,
  implementation=IMPL)(x, None, params)`, IMPL in jc, vp, sd, auto; N doubling (`--n-single`).
  First call = compile + first run; warm = median of warm runs (`harness.time_fn`). The largest N
  that completes is "largest N in one call".
* `peer_single` (neural-tangents 0.6.5, `peer_dataset.py` in its venv): the same with
  `nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=1|2|3)`.
* `dataset` (ours): `ntk_zoo.dataset_ntk(kernel, x, None, params, store=TMP, tile=None)` into a
  temporary on-disk store, tile planned from the memory budget; time = the whole call (tile
  planning, compiles, tile loop, writes), as a user sees it. Also the tile, the number of tiles,
  per-tile times (first diagonal / first off-diagonal tile, which compile, and the median of the
  rest), and an estimated warm time (compile removed: every tile at its kind's median); for N
  ≤ `--check-max-n` the stored kernel vs one jitted call (rel. Frobenius error).
* `peer_batch`: `nt.batch(kernel_fn, batch_size=B, store_on_device=False)(x, None, params)` for
  the same N (`peer_dataset.py`; its behaviour with x2=None and N % B is described there);
  first call (compile included) and a warm call.
* `pseudo` (ours, `--n-pseudo`): Θ (full) and Θ_p = `pseudo_ntk_fn(f, vmap_axes=0)`, which is
  (1/O) Σ_{o,o'} Θ_{oo'} (checked in the cell); rel. Frobenius error ‖Θ − Θ_p ⊗ I_O‖ / ‖Θ‖, the
  same for the best A ⊗ I_O (A = tr_O Θ / O), the fraction of ‖Θ‖² on the O×O blocks'
  diagonals, the condition numbers of Θ (NO × NO) and Θ_p (N × N), and both times.

After an `oom`/`timeout` at some N, larger N of the same (kind, library, method, batch size) are
recorded as `skipped` (`--no-skip-larger` runs them anyway). Cells already in `--out` are not
rerun (resume is the default): `ok` records always count, `oom`/`timeout` ones if they ran
under at least the current `--timeout` and `--mem-limit-mb`; `--fresh` starts a new file.

    python benchmarks/dataset.py --peer-venv ~/.cache/ntk_zoo/nt-venv          # the full grid
    python benchmarks/dataset.py --n-single 4,8 --n-dataset 16 --implementations sd \
        --peer-venv ~/.cache/ntk_zoo/nt-venv --peer-batch 8 --n-pseudo 8       # smoke run
    python benchmarks/dataset.py --report-only --markdown                      # tables only

`--markdown` prints the section to stdout (`--results-md PATH` also writes it between
`<!-- dataset:begin/end -->` markers of PATH). Raw records: `benchmarks/out/dataset.jsonl`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import math
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

OURS, PEER = methods.OURS, methods.PEER
BEGIN, END = "<!-- dataset:begin -->", "<!-- dataset:end -->"

ORDER = methods.IMPLEMENTATIONS
JC, VP, SD, AUTO = ORDER
SHORT = methods.SHORT
impl_list = methods.impl_list
FAILED = ("oom", "timeout")
_MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------------
# Cells (run in a subprocess of ntk_zoo's venv).

def _budget_error():
  try:
    from ntk_zoo.ntk.memory import BudgetError  # pylint: disable=g-import-not-at-top
    return BudgetError
  except ImportError:
    return ()


def _decision_info(decision) -> dict:
  if decision is None:
    return {}
  plan = decision.plan
  return {"chosen": decision.chosen, "plan_blocks": [list(b) for b in plan.blocks],
          "plan_peak_mb": plan.peak_bytes / _MB, "plan_budget_mb": plan.budget / _MB,
          "plan_flops": plan.flops}


def _kernel(f, impl: str, cell: dict):
  from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
  return ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl,
                memory_budget=cell.get("memory_budget"))


def _measure_single(cell, f, params, x, budget_s) -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  kernel = _kernel(f, cell["implementation"], cell)
  # min_repeats=0: a warm run that would overrun the timeout is skipped (the first run, after
  # the compile, then stands in for it), so a cell that fits once is still recorded.
  res = harness.time_fn(lambda a, p: kernel(a, None, p), jnp.asarray(x), params,
                        repeats=cell["repeats"], time_budget_s=budget_s, min_repeats=0)
  res["first_call_s"] = res["compile_s"] + res["first_run_s"]
  if kernel.decisions:
    res.update(_decision_info(next(iter(kernel.decisions.values()))))
  return res


def _tile_stats(marks, loop_start: float) -> dict:
  """Per-tile durations from the `on_tile` timestamps; the first tile of each kind compiles."""
  out = {"tile_times": [], "first_diag_s": None, "first_pair_s": None,
         "median_diag_s": None, "median_pair_s": None}
  prev = loop_start
  diag, pair = [], []
  for i, j, t in marks:
    dt = t - prev
    prev = t
    out["tile_times"].append([i, j, round(dt, 4)])
    (diag if i == j else pair).append(dt)
  est = 0.0
  for name, ts in (("diag", diag), ("pair", pair)):
    if not ts:
      continue
    out[f"first_{name}_s"] = ts[0]
    out[f"n_{name}"] = len(ts)
    if len(ts) > 1:
      med = statistics.median(ts[1:])
      out[f"median_{name}_s"] = med
      est += med * len(ts)
  # Warm estimate: every tile at its kind's median; needs a median for each kind present.
  if (not diag or out["median_diag_s"] is not None) and (not pair or
                                                        out["median_pair_s"] is not None):
    out["est_warm_s"] = est
  return out


def _measure_dataset(cell, f, params, x, budget_s) -> dict:
  del budget_s
  import jax  # pylint: disable=g-import-not-at-top
  from ntk_zoo.dataset import dataset_ntk, load_kernel  # pylint: disable=g-import-not-at-top
  kernel = _kernel(f, cell["implementation"], cell)
  store_root = cell.get("store_dir") or None
  if store_root:
    os.makedirs(store_root, exist_ok=True)
  store = tempfile.mkdtemp(prefix=f"ntk_dataset_n{cell['n']}_", dir=store_root)
  marks = []
  res: dict = {"store": store}
  try:
    base = harness.current_rss_bytes()
    t0 = time.perf_counter()
    dk = dataset_ntk(kernel, x, None, params, store=store, tile=cell.get("tile_request"),
                     progress=False, on_tile=lambda i, j: marks.append((i, j, time.perf_counter())))
    t1 = time.perf_counter()
    peak = harness.max_rss_bytes()
    res.update({"first_call_s": t1 - t0, "loop_s": dk.seconds, "setup_s": (t1 - t0) - dk.seconds,
                "tile": list(dk.tile), "n_tiles": dk.computed + dk.reused,
                "tiles_computed": dk.computed, "complete": dk.complete,
                "kernel_shape": list(dk.shape), "baseline_mb": base / _MB,
                "peak_mb": max(0, peak - base) / _MB, "memory_kind": "cpu_peak_rss_delta"})
    res.update(_tile_stats(marks, t1 - dk.seconds))
    res["median_s"] = res.get("est_warm_s")  # The warm figure of this cell is an estimate.
    res["warm_is_estimate"] = True
    res.update(_decision_info(dk.decision))
    try:
      res["store_mb"] = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fns in os.walk(store)
                            for fn in fns) / _MB
    except OSError:
      pass
    stored = load_kernel(store)
    res["kernel_norm"] = peer_dataset.kernel_norm(stored)
    if cell["n"] <= cell.get("check_max_n", 0):
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      ref = np.asarray(jax.jit(lambda a, p: kernel(a, None, p))(jnp.asarray(x), params),
                       np.float64)
      got = np.asarray(stored, np.float64)
      res["check_rel_err"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
  finally:
    if not cell.get("keep_store"):
      shutil.rmtree(store, ignore_errors=True)
  return res


def _measure_pseudo(cell, f, params, x, budget_s) -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk.pseudo import pseudo_ntk_fn  # pylint: disable=g-import-not-at-top
  impl = cell["implementation"]
  full = _kernel(f, impl, cell)
  pseudo = pseudo_ntk_fn(f, vmap_axes=0, implementation=impl,
                         memory_budget=cell.get("memory_budget"))
  xj = jnp.asarray(x)
  t_start = time.time()
  rf = harness.time_fn(lambda a, p: full(a, None, p), xj, params, repeats=cell["repeats"],
                       time_budget_s=budget_s / 2, keep_output=True, min_repeats=0)
  rp = harness.time_fn(lambda a, p: pseudo(a, None, p), xj, params, repeats=cell["repeats"],
                       time_budget_s=budget_s - (time.time() - t_start), keep_output=True,
                       min_repeats=0)
  if full.decisions:
    rf.update(_decision_info(next(iter(full.decisions.values()))))
  theta = np.asarray(rf.pop("_out"), np.float64)  # (N, N, O, O)
  theta_p = np.asarray(rp.pop("_out"), np.float64)  # (N, N)
  n, o = theta.shape[0], theta.shape[2]
  res = {"first_call_s": rf["compile_s"] + rf["first_run_s"], "median_s": rf["median_s"],
         "first_run_s": rf["first_run_s"],
         "pseudo_first_call_s": rp["compile_s"] + rp["first_run_s"],
         "pseudo_median_s": rp["median_s"] if rp["median_s"] is not None else rp["first_run_s"],
         "pseudo_runs": rp["runs"], "runs": rf["runs"],
         "kernel_norm": rf["kernel_norm"], "pseudo_kernel_norm": rp["kernel_norm"],
         "run_peak_mb": rf.get("run_peak_mb"), "pseudo_run_peak_mb": rp.get("run_peak_mb"),
         "chosen": rf.get("chosen")}
  norm = np.linalg.norm(theta)
  # Normalization: Θ_p = (1/O) Σ_{o,o'} Θ_{oo'} (pseudo.py), so Θ = λ I_O per block gives Θ_p = λ.
  blocksum = theta.sum(axis=(2, 3)) / o
  res["pseudo_vs_blocksum_rel_err"] = float(np.linalg.norm(theta_p - blocksum)
                                            / np.linalg.norm(blocksum))
  eye = np.eye(o)
  res["rel_err_pseudo_kron"] = float(np.linalg.norm(theta - theta_p[:, :, None, None] * eye)
                                     / norm)
  a = np.einsum("nmoo->nm", theta) / o  # The best A in ‖Θ − A ⊗ I‖: the blocks' mean diagonal.
  res["rel_err_best_kron"] = float(np.linalg.norm(theta - a[:, :, None, None] * eye) / norm)
  diag = np.einsum("nmoo->nmo", theta)
  res["block_diag_mass"] = float(np.sum(diag ** 2) / norm ** 2)
  mat = theta.transpose(0, 2, 1, 3).reshape(n * o, n * o)
  ev = np.linalg.eigvalsh((mat + mat.T) / 2)
  evp = np.linalg.eigvalsh((theta_p + theta_p.T) / 2)
  eva = np.linalg.eigvalsh((a + a.T) / 2)
  for name, e in (("theta", ev), ("pseudo", evp), ("best_kron", eva)):
    res[f"eig_min_{name}"] = float(e[0])
    res[f"eig_max_{name}"] = float(e[-1])
    res[f"cond_{name}"] = float(e[-1] / e[0]) if e[0] > 0 else math.inf
  return res


def run_one_cell(cell: dict) -> None:
  meta = {k: cell.get(k) for k in peer_dataset.META_KEYS}

  def measure():
    info = harness.cell_info(harness.package_version("ntk_zoo"))
    f, params = pure_resnet.model(cell["arch"], cell["outputs"])
    info["num_params"] = pure_resnet.num_params(params)
    x = pure_resnet.inputs(cell["n"], cell["image_size"])[0]
    budget_s = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    fn = {"single": _measure_single, "dataset": _measure_dataset,
          "pseudo": _measure_pseudo}[cell["kind"]]
    try:
      info.update(fn(cell, f, params, x, budget_s))
    except _budget_error() as e:  # No plan fits the memory budget: an OOM, found up front.
      raise MemoryError(f"BudgetError: {e}") from e
    return peer_dataset.add_rates(info, cell["n"], cell["outputs"])

  harness.cell_main(measure, meta)


# ---------------------------------------------------------------------------------------------
# The sweep.

cell_key = harness.record_key("benchmark", "kind", "library", "implementation", "arch", "outputs",
                              "image_size", "n", "batch_size", "tile_request")
# Cells that differ only in N: after an OOM/timeout, larger N will not fit either.
group_key = harness.record_key("kind", "library", "implementation", "arch", "outputs",
                               "image_size", "batch_size", "tile_request")


def build_jobs(args, peer_python: str | None) -> list[tuple[dict, list[str]]]:
  """(meta, cmd) in run order: per N, ours then the peer's back to back for each method."""
  base = {"benchmark": "dataset", "arch": args.arch, "outputs": args.outputs,
          "image_size": args.image_size, "dtype": "float32", "batch_size": None,
          "tile_request": None}
  common_cell = {"repeats": args.repeats, "memory_budget": args.memory_budget}
  jobs = []

  def ours(meta):
    cell = dict(meta, **common_cell, timeout_s=cell_timeout(meta, args),
                check_max_n=args.check_max_n, store_dir=args.store_dir,
                keep_store=args.keep_stores)
    return harness.cell_command(__file__, cell)

  def peer(meta):
    return harness.cell_command(peer_dataset.__file__, dict(
        meta, **common_cell, timeout_s=cell_timeout(meta, args)), peer_python)

  for n in args.n_single:
    for impl in ORDER:
      if impl in args.implementations:
        m = dict(base, kind="single", library=OURS, implementation=impl, n=n)
        jobs.append((m, ours(m)))
      if peer_python and impl in args.peer_implementations:
        m = dict(base, kind="peer_single", library=PEER, implementation=impl, n=n)
        jobs.append((m, peer(m)))
  for n in args.n_dataset:
    for impl in args.dataset_implementations:
      m = dict(base, kind="dataset", library=OURS, implementation=impl, n=n,
               tile_request=args.tile)
      jobs.append((m, ours(m)))
    if peer_python:
      for impl in ORDER:
        if impl in args.peer_batch_implementations:
          m = dict(base, kind="peer_batch", library=PEER, implementation=impl, n=n,
                   batch_size=min(args.peer_batch, n))
          jobs.append((m, peer(m)))
  for n in args.n_pseudo:
    m = dict(base, kind="pseudo", library=OURS, implementation=args.pseudo_implementation,
             n=n)
    jobs.append((m, ours(m)))
  return jobs


def cell_timeout(meta: dict, args) -> float:
  """Seconds a cell may run: --dataset-timeout for tiled cells, else --timeout."""
  if meta["kind"] in ("dataset", "peer_batch") and args.dataset_timeout:
    return args.dataset_timeout
  return args.timeout


def _counts(rec: dict, args) -> bool:
  """Whether an old record stands for its cell (not rerun) under the current limits."""
  st = rec.get("status")
  if st in ("ok", "unavailable"):
    return True
  if st in FAILED:
    return (rec.get("timeout_s", 0) >= cell_timeout(rec, args)
            and rec.get("mem_limit_mb", 0) >= args.mem_limit_mb)
  return False


def _line(i, total, rec) -> str:
  m = rec
  name = f"{m['kind']} {'ours' if m['library'] == OURS else 'peer'} {SHORT[m['implementation']]}"
  bits = [f"[{i}/{total}] {name} N={m['n']}"]
  if m.get("batch_size"):
    bits.append(f" B={m['batch_size']}")
  bits.append(f": {rec['status']}")
  if rec["status"] == "ok":
    bits.append(f" first {rec.get('first_call_s', float('nan')):.2f} s")
    if rec.get("warm_s") is not None:
      bits.append(f" warm {rec['warm_s']:.3g} s")
    if rec.get("rate_warm"):
      bits.append(f" ({rec['rate_warm']:.3g} entries/s warm)")
    if rec.get("tile"):
      bits.append(f" tile {rec['tile'][0]} × {rec.get('n_tiles')} tiles")
    if rec.get("chosen"):
      bits.append(f" [{SHORT.get(rec['chosen'], rec['chosen'])}]")
    if rec.get("rel_err_pseudo_kron") is not None:
      bits.append(f" pseudo err {rec['rel_err_pseudo_kron']:.3g}")
  bits.append(f" (cell {rec.get('cell_wall_s', 0):.1f} s, RSS {rec.get('child_maxrss_mb', 0):.0f}"
              f" MB, load {rec.get('loadavg_1m')})")
  if rec["status"] != "ok":
    bits.append(f" — {str(rec.get('error', ''))[:300]}")
  return "".join(bits)


def run_sweep(jobs, args) -> None:
  out_path = args.out
  if args.fresh and os.path.exists(out_path):
    os.remove(out_path)
  old = {cell_key(r): r for r in harness.read_jsonl(out_path)}
  failed_at: dict[tuple, int] = {}  # group -> smallest N that failed (OOM/timeout).
  for r in old.values():
    if r.get("status") in FAILED and _counts(r, args):
      g = group_key(r)
      failed_at[g] = min(failed_at.get(g, r["n"]), r["n"])
  t_sweep = time.time()
  for i, (meta, cmd) in enumerate(jobs):
    prev = old.get(cell_key(meta))
    if prev is not None and _counts(prev, args):
      continue
    g = group_key(meta)
    skip = None
    if not args.no_skip_larger and g in failed_at and meta["n"] > failed_at[g]:
      skip = f"N={failed_at[g]} already failed (OOM/timeout)"
    rec = harness.run_job(meta, cmd, cell_timeout(meta, args), args.mem_limit_mb, skip=skip,
                          cwd=harness.REPO)
    rec["timeout_s"], rec["mem_limit_mb"] = cell_timeout(meta, args), args.mem_limit_mb
    harness.append_jsonl(out_path, rec)
    if rec["status"] in FAILED:
      failed_at[g] = min(failed_at.get(g, meta["n"]), meta["n"])
    print(_line(i + 1, len(jobs), rec) + f" [sweep {time.time() - t_sweep:.0f} s]",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Markdown.

def _st(rec) -> str | None:
  """None for a finished cell, else what its table cells read; OOM‡: no plan fitted."""
  if rec is None:
    return "—"
  st = rec.get("status")
  if st == "ok":
    return None
  if st == "oom" and "BudgetError" in str(rec.get("error", "")):
    return "OOM‡"
  return reporting.status_text(rec)


def _status(rec) -> str:
  return _st(rec) or "ok"


def _num(rec, field, scale=1.0, digits=3):
  if _st(rec):
    return "—"
  v = rec.get(field)
  return "—" if v is None else reporting.fmt_num(v * scale, digits)


def _sci(v) -> str:
  return "—" if v is None else f"{v:.3g}"


def _rate(rec, field) -> str:
  if _st(rec):
    return "—"
  return _sci(rec.get(field))


def _rss(rec) -> str:
  v = (rec or {}).get("child_maxrss_mb")
  return "—" if v is None else reporting.fmt_num(v)


def _method(rec) -> str:
  name = SHORT.get(rec["implementation"], rec["implementation"])
  if rec["implementation"] == AUTO and rec.get("chosen"):
    name += f" → {SHORT.get(rec['chosen'], rec['chosen'])}"
  return name


def _lib(rec) -> str:
  return "ours" if rec["library"] == OURS else "neural-tangents"


def _largest(recs: list[dict]) -> str:
  """'N' (largest ok) with what happened at the next N tried."""
  ok = [r["n"] for r in recs if r.get("status") == "ok"]
  if not ok:
    first = min(recs, key=lambda r: r["n"])
    return f"none (N={first['n']}: {_st(first)})"
  best = max(ok)
  above = [r for r in recs if r["n"] > best and r.get("status") not in ("skipped",)]
  if not above:
    return f"**{best}** (largest tried)"
  nxt = min(above, key=lambda r: r["n"])
  return f"**{best}** (N={nxt['n']}: {_st(nxt) or 'ok'})"


def _reach(recs: list[dict], fields: tuple[str, ...], ours: str, peer: str) -> str:
  """`_largest` of each group of `recs` that agree in `fields` (library, implementation, ...)."""
  parts = []
  for k in reporting.iter_unique(tuple(r[f] for f in fields) for r in recs):
    g = [r for r in recs if tuple(r[f] for f in fields) == k]
    parts.append(f"{ours if k[0] == OURS else peer} {SHORT[k[1]]}: {_largest(g)}")
  return "; ".join(parts)


def _single_section(single: list[dict]) -> list[str]:
  head = ["N", "library", "method", "status", "first call s", "warm s", "entries/s first",
          "entries/s warm", "peak RSS MB", "‖Θ‖_F"]
  rows = [[r["n"], _lib(r), _method(r), _status(r), _num(r, "first_call_s"),
           _num(r, "warm_s") + ("†" if r.get("status") == "ok" and
                                r.get("warm_is_first_run") else ""),
           _rate(r, "rate_first"), _rate(r, "rate_warm"), _rss(r),
           _num(r, "kernel_norm", digits=6)] for r in single]
  return (["### One call (the whole N × N kernel in memory)", ""] + reporting.table(head, rows)
          + ["", "**Largest N in one call** (under the limits above): "
             + _reach(single, ("library", "implementation"), "ours", "neural-tangents") + ".", ""])


def _tiled_row(r: dict) -> list:
  if r["kind"] == "dataset":
    tile = r.get("tile", [None])[0] if r.get("tile") else (r.get("tile_request") or "plan")
    per = ("—" if _st(r) else
           f"plan {reporting.fmt_num(r.get('setup_s'))}; "
           + " / ".join(reporting.fmt_num(r.get(k)) for k in ("first_diag_s", "first_pair_s"))
           + " / " + reporting.fmt_num(r.get("median_pair_s") or r.get("median_diag_s")))
    check = _sci(r.get("check_rel_err")) if r.get("check_rel_err") is not None else "—"
  else:
    tile = r.get("effective_batch_size") or r.get("batch_size")
    per = ("—" if _st(r) or not r.get("n_tiles") else
           f"{reporting.fmt_num(r['first_call_s'] / r['n_tiles'])} (first call) / "
           + (reporting.fmt_num(r["median_s"] / r["n_tiles"]) if r.get("median_s") else "—")
           + " (warm)")
    check = "—"
  tiles = f"{r.get('n_tiles')}" if r.get("n_tiles") else "—"
  return [r["n"], _lib(r), _method(r), tile, tiles, _status(r), _num(r, "first_call_s"),
          _num(r, "warm_s"), _rate(r, "rate_first"), _rate(r, "rate_warm"), per, _rss(r), check]


def _tiled_section(tiled: list[dict], single: list[dict]) -> list[str]:
  lines = ["### Dataset scale (tiled): `dataset_ntk` vs `nt.batch`", "",
           "Ours: `dataset_ntk(ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=…), x, None, "
           "params, store=TMP, tile=None)`: tile planned from the memory budget, each tile one "
           "jitted call written to an on-disk zarr store; symmetric, so only tiles j ≥ i are "
           "computed (diagonal tiles as Θ(a, a)). Time: the whole call (planning, two compiles, "
           "tiles, writes; \"plan\": the part before the first tile). \"warm s\" for ours is "
           "estimated from the tile times (every tile at its kind's median after the first, i.e. "
           "without the compiles); per tile: first diagonal / first off-diagonal (each compiles) "
           "/ median of the rest. Peer: `nt.batch(kernel_fn, batch_size=B, "
           "store_on_device=False)(x, None, params)`: all (N/B)² batch pairs (it ignores the "
           "symmetry), stacked in memory; first call (compile included) and a warm second call. "
           "check: ‖stored − one call‖_F / ‖one call‖_F (small N only).", ""]
  head = ["N", "library", "method", "tile / B", "tiles", "status", "time s (first call)",
          "warm s", "entries/s", "entries/s warm", "s per tile", "peak RSS MB", "check"]
  lines += reporting.table(head, [_tiled_row(r) for r in tiled])
  lines += ["", "**Largest N tiled** (of those tried): "
            + _reach(tiled, ("library", "implementation", "kind"), "ours dataset_ntk", "nt.batch")
            + "."]
  # Tiled vs one call at the same N (ours: best single method).
  cmp_ = []
  for r in tiled:
    if r.get("status") != "ok" or r["kind"] != "dataset":
      continue
    s = [x for x in single if x["n"] == r["n"] and x["library"] == OURS
         and x.get("status") == "ok" and x.get("rate_warm")]
    if s:
      best = max(s, key=lambda x: x["rate_warm"])
      cmp_.append(f"N={r['n']}: tiled {_sci(r.get('rate_first'))} entries/s (whole call) vs "
                  f"one call {SHORT[best['implementation']]} {_sci(best['rate_first'])} first / "
                  f"{_sci(best['rate_warm'])} warm")
  if cmp_:
    lines += ["", "Tiled vs one call, ours, same N: " + "; ".join(cmp_) + "."]
  return lines + [""]


def _pseudo_row(r: dict) -> list:
  bad = _st(r)
  if bad:
    return [r["n"], _method(r), bad] + ["—"] * 9
  return [
      r["n"], _method(r), "ok",
      f"{reporting.fmt_num(r['first_call_s'])} / {reporting.fmt_num(r.get('median_s'))}",
      f"{reporting.fmt_num(r['pseudo_first_call_s'])} / "
      f"{reporting.fmt_num(r.get('pseudo_median_s'))}",
      _sci(r["rel_err_pseudo_kron"]), _sci(r["rel_err_best_kron"]),
      reporting.fmt_num(r["block_diag_mass"]), _sci(r["cond_theta"]), _sci(r["cond_pseudo"]),
      _sci(r["cond_best_kron"]), _sci(r["pseudo_vs_blocksum_rel_err"])]


def _pseudo_section(ps: list[dict]) -> list[str]:
  lines = ["### Pseudo-NTK vs the full NTK (ours)", "",
           "Θ: `ntk_fn(f, trace_axes=(), vmap_axes=0)` (N, N, O, O); Θ_p: `pseudo_ntk_fn(f, "
           "vmap_axes=0)` (N, N), the NTK of Σ_o f_o / √O, equal to (1/O) Σ_{o,o'} Θ_{oo'} "
           "(checked: \"Θ_p check\"), so that Θ = λ·I_O per block gives Θ_p = λ. Errors are "
           "relative Frobenius norms over all N²O² entries: ‖Θ − Θ_p ⊗ I_O‖ / ‖Θ‖, and the same "
           "for the best such approximation A ⊗ I_O (A = mean of each block's diagonal). Diagonal "
           "mass: Σ Θ_{oo}² / ‖Θ‖² (on the O × O blocks' diagonals). cond: λ_max / λ_min of Θ as "
           "an NO × NO matrix, of Θ_p (N × N), of A. Times: first call (compile + run) / warm.",
           ""]
  head = ["N", "method", "status", "Θ s", "Θ_p s", "‖Θ − Θ_p⊗I‖/‖Θ‖", "‖Θ − A⊗I‖/‖Θ‖",
          "diag mass", "cond Θ", "cond Θ_p", "cond A", "Θ_p check"]
  return lines + reporting.table(head, [_pseudo_row(r) for r in ps]) + [""]


def _agreement(ok: list[dict]) -> list[str]:
  """‖Θ‖_F of every kernel computed at one N (all methods, both libraries, one call / tiled)."""
  spreads, bad = [], []
  for n in sorted({r["n"] for r in ok}):
    v = [r["kernel_norm"] for r in ok if r["n"] == n and r.get("kernel_norm")]
    if len(v) > 1:
      spread = (max(v) - min(v)) / max(v)
      spreads.append((spread, n, len(v)))
      if spread > 1e-3:
        bad.append(f"N={n}: {spread:.1e}")
  if not spreads:
    return []
  worst = max(spreads)
  return [f"‖Θ‖_F of all kernels of one N (every method, both libraries, one call and tiled) "
          f"agrees to {worst[0]:.1e} (worst: N={worst[1]}, {worst[2]} kernels)"
          + (f"; **disagreement > 1e-3**: {', '.join(bad)}" if bad else "") + ".", ""]


def _intro(recs: list[dict], ok: list[dict], meta: dict) -> list[str]:
  """Commands, machine, model, what was measured, the machine load, notes."""
  arch = meta.get("arch", "rn18")
  o = meta.get("outputs", 10)
  size = meta.get("image_size", 32)
  lines = reporting.header(f"## Dataset-scale NTK ({arch} {size}², O = {o}): tiled vs one call, "
                           "ours vs neural-tangents' `nt.batch`", meta,
                           reporting.jax_versions(r for r in ok if r["library"] == OURS),
                           reporting.peer_versions(r for r in ok if r["library"] == PEER))
  budget = meta.get("memory_budget")
  nparams = next((r.get("num_params") for r in ok if r.get("num_params")), None)
  lines.append(
      f"Model: `benchmarks/pure_resnet.py` {arch} ({nparams:,} parameters) " if nparams else
      f"Model: `benchmarks/pure_resnet.py` {arch} ")
  lines[-1] += (
      f"at {size}×{size}, O = {o}, float32; the full NTK (`trace_axes=()`, `vmap_axes=0`) of N "
      f"inputs with themselves (x2 = None), N² · O² entries; entries/s = N² · O² / time. Each "
      "cell ran in a fresh subprocess, one at a time, ours and the peer's back to back per N; "
      f"a cell was killed past {meta.get('timeout', 0):.0f} s (tiled cells: "
      f"{meta.get('dataset_timeout') or meta.get('timeout', 0):.0f} s) of wall time (timeout) "
      f"or {meta.get('mem_limit_mb', 0):.0f} MB resident (OOM), and larger N of that method "
      "were then skipped; OOM‡: no plan fits ntk_zoo's memory budget (`BudgetError`, "
      "raised before anything runs). First call: "
      "compile + first run (`jit(...).lower().compile()`, then one execution), what a user waits "
      "for; warm: median of later runs (at least "
      f"{meta.get('repeats', 1)} where they fit the cell's time limit, more while under 1 s in "
      "all; † none fitted: the first run after the compile instead). Peak RSS: the cell "
      "process's peak resident memory (kernel-reported, the whole process incl. imports and "
      "compilation; what the cap applies to). Our memory budget: "
      + (f"`memory_budget={budget}`" if budget else "ntk_zoo's default (60 % of the RAM "
         "available when the kernel is first called)") + ".")
  lines.append("")
  load = reporting.load_range(recs)
  if load:
    lines += [f"Machine load (1-min load average at each cell's start and end): {load}.", ""]
  return lines + reporting.notes(meta)


def markdown(records: list[dict], meta: dict) -> str:
  recs = sorted(reporting.latest(records, cell_key),
                key=lambda r: (r["n"], r["library"] != OURS,
                               ORDER.index(r["implementation"]) if r["implementation"] in ORDER
                               else 9))
  ok = [r for r in recs if r.get("status") == "ok"]
  single = [r for r in recs if r["kind"] in ("single", "peer_single")]
  tiled = [r for r in recs if r["kind"] in ("dataset", "peer_batch")]
  ps = [r for r in recs if r["kind"] == "pseudo"]
  lines = _intro(recs, ok, meta)
  lines += _single_section(single) if single else []
  lines += _tiled_section(tiled, single) if tiled else []
  lines += _pseudo_section(ps) if ps else []
  lines += _agreement(ok)
  lines.append(f"Raw records: `{meta.get('out_rel', 'benchmarks/out/dataset.jsonl')}` (per-tile "
               "times, plans, XLA FLOPs, …; not committed).")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

DEFAULT_N_SINGLE = "16,32,64,128,256,512"
DEFAULT_N_DATASET = "256,512"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n-single", type=methods.int_list, default=methods.int_list(DEFAULT_N_SINGLE),
                 help=f"N for one-call cells (default {DEFAULT_N_SINGLE}); '' for none")
  p.add_argument("--n-dataset", type=methods.int_list, default=methods.int_list(DEFAULT_N_DATASET),
                 help=f"N for tiled cells (default {DEFAULT_N_DATASET}); '' for none")
  p.add_argument("--n-pseudo", type=methods.int_list, default=[64],
                 help="N for the pseudo-NTK cells (default 64); '' for none")
  p.add_argument("--implementations", type=impl_list, default=list(ORDER),
                 help="ours, one call: jc,vp,sd,auto (default all)")
  p.add_argument("--peer-implementations", type=impl_list, default=[JC, VP, SD],
                 help="the peer's, one call: jc,vp,sd (default), auto (its implementation=0)")
  p.add_argument("--dataset-implementations", type=impl_list, default=[AUTO],
                 help="ours, dataset_ntk: default auto")
  p.add_argument("--peer-batch-implementations", type=impl_list, default=[JC, VP, SD],
                 help="the peer's, nt.batch: default jc,vp,sd")
  p.add_argument("--pseudo-implementation", type=lambda s: impl_list(s)[0], default=AUTO,
                 help="ours, for Θ and Θ_p in the pseudo cells (default auto)")
  p.add_argument("--peer-venv", default=None,
                 help="neural-tangents venv (setup_neural_tangents.sh); runs the peer's cells")
  p.add_argument("--peer-batch", type=int, default=64,
                 help="nt.batch batch_size B (default 64; N must be divisible by it, B > N "
                      "becomes N)")
  p.add_argument("--tile", type=int, default=None,
                 help="our dataset_ntk tile (default: planned, tile=None)")
  p.add_argument("--arch", default="rn18", choices=sorted(pure_resnet.ARCHS))
  p.add_argument("--outputs", type=int, default=10, help="logits O (default 10)")
  p.add_argument("--image-size", type=int, default=32, help="input side (default 32)")
  p.add_argument("--memory-budget", default=None,
                 help="ours: ntk_fn(memory_budget=...), e.g. 12GB (default: ntk_zoo's)")
  p.add_argument("--repeats", type=int, default=1,
                 help="warm runs per cell, at least (more while under 1 s; fewer if the "
                      "timeout would pass)")
  p.add_argument("--timeout", type=float, default=600.0,
                 help="seconds per cell subprocess (imports + compile + runs)")
  p.add_argument("--dataset-timeout", type=float, default=None,
                 help="seconds per tiled cell (dataset, peer_batch); default: --timeout")
  p.add_argument("--mem-limit-mb", type=float, default=20000.0,
                 help="kill a cell whose resident memory exceeds this (recorded as OOM)")
  p.add_argument("--check-max-n", type=int, default=64,
                 help="dataset cells with N up to this also check the store against one call")
  p.add_argument("--store-dir", default=None, help="where the temporary stores go (default $TMPDIR)")
  p.add_argument("--keep-stores", action="store_true", help="do not delete the stores")
  p.add_argument("--no-skip-larger", action="store_true",
                 help="run larger N even after a smaller one ran out of memory/time")
  p.add_argument("--out", default=os.path.join(harness.BENCHMARKS, "out", "dataset.jsonl"))
  p.add_argument("--fresh", action="store_true",
                 help="delete --out first (default: resume, skipping cells already recorded)")
  p.add_argument("--markdown", action="store_true", help="print the markdown section")
  p.add_argument("--results-md", default=None,
                 help="also write the section between its markers in this file")
  p.add_argument("--report-only", action="store_true", help="run nothing (with --markdown)")
  harness.add_note_arg(p)
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  meta_path = args.out + ".meta.json"
  old = {} if args.fresh else harness.read_meta(meta_path)
  if not args.report_only:
    jobs = build_jobs(args, harness.peer_python(p, args.peer_venv))
    meta = harness.sweep_meta(
        __file__, argv, args, git=True, dataset_timeout=args.dataset_timeout or args.timeout,
        memory_budget=args.memory_budget, arch=args.arch, outputs=args.outputs,
        image_size=args.image_size)
    if old and os.path.exists(args.out):
      harness.chain_commands(meta, old)
      meta["notes"] = old.get("notes")
    harness.write_meta(meta_path, meta)
    old = meta
    t0 = time.time()
    print(f"{len(jobs)} cells, one at a time, timeout {args.timeout:.0f} s, memory cap "
          f"{args.mem_limit_mb:.0f} MB each", file=sys.stderr)
    run_sweep(jobs, args)
    print(f"done in {time.time() - t0:.0f} s; records in {args.out}", file=sys.stderr)
  harness.save_notes(meta_path, old, args.note)
  if args.markdown or args.results_md:
    if not old:
      p.error(f"{meta_path} not found: run the sweep first")
    body = markdown(harness.read_jsonl(args.out), old)
    if args.markdown:
      print(body)
    if args.results_md:
      reporting.replace_between_markers(args.results_md, BEGIN, END, body)
      print(f"wrote the dataset section of {args.results_md}", file=sys.stderr)


if __name__ == "__main__":
  harness.script_main(main, run_one_cell)
