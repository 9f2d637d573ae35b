"""neural-tangents' side of `dataset.py`: one call vs `nt.batch`, run inside the peer's venv.

Runs under the neural-tangents venv (`benchmarks/peer/setup_neural_tangents.sh`: neural-tangents
0.6.5 on JAX 0.4.23), one cell per process, started by `dataset.py --peer-venv PATH`. It imports
only `harness`, `peer_nt`, `pure_resnet` (from this directory) and `neural_tangents`, never
ntk_zoo, so `dataset.py` can import it in ntk_zoo's venv too (for `META_KEYS`, `add_rates` and
`kernel_norm`).

    <peer-venv>/bin/python benchmarks/peer_dataset.py --cell '{"kind": "peer_batch", ...}'

Cells (model `pure_resnet`, inputs `pure_resnet.inputs(n, image_size)[0]`, symmetric: x2=None):

* `peer_single`: `nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=1|2|3)`,
  jitted, timed by `harness.time_fn` (compile, first run, warm runs).
* `peer_batch`: `nt.batch(that kernel_fn, batch_size=B, store_on_device=False)` called as
  `batched(x, None, params)`, not jitted (as neural-tangents prescribes: it jits the kernel of one
  B × B batch pair itself and loops over the pairs in Python). Timed by `time_calls`: the first
  call (compile included) and warm calls. What `nt.batch` does with x2=None (0.6.5 source,
  `_src/batching.py`): it sets x2 = x1 and computes all (N/B)² batch pairs, the diagonal ones
  and both triangles, as general (x1, x2) pairs ("TODO: only compute the upper triangular
  part"); N must be divisible by B (ValueError otherwise), and a B larger than N is cut to
  gcd(N, N) = N with a warning. The pairs are stacked with `jnp.stack` and transposed into the
  (N, N, O, O) kernel at the end, in memory: one copy of the tiles plus the assembled kernel.

As in `peer_resnet.py`, `neural_tangents.experimental` (TensorFlow interop) is replaced by an
empty module unless the cell asks for `import_tf` (`peer_nt.import_nt`).
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_nt  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

META_KEYS = ("benchmark", "kind", "library", "implementation", "arch", "n", "image_size",
             "outputs", "dtype", "batch_size")
_MB = 1024.0 * 1024.0


def entries(n: int, outputs: int) -> int:
  """Kernel entries of the full symmetric NTK, N² · O²."""
  return n * n * outputs * outputs


def kernel_norm(out) -> float:
  """Frobenius norm (float64) of an array, accumulated over row blocks to bound memory.

  Anything with `shape` and slicing (a jax array, an `ntk_zoo.StoredKernel` on disk) is read
  one block of rows at a time.
  """
  a = out if hasattr(out, "shape") and hasattr(out, "__getitem__") else np.asarray(out)
  if len(a.shape) == 0:
    return float(abs(np.asarray(a)))
  total, step = 0.0, max(1, a.shape[0] // 16)
  for i in range(0, a.shape[0], step):
    total += float(np.sum(np.asarray(a[i:i + step], np.float64) ** 2))
  return float(np.sqrt(total))


def time_calls(fn, repeats: int = 1, time_budget_s: float | None = None,
               min_time_s: float = 1.0, max_repeats: int = 20) -> dict:
  """Times a not-jitted callable `fn()`: its first call (compiles included), then warm calls.

  `first_call_s` is the first call's wall time up to `block_until_ready` of its output;
  `median_s`/`min_s` are over the warm calls (at least `repeats`, more while under `min_time_s`
  in all, fewer where the next would overrun `time_budget_s`; possibly none, then `runs` = 0).
  Memory: process peak RSS minus the RSS at entry, over the first call (`first_peak_mb`,
  compile included) and, after a reset of the peak mark (`harness.reset_peak_rss`), over the warm
  calls (`run_peak_mb`). The output of the last call is returned under "_out".
  """
  start = time.perf_counter()
  base = harness.current_rss_bytes()
  t = time.perf_counter()
  out = harness.block(fn())
  first = time.perf_counter() - t
  first_peak = harness.max_rss_bytes()
  can_reset = harness.reset_peak_rss()
  times: list[float] = []
  while True:
    n = len(times)
    if n >= repeats and (n >= max_repeats or sum(times) >= min_time_s):
      break
    if time_budget_s is not None:
      left = time_budget_s - (time.perf_counter() - start)
      if left < (statistics.median(times) if times else first):
        break
    del out  # Let the previous kernel go before the next is assembled.
    t = time.perf_counter()
    out = harness.block(fn())
    times.append(time.perf_counter() - t)
  run_peak = harness.max_rss_bytes()
  res = {"first_call_s": first, "times_s": times, "runs": len(times),
         "median_s": statistics.median(times) if times else None,
         "min_s": min(times) if times else None,
         "memory_kind": "cpu_peak_rss_delta", "baseline_mb": base / _MB,
         "first_peak_mb": max(0, first_peak - base) / _MB, "_out": out}
  if can_reset and times:
    res["run_peak_mb"] = max(0, run_peak - base) / _MB
  res["peak_mb"] = max(res["first_peak_mb"], res.get("run_peak_mb", 0.0))
  return res


def add_rates(info: dict, n: int, outputs: int) -> dict:
  """entries/s of the first call (compile included) and of a warm call."""
  e = entries(n, outputs)
  info["entries"] = e
  if info.get("first_call_s"):
    info["rate_first"] = e / info["first_call_s"]
  warm = info.get("median_s")
  if warm is None and info.get("first_run_s"):
    # No warm run fitted the timeout: the first execution after the compile stands in.
    warm = info["first_run_s"]
    info["warm_is_first_run"] = True
  info["warm_s"] = warm
  if warm:
    info["rate_warm"] = e / warm
  return info


def _time_batched(nt, kernel, x, params, cell: dict, budget: float) -> dict:
  """`nt.batch(kernel, batch_size=B, store_on_device=False)(x, None, params)`, timed."""
  bs = cell["batch_size"]
  batched = nt.batch(kernel, batch_size=bs, store_on_device=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    res = time_calls(lambda: batched(x, None, params), repeats=cell["repeats"],
                     time_budget_s=budget)
  out = res.pop("_out")
  notes = [str(w.message) for w in caught if "atch size" in str(w.message)]
  if notes:
    res["nt_warnings"] = notes
  eff = bs
  for msg in notes:  # "Batch size is reduced from requested %d to effective %d ..."
    if "effective" in msg:
      eff = int(msg.split("effective")[1].split()[0])
  res["effective_batch_size"] = eff
  res["n_tiles"] = (cell["n"] // eff) ** 2
  res["kernel_shape"] = list(np.shape(out))
  res["kernel_norm"] = kernel_norm(out)
  return res


def run_one_cell(cell: dict) -> None:
  meta = {k: cell.get(k) for k in META_KEYS}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    f, params = pure_resnet.model(cell["arch"], cell["outputs"])
    nt, kernel, info = peer_nt.kernel(f, cell)
    x = jnp.asarray(pure_resnet.inputs(cell["n"], cell["image_size"])[0])
    info["num_params"] = pure_resnet.num_params(params)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    if cell["kind"] == "peer_single":
      res = harness.time_fn(lambda a, p: kernel(a, None, p), x, params,
                            repeats=cell["repeats"], time_budget_s=budget, min_repeats=0)
      res["first_call_s"] = res["compile_s"] + res["first_run_s"]
    elif cell["kind"] == "peer_batch":
      res = _time_batched(nt, kernel, x, params, cell, budget)
    else:
      raise ValueError(f"unknown cell kind {cell['kind']!r}")
    info.update(res)
    return add_rates(info, cell["n"], cell["outputs"])

  harness.cell_main(measure, meta)


def main(argv=None) -> None:
  harness.cell_entry(run_one_cell, __file__, "dataset.py", argv)


if __name__ == "__main__":
  main()
