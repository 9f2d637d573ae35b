"""Small pytree and per-example helpers shared by the engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk.options import NTKOptions, Role, kernel_subscripts, result_position
from ntk_zoo.ntk.typing import PyTree

HIGHEST = jax.lax.Precision.HIGHEST


def broadcast_prefix(prefix: PyTree, tree: PyTree) -> list[Any]:
  """Values of `prefix` (a tree prefix of `tree`, None allowed as a value) for each leaf of `tree`."""
  out: list[Any] = []

  def visit(p, sub):
    out.extend([p] * len(jax.tree_util.tree_leaves(sub)))

  jax.tree_util.tree_map(visit, prefix, tree, is_leaf=lambda v: v is None)
  return out


def single_example_fn(f: Callable, x: PyTree, out_shapes: PyTree, opts: NTKOptions,
                      **kwargs) -> tuple[Callable, list[int | None], list[int]]:
  """f restricted to one example: `f1(params, x_i)` with the batch axes removed.

  Returns:
    (f1, in_axes, out_axes): per-leaf batch axes of `x` and of the output (canonical, >= 0).
  """
  va = opts.vmap_axes
  assert va is not None, "single_example_fn needs opts.vmap_axes (callers check it)"
  x_leaves, x_tree = jax.tree_util.tree_flatten(x)
  in_axes = [None if a is None else a % np.ndim(l)
             for a, l in zip(broadcast_prefix(va.inputs, x), x_leaves)]
  out_leaves, out_tree = jax.tree_util.tree_flatten(out_shapes)
  out_axes = [a % len(o.shape) for a, o in zip(broadcast_prefix(va.outputs, out_shapes), out_leaves)]

  def f1(params, xi):
    xi_leaves = jax.tree_util.tree_leaves(xi)
    xb = [l if a is None else jnp.expand_dims(l, a) for l, a in zip(xi_leaves, in_axes)]
    out = f(params, jax.tree_util.tree_unflatten(x_tree, xb), **kwargs)
    o_leaves = jax.tree_util.tree_leaves(out)
    return jax.tree_util.tree_unflatten(
        out_tree, [jnp.squeeze(o, a) for o, a in zip(o_leaves, out_axes)])

  return f1, in_axes, out_axes


def vmap_in_axes(x: PyTree, in_axes: list[int | None]) -> PyTree:
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(x), in_axes)


def over_examples(pair_kernel: Callable, x1: PyTree, x2: PyTree, in_axes: list[int | None],
                  roles: tuple[Role, ...], out_axis: int) -> jax.Array:
  """Assembles a kernel from per-example-pair kernels along the output batch axis.

  Args:
    pair_kernel: `(x1_i, x2_j) -> array`: the kernel of one pair of examples, with the batch
      axis already removed from both sides and all other roles applied.
    x1, x2: batches; `in_axes` their per-leaf batch axes.
    roles: roles of all output axes (including the batch axis `out_axis`).
    out_axis: the output leaf's batch axis.

  Returns:
    The kernel with the batch axis in place: a pair (N1, N2) at its position, one axis for a
    diagonal batch axis, or the mean over examples for a traced one.
  """
  ax = vmap_in_axes(x1, in_axes)
  pos = result_position(roles, out_axis)
  role = roles[out_axis]
  if role is Role.PAIR:
    inner = jax.vmap(pair_kernel, in_axes=(None, ax), out_axes=pos)
    return jax.vmap(inner, in_axes=(ax, None), out_axes=pos)(x1, x2)
  per_i = jax.vmap(pair_kernel, in_axes=(ax, ax), out_axes=pos if role is Role.DIAG else 0)(x1, x2)
  return per_i if role is Role.DIAG else jnp.mean(per_i, axis=0)


def apply_roles(full: jax.Array, roles: tuple[Role, ...]) -> jax.Array:
  """Applies trace/diagonal roles to a full kernel of shape (*out_shape1, *out_shape2)."""
  n = len(roles)
  side1, side2, out = kernel_subscripts(roles, list(range(n)), list(range(n, 2 * n)))
  k = jnp.einsum(full, side1 + side2, out)
  size = int(np.prod([full.shape[a] for a, r in enumerate(roles) if r is Role.TRACE], dtype=int))
  return k / size if size != 1 else k


def basis(shape: tuple[int, ...], dtype) -> jax.Array:
  """The standard basis of R^shape: array (size, *shape)."""
  size = int(np.prod(shape, dtype=int))
  return jnp.eye(size, dtype=dtype).reshape((size, *shape))


def zeros_like_tree(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(jnp.zeros_like, tree)


# XLA on CPU (jax 0.10.2) silently returns zero weight gradients when a convolution's VJP is
# vmapped over more than 64 cotangents (repro in benchmarks/RESULTS.md, ResNet section). Every
# engine maps over the output basis in chunks of at most this many rows.
MAX_VMAP_ROWS = 64


def map_rows(fn: Callable, rows: PyTree, chunk: int = MAX_VMAP_ROWS) -> Any:
  """`jax.vmap(fn)(rows)`, computed as a `lax.map` over chunks of ≤ `chunk` rows.

  `rows`: an array or a pytree of arrays with the same leading size. `chunk` is capped at
  MAX_VMAP_ROWS (the XLA bug above).
  """
  chunk = max(1, min(chunk, MAX_VMAP_ROWS))
  leaves = jax.tree_util.tree_leaves(rows)
  n = leaves[0].shape[0]
  if n <= chunk:
    return jax.vmap(fn)(rows)
  n_chunks = -(-n // chunk)

  def pad(a):
    a = jnp.concatenate([a, jnp.zeros((n_chunks * chunk - n, *a.shape[1:]), a.dtype)])
    return a.reshape((n_chunks, chunk, *a.shape[1:]))

  out = jax.lax.map(jax.vmap(fn), jax.tree_util.tree_map(pad, rows))
  return jax.tree_util.tree_map(lambda a: a.reshape((-1, *a.shape[2:]))[:n], out)
