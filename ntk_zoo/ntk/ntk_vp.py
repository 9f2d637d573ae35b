"""NTK-vector products: Θ·v = J1 (J2ᵀ v), a VJP at x2 followed by a JVP at x1.

Applied to the columns of the identity over x2's outputs (vmapped), this builds the kernel
without instantiating the Jacobian contraction. Cost (paper Table 2): N²·O·[FP]; best for
models without weight sharing (FCNs) and N = 1. With `vmap_axes`, work is per pair of examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk.options import NTKOptions

PyTree = Any


def full_kernel(f: Callable, params: PyTree, x1: PyTree, x2: PyTree, leaf: int) -> jax.Array:
  """Θ for output leaf `leaf` with every axis kept: shape (*out_shape1, *out_shape2)."""
  _, f1_lin = jax.linearize(lambda p: f(p, x1), params)
  out2, vjp2 = jax.vjp(lambda p: f(p, x2), params)
  out2_leaves, out2_tree = jax.tree_util.tree_flatten(out2)
  o2 = out2_leaves[leaf]

  def column(e):
    cts = [e if i == leaf else jnp.zeros_like(l) for i, l in enumerate(out2_leaves)]
    tangent = vjp2(jax.tree_util.tree_unflatten(out2_tree, cts))[0]
    return jax.tree_util.tree_leaves(f1_lin(tangent))[leaf]

  cols = _tree.map_rows(column, _tree.basis(o2.shape, o2.dtype))  # (size2, *out_shape1)
  cols = cols.reshape((*o2.shape, *cols.shape[1:]))
  n2 = o2.ndim
  return jnp.moveaxis(cols, tuple(range(n2)), tuple(range(cols.ndim - n2, cols.ndim)))


def kernel(f: Callable, params: PyTree, x1: PyTree, x2: PyTree | None, opts: NTKOptions,
           out_shapes: PyTree) -> PyTree:
  """The NTK by NTK-vector products; see `ntk_zoo.ntk_fn` for the arguments' meaning."""
  x2 = x1 if x2 is None else x2
  out_leaves, out_tree = jax.tree_util.tree_flatten(out_shapes)
  kernels = []
  if opts.vmap_axes is None:
    for m, o in enumerate(out_leaves):
      kernels.append(_tree.apply_roles(full_kernel(f, params, x1, x2, m), opts.roles(len(o.shape))))
    return jax.tree_util.tree_unflatten(out_tree, kernels)

  f1, in_axes, out_axes = _tree.single_example_fn(f, x1, out_shapes, opts)
  for m, o in enumerate(out_leaves):
    roles = opts.roles(len(o.shape))
    rest_roles = tuple(r for a, r in enumerate(roles) if a != out_axes[m])

    def pair_kernel(x1i, x2j, m=m, rest_roles=rest_roles):
      return _tree.apply_roles(full_kernel(f1, params, x1i, x2j, m), rest_roles)

    kernels.append(_tree.over_examples(pair_kernel, x1, x2, in_axes, roles, out_axes[m]))
  return jax.tree_util.tree_unflatten(out_tree, kernels)



