"""Output leaves as the sweep sees them, and the blocking of their output directions.

A `Leaf` describes one output leaf (the roles of its axes, its per-example shapes, the axis
that may be blocked); `Blocks` cuts that axis into blocks of rows (output directions), and may
split the sweep (see `Blocks`); `basis` builds the cotangents a block's sweep starts from;
`letters` names the einsum axes of the leaf's kernel block. `Prepared` bundles the traced
programs with the leaves: what `engine.SweepEngine.prepare` returns, and what the planner
(`planning.py`) and the kernel (`execution.py`) both work from.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk.options import Role, kernel_subscripts
from ntk_zoo.ntk.problem import PerExample, Problem
from ntk_zoo.ntk.structured import pair as pair_lib
from ntk_zoo.ntk.structured.program import LinearProgram

__all__ = ["Blocks", "Leaf", "Prepared", "basis", "leaves", "letters", "single_side"]


@dataclasses.dataclass(frozen=True)
class Leaf:
  """Output leaf m as the sweep sees it."""
  roles: tuple[Role, ...]  # Roles of all axes of the output leaf.
  batch_axis: int | None  # Its batch axis (per-example mode), else None.
  shapes: tuple[tuple[int, ...], tuple[int, ...]]  # Per-example output shape, x1 and x2.
  dtype: np.dtype
  block_axis: int | None  # Per-example axis that may be blocked (equal size on both sides).

  def full_axis(self, a: int) -> int:
    return a if self.batch_axis is None or a < self.batch_axis else a + 1

  def block_role(self) -> Role | None:
    return None if self.block_axis is None else self.roles[self.full_axis(self.block_axis)]


@dataclasses.dataclass(frozen=True)
class Prepared:
  """The traced programs (x1's and x2's: the same one when per-example) and the leaves."""
  lp: LinearProgram
  lp2: LinearProgram
  pe: PerExample
  leaves: tuple[Leaf, ...]


def leaves(problem: Problem, pe: PerExample) -> tuple[Leaf, ...]:
  """The output leaves of `problem`, each with the largest axis both sides share as its
  block axis."""
  out = []
  for m, (o1, _) in enumerate(problem.out_leaves()):
    roles = problem.opts.roles(len(o1.shape))
    s1, s2 = pe.out_shapes[m]
    cands = [a for a in range(len(s1)) if s1[a] == s2[a] and s1[a] > 1]
    axis = max(cands, key=lambda a: (s1[a], -a)) if cands else None
    out.append(Leaf(roles, pe.batch_axes[m], (s1, s2), np.dtype(o1.dtype), axis))
  return tuple(out)


def letters(leaf: Leaf) -> pair_lib.KernelLetters:
  """The einsum letters of the leaf's kernel block: examples, rows per side, and output."""
  n = len(leaf.roles)
  s1, s2, out = kernel_subscripts(leaf.roles, list(range(n)), list(range(n, 2 * n)))
  if leaf.batch_axis is None:  # Not per-example: a size-1 example axis, summed away.
    return pair_lib.KernelLetters((2 * n, 2 * n + 1), (tuple(s1), tuple(s2)), tuple(out),
                                  2 * n + 2)
  ba = leaf.batch_axis
  rows1 = tuple(l for i, l in enumerate(s1) if i != ba)
  rows2 = tuple(l for i, l in enumerate(s2) if i != ba)
  return pair_lib.KernelLetters((s1[ba], s2[ba]), (rows1, rows2), tuple(out), 2 * n)


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Blocking of one leaf: `n` blocks of `size` rows along per-example axis `axis`.

  With `split` > 0, the sweep is split at that position: the late part runs in lockstep for
  all rows, the early part one side at a time in the `n` row blocks (side 1's halves of the
  pair terms stashed, then contracted with side 2's), so nothing is recomputed.
  """
  axis: int | None
  size: int
  n: int
  split: int = 0

  def row_shapes(self, leaf: Leaf) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if self.axis is None:
      return leaf.shapes

    def cut(s: tuple[int, ...]) -> tuple[int, ...]:
      return tuple(self.size if d == self.axis else n for d, n in enumerate(s))

    return cut(leaf.shapes[0]), cut(leaf.shapes[1])

  def pairs(self, leaf: Leaf, symmetric: bool) -> list[tuple[int, int]]:
    if self.n == 1:
      return [(0, 0)]
    if leaf.block_role() is Role.PAIR:
      return [(i, j) for i in range(self.n) for j in range(self.n) if not symmetric or i <= j]
    return [(i, i) for i in range(self.n)]


def single_side(leaf: Leaf, blocks: Blocks, symmetric: bool) -> bool:
  """Whether one sweep serves both sides (same input, same rows)."""
  return symmetric and (blocks.n == 1 or leaf.block_role() is not Role.PAIR)


def basis(shape: tuple[int, ...], rows: tuple[int, ...], axis: int | None, offset, dtype,
          n: int) -> jax.Array:
  """(n, R, *shape): the standard basis vectors e_r for the rows of one block, per example."""
  e = None
  for d, (size, r) in enumerate(zip(shape, rows)):
    off = offset if d == axis else 0
    eye = (jnp.arange(r)[:, None] + off == jnp.arange(size)[None, :]).astype(dtype)
    shp = [1] * (2 * len(shape))
    shp[d], shp[len(shape) + d] = r, size
    eye = eye.reshape(shp)
    e = eye if e is None else e * eye
  if e is None:
    e = jnp.ones((), dtype)
  e = e.reshape((math.prod(rows), *shape))
  return jnp.broadcast_to(e, (n, *e.shape))
