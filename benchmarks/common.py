"""Timing and memory harness shared by ntk_zoo's benchmarks and the peer's benchmark script.

This module uses only the standard library, numpy and jax, and runs on JAX 0.4.23 (the
neural-tangents venv) as well as current JAX, so `peer_fcn.py` can import it inside the peer's
venv. It never imports ntk_zoo or neural_tangents.

Pieces:

* `time_fn(fn, *args, repeats=3)`: jit + lower + compile timed separately from the runs, then one
  first call and `repeats` warm calls (each `block_until_ready`), and the peak memory of the process
  over the whole measurement (see `time_fn` for what "peak memory" means on CPU and GPU).
* `run_cell(cmd, timeout_s, mem_limit_mb)`: runs one benchmark cell in its own subprocess, so cells
  never pollute each other's memory figures, and records a cell that hangs, runs out of time, or
  grows past a memory cap as "timeout"/"oom" instead of blocking the sweep.
* The Fig. 1 model (`fcn_params`, `fcn_apply`, `fcn_inputs`), built from a seeded numpy generator
  so both libraries see bit-identical parameters and inputs.
* Grid/CLI helpers and JSONL/markdown utilities used by `fcn.py` and `peer_fcn.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any
from collections.abc import Callable, Iterable, Sequence

import numpy as np

RESULT_TAG = "@@NTK_BENCH_RESULT@@ "
_MB = 1024.0 * 1024.0

# Implementation names (ntk_zoo's) and neural-tangents' integer ids for the same method.
IMPLEMENTATIONS = ("jacobian_contraction", "ntk_vector_products", "structured_derivatives", "auto")
PEER_IDS = {"auto": 0, "jacobian_contraction": 1, "ntk_vector_products": 2,
            "structured_derivatives": 3}
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "VP",
         "structured_derivatives": "SD", "auto": "auto"}
_ALIASES = {"jc": "jacobian_contraction", "jacobian": "jacobian_contraction",
            "vp": "ntk_vector_products", "ntk_vp": "ntk_vector_products",
            "sd": "structured_derivatives", "structured": "structured_derivatives",
            "0": "auto", "1": "jacobian_contraction", "2": "ntk_vector_products",
            "3": "structured_derivatives"}


# ---------------------------------------------------------------------------------------------
# Memory probes.

def current_rss_bytes() -> int:
  """Resident set size of this process now (Linux /proc; falls back to the peak RSS)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return max_rss_bytes()


def max_rss_bytes() -> int:
  """Peak resident set size of this process so far (`getrusage(RUSAGE_SELF).ru_maxrss`)."""
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(r) if sys.platform == "darwin" else int(r) * 1024  # Linux reports KiB.


def reset_peak_rss() -> bool:
  """Resets this process's peak-RSS mark to its current RSS (Linux >= 4.0: clear_refs 5).

  `ru_maxrss` follows the reset, so a later `max_rss_bytes()` is the peak since the reset.
  Returns False where that is not possible.
  """
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _device_memory_stats() -> dict | None:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return None
  try:
    stats = dev.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return stats if stats and "peak_bytes_in_use" in stats else None


def _cost_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):  # JAX 0.4.x returns one dict per computation.
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def _xla_memory(compiled) -> dict:
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if ma is None:
    return {}
  out = {}
  for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
              "generated_code_size_in_bytes"):
    v = getattr(ma, key, None)
    if v is not None:
      out["xla_" + key.replace("_size_in_bytes", "_mb")] = round(v / _MB, 3)
  return out


