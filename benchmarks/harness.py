"""How every benchmark measures: timing, memory probes, one cell per subprocess, JSONL records.

This module uses only the standard library, numpy and jax, and runs on JAX 0.4.23 (the
neural-tangents venv) as well as current JAX, so the peer's scripts (`peer_*.py`) import it
inside the peer's venv. It never imports ntk_zoo or neural_tangents. `experiments/` uses it as
`benchmarks.harness`.

Pieces:

* `time_fn(fn, *args, repeats=3)`: jit + lower + compile timed separately from the runs, then one
  first call and `repeats` warm calls (each `block_until_ready`), and the peak memory of the process
  over the whole measurement (see `time_fn` for what "peak memory" means on CPU and GPU);
  `time_jacobians` for the plain-JAX baseline.
* `run_cell(cmd, timeout_s, mem_limit_mb)`: runs one benchmark cell in its own subprocess, so cells
  never pollute each other's memory figures, and records a cell that hangs, runs out of time, or
  grows past a memory cap as "timeout"/"oom" instead of blocking the sweep; `cell_main` is the
  other end, in the cell's process, and `run_sweep` runs a list of cells into a JSONL file.
* Records and provenance: `read_jsonl`/`append_jsonl`, a sweep's `.meta.json` (`sweep_meta`),
  `machine_info`, `jax_info`, `git_state`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))  # Outputs go to BENCHMARKS/out/.
REPO = os.path.dirname(BENCHMARKS)  # Cells run here; commands and paths are relative to it.
RESULT_TAG = "@@NTK_BENCH_RESULT@@ "
_MB = 1024.0 * 1024.0


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


def block(x):
  """`x` with every array leaf ready (`block_until_ready`); other leaves pass through."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(
      lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


# ---------------------------------------------------------------------------------------------
# The timers.

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
  out = block(compiled(*args))
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
    out = block(compiled(*args))
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


def time_jacobians(f: Callable, params, x1, x2, repeats: int,
                   time_budget_s: float | None) -> dict:
  """`time_fn` of the baseline `lambda p, a, b: (jax.jacrev(f)(p, a), jax.jacrev(f)(p, b))`.

  Plain JAX, jitted, no NTK library: the two Jacobians without contracting them. Their norm is
  recorded as `jacobian_norm` (not a kernel: it stays out of the kernels' agreement check).
  """
  import jax  # pylint: disable=g-import-not-at-top
  jac = jax.jacrev(f)
  res = time_fn(lambda p, a, b: (jac(p, a), jac(p, b)), params, x1, x2, repeats=repeats,
                time_budget_s=time_budget_s)
  res["jacobian_norm"] = res.pop("kernel_norm")
  res["kernel_shape"] = None
  return res


# ---------------------------------------------------------------------------------------------
# One cell per subprocess.

def cell_command(script: str, cell: dict, python: str = sys.executable) -> list[str]:
  """The command that runs `cell` in a fresh process: `python script --cell JSON`."""
  return [python, os.path.abspath(script), "--cell", json.dumps(cell)]


def run_cell_arg(run_one_cell: Callable[[dict], None], argv: Sequence[str]) -> bool:
  """Runs `run_one_cell(cell)` if `argv` is `--cell JSON` (`cell_command`); says whether it did."""
  if len(argv) != 2 or argv[0] != "--cell":
    return False
  run_one_cell(json.loads(argv[1]))
  return True


def script_main(main: Callable[[], None], run_one_cell: Callable[[dict], None]) -> None:
  """A benchmark script's entry point: the cell of `--cell JSON`, else the script's `main()`."""
  if not run_cell_arg(run_one_cell, sys.argv[1:]):
    main()


def cell_entry(run_one_cell: Callable[[dict], None], script: str, started_by: str,
               argv: Sequence[str] | None = None) -> None:
  """The `main` of a script that only runs cells: `script --cell JSON`, else a usage error."""
  if not run_cell_arg(run_one_cell, sys.argv[1:] if argv is None else argv):
    raise SystemExit(f"usage: {os.path.basename(script)} --cell JSON  (started by {started_by})")


def cell_info(library_version: str, **extra) -> dict:
  """The fields a cell records first: its library's version, `extra`, then JAX's (`jax_info`)."""
  info = {"library_version": library_version, **extra}
  info.update(jax_info())
  return info


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
# Sweeps: cells one after another into a JSONL file.

def record_key(*fields: str) -> Callable[[dict], tuple]:
  """A record's identity in a sweep: the values of `fields` (None where missing), in order.

  A later record with the same key replaces an earlier one (resumed and appended sweeps).
  """
  return lambda rec: tuple(rec.get(f) for f in fields)


