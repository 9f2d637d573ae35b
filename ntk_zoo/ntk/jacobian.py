"""Jacobian contraction: Θ = Σ_l J1ˡ J2ˡᵀ with J = ∂f/∂θ instantiated by reverse mode.

Cost (paper Table 2): N·O·[FP] to build the Jacobians plus N²·O²·P for the contraction; memory
N·O·P. The baseline the other methods are measured against; best only for tiny outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk.options import NTKOptions, kernel_subscripts, trace_size

PyTree = Any


def jacobians(f: Callable, params: PyTree, x: PyTree) -> list[PyTree]:
  """∂f(θ, x)/∂θ for each output leaf: a params-like tree with leaves (*out_shape, *param_shape)."""
  out, vjp = jax.vjp(lambda p: f(p, x), params)
  out_leaves, out_tree = jax.tree_util.tree_flatten(out)
  jacs = []
  for m, o in enumerate(out_leaves):

    def pullback(e, m=m):
      cts = [e if i == m else jnp.zeros_like(l) for i, l in enumerate(out_leaves)]
      return vjp(jax.tree_util.tree_unflatten(out_tree, cts))[0]

    j = _tree.map_rows(pullback, _tree.basis(o.shape, o.dtype))
    jacs.append(jax.tree_util.tree_map(lambda a, o=o: a.reshape((*o.shape, *a.shape[1:])), j))
  return jacs


def contract(j1: PyTree, j2: PyTree, roles, out_ndim: int, batch_axis: int | None = None):
  """Σ over params of J1 · J2 with the roles' output subscripts.

  Args:
    j1, j2: params-like trees with leaves (*out, *param) — or, when `batch_axis` is not None,
      (N, *out_without_batch, *param) with the batch axis moved first.
    roles: roles of the output leaf's axes.
    out_ndim: number of output axes.
    batch_axis: position of the batch axis among the output axes, if it was moved first.
  """
  letters1, letters2 = list(range(out_ndim)), list(range(out_ndim, 2 * out_ndim))
  s1, s2, out = kernel_subscripts(roles, letters1, letters2)
  if batch_axis is not None:
    order = [batch_axis] + [a for a in range(out_ndim) if a != batch_axis]
    s1, s2 = [s1[a] for a in order], [s2[a] for a in order]
  total = None
  for a, b in zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2)):
    p = list(range(2 * out_ndim, 2 * out_ndim + a.ndim - out_ndim))
    term = jnp.einsum(a, s1 + p, b, s2 + p, out, precision=_tree.HIGHEST)
    total = term if total is None else total + term
  return total


def kernel(f: Callable, params: PyTree, x1: PyTree, x2: PyTree | None, opts: NTKOptions,
           out_shapes: PyTree) -> PyTree:
  """The NTK by Jacobian contraction; see `ntk_zoo.ntk_fn` for the arguments' meaning."""
  out_leaves, out_tree = jax.tree_util.tree_flatten(out_shapes)
  if opts.vmap_axes is None:
    j1 = jacobians(f, params, x1)
    j2 = j1 if x2 is None else jacobians(f, params, x2)
    batch_axes = [None] * len(out_leaves)
  else:
    f1, in_axes, batch_axes = _tree.single_example_fn(f, x1, out_shapes, opts)
    per_example = jax.vmap(lambda xi: jacobians(f1, params, xi),
                           in_axes=(_tree.vmap_in_axes(x1, in_axes),))
    j1 = per_example(x1)
    j2 = j1 if x2 is None else per_example(x2)
  kernels = []
  for m, o in enumerate(out_leaves):
    ndim = len(o.shape)
    roles = opts.roles(ndim)
    k = contract(j1[m], j2[m], roles, ndim, batch_axes[m])
    size = trace_size(roles, o.shape)  # Traced axes have equal sizes on both sides.
    kernels.append(k / size if size > 1 else k)
  return jax.tree_util.tree_unflatten(out_tree, kernels)