def _block(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


# ---------------------------------------------------------------------------------------------
# The timer.

def time_fn(fn: Callable, *args, repeats: int = 3, time_budget_s: float | None = None,
            min_repeats: int = 1, min_time_s: float = 1.0, max_repeats: int = 100,
            keep_output: bool = False) -> dict:
  """Compiles `jax.jit(fn)` for `args` and times it.

  Sequence: `jax.jit(fn).lower(*args)` (trace + lower, `lower_s`), `.compile()` (`compile_s`
  reports lower + compile, i.e. everything before the first execution), one first execution
  (`first_run_s`, not part of the statistics), then `repeats` warm executions, each ended by
  `block_until_ready`; `median_s`/`min_s` are over those warm runs. Fast functions get more warm
  runs, enough for about `min_time_s` in all (at most `max_repeats`), so a stray context switch
  on a shared machine does not set the median. If `time_budget_s` is given
  and the first run shows that `repeats` warm runs would not fit in what is left of it, fewer
  (at least `min_repeats`) are done; `runs` says how many.

  Peak memory (`peak_mb`):
    * GPU/TPU: `jax.devices()[0].memory_stats()["peak_bytes_in_use"]` minus `bytes_in_use` at
      entry (`memory_kind="device_peak_bytes"`). The peak is process-wide, so call this once per
      process.
    * CPU: process peak RSS, `resource.getrusage(RUSAGE_SELF).ru_maxrss` after the runs, minus
      the process's resident size at entry (after imports and input creation),
      `memory_kind="cpu_peak_rss_delta"`. It covers compilation, XLA's buffers and the output,
      and is only meaningful if nothing before the entry peaked higher: run one measurement per
      fresh process (`run_cell`). Where Linux lets us reset the peak mark after compiling
      (`reset_peak_rss`), it is split into `compile_peak_mb` (lower + compile) and `run_peak_mb`
      (the executions, above the same baseline, so it includes the resident executable and the
      output but not the compiler's transient memory); `peak_mb` is the larger of the two.
      `xla_temp_mb` (XLA's own `memory_analysis()` of the executable's scratch buffers) is
      reported alongside as a deterministic figure.

  Returns:
    A dict of plain floats/ints/strings (JSON-serializable); also `kernel_norm` (float64
    Frobenius norm over all output leaves) and `kernel_shape` to cross-check implementations;
    with `keep_output`, the last output under "_out" (pop it before emitting).
  """
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  dev_stats0 = _device_memory_stats()
  base_rss = current_rss_bytes()

  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  compile_peak = max_rss_bytes()
  can_reset = dev_stats0 is None and reset_peak_rss()

  t3 = time.perf_counter()
  out = _block(compiled(*args))
  first = time.perf_counter() - t3

  # Warm runs: at least `repeats`, more while under `min_time_s` in all (at most `max_repeats`);
  # fewer (at least `min_repeats`) where the next run would overrun `time_budget_s`.
  times: list[float] = []
  while True:
    n = len(times)
    if n >= max(repeats, min_repeats) and (n >= max_repeats or sum(times) >= min_time_s):
      break
    if time_budget_s is not None and n >= min_repeats:
      left = time_budget_s - (time.perf_counter() - start)
      if left < (statistics.median(times) if times else first):
        break
    t = time.perf_counter()
    out = _block(compiled(*args))
    times.append(time.perf_counter() - t)

  res: dict[str, Any] = {
      "lower_s": t1 - t0,
      "compile_s": t2 - t0,
      "first_run_s": first,
      "times_s": times,
      "runs": len(times),
      "median_s": statistics.median(times) if times else None,
      "min_s": min(times) if times else None,
  }
  dev_stats1 = _device_memory_stats()
  if dev_stats0 is not None and dev_stats1 is not None:
    res["memory_kind"] = "device_peak_bytes"
    res["baseline_mb"] = dev_stats0.get("bytes_in_use", 0) / _MB
    res["peak_mb"] = (dev_stats1["peak_bytes_in_use"] - dev_stats0.get("bytes_in_use", 0)) / _MB
  else:
    run_peak = max_rss_bytes()
    peak = max(compile_peak, run_peak) if can_reset else run_peak
    res["memory_kind"] = "cpu_peak_rss_delta"
    res["baseline_mb"] = base_rss / _MB
    res["peak_rss_mb"] = peak / _MB
    res["peak_mb"] = max(0, peak - base_rss) / _MB
    if can_reset:
      res["compile_peak_mb"] = max(0, compile_peak - base_rss) / _MB
      res["run_peak_mb"] = max(0, run_peak - base_rss) / _MB
  res["flops"] = _cost_flops(compiled)
  res.update(_xla_memory(compiled))
  leaves = jax.tree_util.tree_leaves(out)
  res["kernel_norm"] = float(np.sqrt(sum(np.sum(np.asarray(l, np.float64) ** 2) for l in leaves)))
  res["kernel_shape"] = [list(np.shape(l)) for l in leaves]
  if keep_output:
    res["_out"] = out
  return res


# ---------------------------------------------------------------------------------------------
# One cell per subprocess.

def emit_result(record: dict) -> None:
  """Called by a cell subprocess: prints its result where `run_cell` finds it."""
  sys.stdout.write(RESULT_TAG + json.dumps(record, default=_json_default) + "\n")
  sys.stdout.flush()


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "MemoryError", "Out of memory", "out of memory",
                "std::bad_alloc", "Cannot allocate memory")


def classify_exception(e: BaseException) -> str:
  """'unavailable' (method not implemented yet), 'oom', or 'error'."""
  if isinstance(e, (NotImplementedError, ImportError)):
    return "unavailable"
  if isinstance(e, MemoryError) or any(m in str(e) for m in _OOM_MARKERS):
    return "oom"
  return "error"


