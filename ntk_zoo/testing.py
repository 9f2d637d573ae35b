"""Testing utilities: a brute-force reference NTK and a tolerance-aware comparison.

`reference_ntk` shares no code with the engines: it takes `jax.jacobian` of both full batches,
contracts with `np.tensordot`, and applies trace/diagonal axes with `np.trace`/`np.diagonal`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from ntk_zoo.ntk.typing import PyTree, TreeDef

# Per-dtype tolerances: (rtol, atol as a fraction of max |reference|).
TOLERANCES = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 1e-4,
    np.dtype(np.float16): 1e-2,
}


def _full_kernel(j1: np.ndarray, j2: np.ndarray, out_ndim: int) -> np.ndarray:
  p = list(range(out_ndim, j1.ndim))
  return np.tensordot(j1, j2, axes=(p, p))


def _apply_trace_and_diagonal(k: np.ndarray, ndim: int, trace_axes, diagonal_axes) -> np.ndarray:
  """k has axes (out1..., out2...). Returns axes in the documented walk order."""
  trace = sorted({a % ndim for a in trace_axes})
  diag = sorted({a % ndim for a in diagonal_axes})
  # Label axes; reduce traced pairs, then take diagonals, tracking labels explicitly.
  labels = [("1", a) for a in range(ndim)] + [("2", a) for a in range(ndim)]
  size = 1
  for a in trace:
    i, j = labels.index(("1", a)), labels.index(("2", a))
    size *= k.shape[i]
    k = np.trace(k, axis1=i, axis2=j)
    labels = [l for l in labels if l[1] != a]
  for a in diag:
    i, j = labels.index(("1", a)), labels.index(("2", a))
    k = np.diagonal(k, axis1=i, axis2=j)  # Diagonal goes last.
    labels = [l for l in labels if l[1] != a] + [("d", a)]
  order = []
  for a in range(ndim):
    if a in trace:
      continue
    if a in diag:
      order.append(labels.index(("d", a)))
    else:
      order += [labels.index(("1", a)), labels.index(("2", a))]
  return np.transpose(k, order) / size


def reference_ntk(f: Callable, x1: PyTree, x2: PyTree | None, params: PyTree, *,
                  trace_axes: Sequence[int] = (-1,), diagonal_axes: Sequence[int] = (),
                  **f_kwargs) -> PyTree:
  """Brute-force empirical NTK (same conventions as `ntk_zoo.ntk_fn`), as numpy arrays.

  Computes J = jax.jacobian(f) on both full batches and contracts over every parameter; slow
  and memory-hungry, for tests only. Uses the dtype of the inputs/params (enable x64 for a
  float64 reference).
  """
  x2 = x1 if x2 is None else x2
  jac = jax.jit(jax.jacobian(lambda p, x: f(p, x, **f_kwargs)))
  out = jax.eval_shape(lambda p, x: f(p, x, **f_kwargs), params, x1)
  out_tree: TreeDef
  out_leaves, out_tree = jax.tree_util.tree_flatten(out)
  j1, j2 = jac(params, x1), jac(params, x2)
  # jacobian of a tree output: out_tree of params-trees.
  j1_leaves = out_tree.flatten_up_to(j1)
  j2_leaves = out_tree.flatten_up_to(j2)
  kernels = []
  for o, a, b in zip(out_leaves, j1_leaves, j2_leaves):
    ndim = len(o.shape)
    full = sum(_full_kernel(np.asarray(u), np.asarray(v), ndim)
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    kernels.append(_apply_trace_and_diagonal(np.asarray(full), ndim, trace_axes, diagonal_axes))
  return jax.tree_util.tree_unflatten(out_tree, kernels)


def max_normalized_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (0 when both are zero)."""
  a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = np.max(np.abs(e)) if e.size else 0.0
  err = np.max(np.abs(a - e)) if e.size else 0.0
  return float(err / scale) if scale > 0 else float(err)


def assert_ntk_close(actual: PyTree, expected: PyTree, *, rtol: float | None = None,
                     dtype=None) -> None:
  """Asserts two kernel pytrees agree: same structure and shapes, and

  * float64: |a - e| <= rtol·|e| + rtol·max|e| with rtol = 1e-10;
  * float32: max |a - e| / max |e| <= 1e-4 (max-normalized error);
  * float16/bfloat16: max-normalized error <= 1e-2.

  The dtype is `dtype` if given, else the widest of the two kernels' dtypes.
  """
  a_tree: TreeDef
  a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
  e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
  if a_tree != e_tree:
    raise AssertionError(f"Kernel pytrees differ:\n  actual:   {a_tree}\n  expected: {e_tree}")
  for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
    a, e = np.asarray(a), np.asarray(e)
    if a.shape != e.shape:
      raise AssertionError(f"Kernel leaf {i}: shape {a.shape} != expected {e.shape}.")
    dt = np.dtype(dtype) if dtype is not None else np.promote_types(a.dtype, e.dtype)
    if dt not in TOLERANCES:
      dt = np.dtype(np.float16)
    tol = rtol if rtol is not None else TOLERANCES[dt]
    if dt == np.float64:
      scale = np.max(np.abs(e)) if e.size else 0.0
      np.testing.assert_allclose(a, e, rtol=tol, atol=tol * scale,
                                 err_msg=f"kernel leaf {i} (float64)")
    else:
      err = max_normalized_error(a, e)
      if err > tol:
        raise AssertionError(
            f"Kernel leaf {i} ({dt}): max-normalized error {err:.3g} > {tol:.1g}.")
