"""One kernel call, as every engine sees it: f, params, inputs, options, output shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk.options import NTKOptions, Role
from ntk_zoo.ntk.typing import PyTree


@dataclasses.dataclass(frozen=True)
class Problem:
  """Arguments of one kernel call (already checked by `ntk_fn`).

  Attributes:
    f: `f(params, x)` (keyword arguments already bound).
    params, x1: parameters and first batch.
    x2: second batch, or None for Θ(x1, x1) (symmetric: engines may compute half).
    opts: trace/diagonal/vmap axes.
    out_shapes: `jax.eval_shape(f, params, x1)`.
    out_shapes2: the same for x2 (equal to `out_shapes` when x2 is None).
  """
  f: Callable
  params: PyTree
  x1: PyTree
  x2: PyTree | None
  opts: NTKOptions
  out_shapes: PyTree
  out_shapes2: PyTree

  @property
  def symmetric(self) -> bool:
    return self.x2 is None

  @property
  def xs(self) -> tuple[PyTree, PyTree]:
    return self.x1, (self.x1 if self.x2 is None else self.x2)

  def out_leaves(self) -> list[tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]]:
    return list(zip(jax.tree_util.tree_leaves(self.out_shapes),
                    jax.tree_util.tree_leaves(self.out_shapes2)))


@dataclasses.dataclass(frozen=True)
class PerExample:
  """`f` seen one example at a time (vmap_axes set), or the whole batch as one "example".

  Attributes:
    f1: `f1(params, xi)`.
    in_axes: vmap in_axes pytree for the inputs (a fake leading axis when not per-example).
    n: number of examples of x1 and x2.
    batch_axes: per output leaf, its batch axis (None when not per-example).
    out_shapes: per output leaf, the per-example output shape of (x1, x2).
  """
  f1: Callable
  in_axes: PyTree
  n: tuple[int, int]
  batch_axes: tuple[int | None, ...]
  out_shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
  per_example: bool

  def batched_inputs(self, problem: Problem) -> tuple[PyTree, PyTree]:
    """x1, x2 with the example axis where `in_axes` says (a fake one if not per-example)."""
    x1, x2 = problem.xs
    if self.per_example:
      return x1, x2
    fake = lambda x: jax.tree_util.tree_map(lambda l: l[None], x)  # noqa: E731
    return fake(x1), fake(x2)

  def examples(self, problem: Problem) -> tuple[PyTree, PyTree]:
    """One abstract example of x1 and of x2."""
    out = []
    for x in self.batched_inputs(problem):
      axes = _tree.broadcast_prefix(self.in_axes, x)
      leaves, tree = jax.tree_util.tree_flatten(x)
      ex = []
      for a, l in zip(axes, leaves):
        shape = list(np.shape(l))
        if a is not None:
          shape.pop(a)
        ex.append(jax.ShapeDtypeStruct(tuple(shape), l.dtype))
      out.append(jax.tree_util.tree_unflatten(tree, ex))
    return out[0], out[1]


def per_example(problem: Problem) -> PerExample:
  opts = problem.opts
  x1, x2 = problem.xs
  leaves = problem.out_leaves()
  if opts.vmap_axes is None:
    return PerExample(
        problem.f, 0, (1, 1), (None,) * len(leaves),
        tuple((tuple(o1.shape), tuple(o2.shape)) for o1, o2 in leaves), False)
  f1, in_axes, out_axes = _tree.single_example_fn(problem.f, x1, problem.out_shapes, opts)
  ax = _tree.vmap_in_axes(x1, in_axes)
  n = []
  for x in (x1, x2):
    sizes = {np.shape(l)[a] for l, a in zip(jax.tree_util.tree_leaves(x), in_axes)
             if a is not None}
    n.append(sizes.pop() if sizes else 1)
  shapes = []
  for (o1, o2), a in zip(leaves, out_axes):
    s1, s2 = list(o1.shape), list(o2.shape)
    s1.pop(a), s2.pop(a)
    shapes.append((tuple(s1), tuple(s2)))
  return PerExample(f1, ax, (n[0], n[1]), tuple(out_axes), tuple(shapes), True)


def kernel_shape(shape1, shape2, roles) -> tuple[int, ...]:
  out = []
  for n1, n2, r in zip(shape1, shape2, roles):
    out += {Role.TRACE: [], Role.DIAG: [n1], Role.PAIR: [n1, n2]}[r]
  return tuple(out)