def cell_main(measure: Callable[[], dict], meta: dict) -> None:
  """Body of a cell subprocess: runs `measure()` and emits `meta` + its result + a status."""
  rec = dict(meta)
  try:
    rec.update(measure())
    rec["status"] = "ok"
  except BaseException as e:  # pylint: disable=broad-except
    rec["status"] = classify_exception(e)
    rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    if rec["status"] == "error":
      rec["traceback"] = traceback.format_exc()[-4000:]
  emit_result(rec)


def _tree_rss_bytes(pid: int) -> int:
  """RSS of `pid` and its descendants (Linux), 0 if it is gone."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/statm") as f:
        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
      with open(f"/proc/{p}/task/{p}/children") as f:
        todo.extend(int(c) for c in f.read().split())
    except (OSError, ValueError, IndexError):
      pass
  return total


def run_cell(cmd: Sequence[str], timeout_s: float, mem_limit_mb: float | None = None,
             env: dict | None = None, cwd: str | None = None) -> dict:
  """Runs one cell `cmd` in a fresh process; returns its emitted record plus bookkeeping.

  The child is killed (whole process group) when it runs past `timeout_s` (status "timeout") or
  when its resident memory, polled every 0.1 s, exceeds `mem_limit_mb` (status "oom"; a kernel
  OOM kill, SIGKILL we did not send, is also "oom"). `cell_wall_s` is the wall time of the whole
  subprocess (imports, input creation, compile and runs); `child_maxrss_mb` is the child's peak
  RSS as the kernel reports it to the parent (`os.wait4`), available even for killed cells.
  """
  load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  t0 = time.perf_counter()
  proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          cwd=cwd, start_new_session=True, text=True)
  import threading  # pylint: disable=g-import-not-at-top
  chunks: dict[str, list[str]] = {"out": [], "err": []}

  def pump(stream, key):
    for line in stream:
      chunks[key].append(line)

  pumps = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
           threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
  for t in pumps:
    t.start()
  killed_for = None
  watch_peak = 0
  while True:
    try:
      wpid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
      wpid, wstatus, rusage = proc.pid, 0, None
    if wpid == proc.pid:
      break
    rss = _tree_rss_bytes(proc.pid)
    watch_peak = max(watch_peak, rss)
    if mem_limit_mb is not None and rss > mem_limit_mb * _MB:
      killed_for = "oom"
    if time.perf_counter() - t0 > timeout_s:
      killed_for = "timeout"
    if killed_for:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      wpid, wstatus, rusage = os.wait4(proc.pid, 0)
      break
    time.sleep(0.1)
  proc.returncode = (os.waitstatus_to_exitcode(wstatus) if hasattr(os, "waitstatus_to_exitcode")
                     else wstatus)
  for t in pumps:
    t.join(timeout=5)
  wall = time.perf_counter() - t0
  out, err = "".join(chunks["out"]), "".join(chunks["err"])
  rec: dict[str, Any] = {}
  for line in out.splitlines():
    if line.startswith(RESULT_TAG):
      rec = json.loads(line[len(RESULT_TAG):])
  if killed_for:
    rec["status"] = killed_for
    rec["error"] = (f"killed after {wall:.0f} s (limit {timeout_s:.0f} s)" if killed_for == "timeout"
                    else f"resident memory exceeded the {mem_limit_mb:.0f} MB cap")
  elif not rec:
    oom = proc.returncode == -signal.SIGKILL or any(m in err for m in _OOM_MARKERS)
    rec["status"] = "oom" if oom else "error"
    rec["error"] = f"exit code {proc.returncode}; stderr tail: {err[-1500:]}"
  rec["cell_wall_s"] = wall
  if load0 is not None:
    rec["loadavg_1m"] = [load0, os.getloadavg()[0]]  # Machine load at the cell's start and end.
  if rusage is not None:
    rec["child_maxrss_mb"] = rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / _MB
  rec["watch_peak_rss_mb"] = watch_peak / _MB
  return rec


# ---------------------------------------------------------------------------------------------
# The paper's Fig. 1 model: an L-layer ReLU FCN without biases.

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
# Grid / CLI helpers shared by fcn.py and peer_fcn.py.

QUICK = {"n": [1], "widths": [64, 128], "outputs": [1, 16]}
FULL = {"n": [1, 8], "widths": [64, 128, 256, 512, 1024], "outputs": [1, 16, 128]}


def int_list(s: str) -> list[int]:
  return [int(v) for v in s.replace(" ", "").split(",") if v]


def impl_list(s: str) -> list[str]:
  out = []
  for v in s.replace(" ", "").split(","):
    if not v:
      continue
    name = _ALIASES.get(v.lower(), v.lower())
    if name not in IMPLEMENTATIONS:
      raise argparse.ArgumentTypeError(
          f"unknown implementation {v!r}; use {', '.join(IMPLEMENTATIONS)} (or jc, vp, sd, 0-3)")
    out.append(name)
  return out


def add_grid_args(p: argparse.ArgumentParser, default_out: str) -> None:
  p.add_argument("--widths", type=int_list, default=None,
                 help="comma-separated widths W (default 64,128,256,512,1024)")
  p.add_argument("--n", type=int_list, default=None,
                 help="comma-separated batch sizes N (default 1,8)")
  p.add_argument("--outputs", type=int_list, default=None,
                 help="comma-separated output sizes O (default 1,16,128)")
  p.add_argument("--implementations", type=impl_list, default=list(IMPLEMENTATIONS),
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
  p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # Internal: one cell (JSON).


def grid_from_args(args) -> list[dict]:
  base = QUICK if args.quick else FULL
  ns = args.n or base["n"]
  ws = args.widths or base["widths"]
  os_ = args.outputs or base["outputs"]
  return [{"n": n, "width": w, "outputs": o, "depth": args.depth}
          for n in ns for w in ws for o in os_]


def cell_key(rec: dict) -> tuple:
  return (rec.get("library"), rec.get("implementation"), rec.get("n"), rec.get("width"),
          rec.get("outputs"), rec.get("depth"))


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def append_jsonl(path: str, rec: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(rec, default=_json_default) + "\n")


def machine_info() -> dict:
  cpu = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu_count": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
          "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def jax_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"jax_version": jax.__version__, "platform": d.platform,
          "device_kind": getattr(d, "device_kind", d.platform)}


def package_version(name: str) -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(name)
  except Exception:  # pylint: disable=broad-except
    return "unknown"


def replace_between_markers(path: str, begin: str, end: str, body: str, header: str = "") -> None:
  """Writes `body` between the `begin`/`end` marker lines of `path` (created if missing)."""
  text = ""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  block = f"{begin}\n{body.rstrip()}\n{end}"
  if begin in text and end in text:
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    text = pre + block + post
  else:
    text = (text.rstrip() + "\n\n" if text.strip() else header) + block + "\n"
  with open(path, "w") as f:
    f.write(text)


def fmt_num(v: float | None, digits: int = 3) -> str:
  """Three significant figures, no scientific notation for ordinary magnitudes."""
  if v is None:
    return "—"
  if v == 0:
    return "0"
  a = abs(v)
  if a >= 10 ** digits:
    return f"{v:.0f}"
  dec = max(0, digits - 1 - int(np.floor(np.log10(a))))
  return f"{v:.{dec}f}"


def run_sweep(jobs: Sequence[tuple[dict, Sequence[str]]], out_path: str, timeout_s: float,
              mem_limit_mb: float | None, resume: bool = False, append: bool = False,
              env: dict | None = None,
              cwd: str | None = None, log=sys.stderr) -> list[dict]:
  """Runs `(meta, cmd)` jobs one at a time, each via `run_cell`; appends each record to `out_path`.

  `meta` identifies the cell (library, implementation, n, width, outputs, depth...) and is merged
  under the child's record, so killed cells keep their identity. With `resume`, jobs whose key
  already has an "ok" record in `out_path` are skipped; with `append`, every job runs and its
  record is added after the old ones (readers take the latest record per cell); otherwise
  `out_path` is truncated first.
  """
  done = set()
  if resume:
    done = {cell_key(r) for r in read_jsonl(out_path) if r.get("status") == "ok"}
  elif not append and os.path.exists(out_path):
    os.remove(out_path)
  records = []
  for i, (meta, cmd) in enumerate(jobs):
    if cell_key(meta) in done:
      continue
    rec = dict(meta)
    rec.update(run_cell(cmd, timeout_s, mem_limit_mb, env=env, cwd=cwd))
    for k, v in meta.items():  # The parent's identity fields win.
      rec[k] = v
    append_jsonl(out_path, rec)
    records.append(rec)
    ms = "" if rec.get("median_s") is None else f" median {rec['median_s'] * 1e3:.2f} ms"
    extra = (f" compile {rec['compile_s']:.2f} s peak {rec.get('peak_mb', 0):.0f} MB (runs "
             f"{rec.get('run_peak_mb', float('nan')):.0f} MB)" if ms else "")
    print(f"[{i + 1}/{len(jobs)}] {meta.get('library')} {SHORT.get(meta.get('implementation'))} "
          f"N={meta.get('n')} W={meta.get('width')} O={meta.get('outputs')}: {rec['status']}"
          f"{ms}{extra} (cell {rec['cell_wall_s']:.1f} s)"
          + ("" if rec["status"] in ("ok",) else f" — {str(rec.get('error', ''))[:200]}"),
          file=log, flush=True)
  return records


def iter_unique(items: Iterable) -> list:
  seen, out = set(), []
  for x in items:
    if x not in seen:
      seen.add(x)
      out.append(x)
  return out