def run_job(meta: dict, cmd: Sequence[str] | None, timeout_s: float,
            mem_limit_mb: float | None, skip: str | None = None, env: dict | None = None,
            cwd: str | None = None) -> dict:
  """`meta` + the record of `run_cell(cmd, ...)`, or + status "skipped" (`error=skip`) if `skip`.

  The parent's identity fields (`meta`) win over the child's, so killed cells keep theirs.
  """
  rec = dict(meta)
  if skip is not None:
    rec.update(status="skipped", error=skip)
  else:
    rec.update(run_cell(cmd, timeout_s, mem_limit_mb, env=env, cwd=cwd))
  rec.update(meta)
  return rec


def run_sweep(jobs: Sequence[tuple[dict, Sequence[str] | None]], out_path: str,
              timeout_s: float, mem_limit_mb: float | None, *, key: Callable[[dict], tuple],
              describe: Callable[[dict], str], resume: bool = False, append: bool = False,
              env: dict | None = None, cwd: str | None = None, log=sys.stderr) -> list[dict]:
  """Runs `(meta, cmd)` jobs one at a time (`run_job`); appends each record to `out_path`.

  `meta` identifies the cell (`key(meta)`: library, implementation, sizes...). A job whose `cmd`
  is None is recorded as skipped (error "--skip", the flag that drops it). With `resume`, jobs
  whose key already has an "ok" record in `out_path` are skipped; with `append`, every job runs
  and its record is added after the old ones (readers take the latest record per cell);
  otherwise `out_path` is truncated first. Each record is logged as "[i/n] " + `describe(rec)`.
  """
  done = set()
  if resume:
    done = {key(r) for r in read_jsonl(out_path) if r.get("status") == "ok"}
  elif not append and os.path.exists(out_path):
    os.remove(out_path)
  records = []
  for i, (meta, cmd) in enumerate(jobs):
    if key(meta) in done:
      continue
    skip = None if cmd is not None else "--skip"
    rec = run_job(meta, cmd, timeout_s, mem_limit_mb, skip=skip, env=env, cwd=cwd)
    append_jsonl(out_path, rec)
    records.append(rec)
    print(f"[{i + 1}/{len(jobs)}] {describe(rec)}", file=log, flush=True)
  return records


# ---------------------------------------------------------------------------------------------
# Records and provenance.

def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def append_jsonl(path: str, rec: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(rec, default=_json_default) + "\n")


def read_meta(path: str) -> dict:
  """A sweep's `.meta.json` ({} if there is none)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_meta(path: str, meta: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(meta, f, indent=1)


def sweep_meta(script: str, argv: Sequence[str], args, short_python: bool = False,
               git: bool = False, **extra) -> dict:
  """A sweep's `.meta.json`: its command line, the machine, its limits, `extra`, where it wrote.

  `args` has `repeats`, `timeout`, `mem_limit_mb` and `out`. The command and `out_rel` are
  relative to `REPO`; with `short_python`, so is the interpreter where it lies inside `REPO`;
  with `git`, the ntk_zoo code the cells ran is recorded too (`git_state`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  python = sys.executable
  if short_python and python.startswith(REPO):
    python = os.path.relpath(python, REPO)
  meta = {"command": shlex.join([python, os.path.relpath(os.path.abspath(script), REPO), *argv]),
          "machine": machine_info(), "platform": jax.devices()[0].platform,
          "repeats": args.repeats, "timeout": args.timeout, "mem_limit_mb": args.mem_limit_mb,
          **extra, "out_rel": os.path.relpath(os.path.abspath(args.out), REPO)}
  if git:
    meta["git"] = git_state()
  return meta


def add_note_arg(parser) -> None:
  parser.add_argument("--note", action="append", default=None,
                      help="a paragraph for the markdown section (kept in the .meta.json)")


def save_notes(meta_path: str, meta: dict, notes: list[str] | None) -> None:
  """With `--note`s, they replace the sweep's notes in `meta` and its `.meta.json`."""
  if notes is not None:
    meta["notes"] = [n for n in notes if n]
    write_meta(meta_path, meta)


def chain_commands(meta: dict, old: dict) -> None:
  """Sets `meta["commands"]`: the commands behind `old`'s records, then `meta`'s own."""
  meta["commands"] = old.get("commands", [old.get("command")]) + [meta["command"]]


def peer_python(parser, venv: str | None) -> str | None:
  """The interpreter of the peer's venv `venv` (None without one); a usage error if missing."""
  if not venv:
    return None
  python = os.path.join(os.path.expanduser(venv), "bin", "python")
  if not os.path.exists(python):
    parser.error(f"--peer-venv: {python} not found; build it with setup_neural_tangents.sh")
  return python


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


def git_state(repo: str = REPO) -> str:
  """HEAD's short hash, plus a note if ntk_zoo/ has uncommitted changes (read-only git)."""
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "ntk_zoo"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + (" + uncommitted changes in ntk_zoo/" if dirty else "")
