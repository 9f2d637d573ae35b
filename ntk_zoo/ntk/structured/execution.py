"""Running a plan: each output leaf's kernel, swept block by block.

For each block (pair) of output directions, the sweep (`sweep.py`) pulls the standard basis
vectors of its rows back through the linear program in lockstep for x1 and x2 and contracts
each use's pair term. Blocks run in a `lax.scan` (`_assemble`), so the program compiles once
whatever the count; a split sweep (`_split_kernel`) runs its late part once for all rows and
its early part one side at a time in row blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk.memory import Plan
from ntk_zoo.ntk.options import Role, result_position, trace_size
from ntk_zoo.ntk.problem import Problem, kernel_shape
from ntk_zoo.ntk.structured import pair as pair_lib
from ntk_zoo.ntk.structured import sweep as sweep_lib
from ntk_zoo.ntk.structured.blocking import Blocks, Leaf, Prepared, basis, letters, single_side
from ntk_zoo.ntk.structured.planning import route_limit_of
from ntk_zoo.ntk.structured.program import Program
from ntk_zoo.ntk.structured.sides import Side
from ntk_zoo.ntk.typing import PyTree

__all__ = ["kernel"]


def kernel(prep: Prepared, problem: Problem, plan: Plan) -> PyTree:
  """The kernels of every output leaf under `plan` (a pytree shaped like f's output)."""
  xb1, xb2 = prep.pe.batched_inputs(problem)
  consts1 = prep.lp.constants(problem.params, xb1, prep.pe.in_axes)
  side1 = Side(prep.lp.program, consts1, prep.lp.batched, prep.pe.n[0])
  if problem.symmetric:
    side2 = side1
  else:
    consts2 = prep.lp2.constants(problem.params, xb2, prep.pe.in_axes)
    side2 = Side(prep.lp2.program, consts2, prep.lp2.batched, prep.pe.n[1])
  route_limit = route_limit_of(plan.budget)
  out_leaves, out_tree = jax.tree_util.tree_flatten(problem.out_shapes)
  kernels = []
  for m, leaf in enumerate(prep.leaves):
    axis, size, n, split = plan.blocks[m]
    blocks = Blocks(None if axis < 0 else axis, size, n, split)
    k = _leaf_kernel(prep, problem, m, leaf, blocks, (side1, side2), route_limit)
    if k is None:
      k = jnp.zeros(_full_shape(problem, m, leaf), leaf.dtype)
    tsize = trace_size(leaf.roles, out_leaves[m].shape)
    kernels.append(k / tsize if tsize > 1 else k)
  return jax.tree_util.tree_unflatten(out_tree, kernels)


def _full_shape(problem: Problem, m: int, leaf: Leaf) -> tuple[int, ...]:
  o1, o2 = problem.out_leaves()[m]
  return kernel_shape(o1.shape, o2.shape, leaf.roles)


def _leaf_kernel(prep: Prepared, problem: Problem, m: int, leaf: Leaf, blocks: Blocks,
                 sides: Sequence[Side], route_limit: int) -> jax.Array | None:
  program = prep.lp.program
  if not program.reach[m]:
    return None
  single = single_side(leaf, blocks, problem.symmetric)
  rows = blocks.row_shapes(leaf)
  spec = sweep_lib.SweepSpec(m, letters(leaf), rows, route_limit)
  n_ex = prep.pe.n

  def block(i, j):
    cts0 = [basis(leaf.shapes[s], rows[s], blocks.axis, off * blocks.size, leaf.dtype,
                  n_ex[s]) for s, off in ((0, i), (1, j))]
    if single:
      return sweep_lib.sweep(program, [sides[0]], cts0[:1], spec).kernel
    return sweep_lib.sweep(program, list(sides), cts0, spec).kernel

  if blocks.split:
    return _split_kernel(program, sides, leaf, blocks, spec, problem.symmetric, n_ex,
                         _full_shape(problem, m, leaf))
  if blocks.n == 1:
    return block(0, 0)
  return _assemble(block, blocks, leaf, problem.symmetric, _full_shape(problem, m, leaf))


def _assemble(block, blocks: Blocks, leaf: Leaf, symmetric: bool, full_shape) -> jax.Array:
  """Runs `block(i, j)` for every block pair in a `lax.scan` and places the results."""
  assert blocks.axis is not None  # More than one block: along the leaf's block axis.
  role = leaf.block_role()
  pos = result_position(leaf.roles, leaf.full_axis(blocks.axis))
  padded = list(full_shape)
  size = blocks.n * blocks.size
  if role is Role.PAIR:
    padded[pos] = padded[pos + 1] = size
  elif role is Role.DIAG:
    padded[pos] = size
  pairs = np.asarray(blocks.pairs(leaf, symmetric), np.int32)
  init = jnp.zeros(padded, leaf.dtype)

  def step(acc, ij):
    i, j = ij[0], ij[1]
    k = block(i, j)
    zero = jnp.zeros((), jnp.int32)
    if role is Role.TRACE:
      return acc + k, None
    starts = [zero] * len(padded)
    if role is Role.DIAG:
      starts[pos] = i * blocks.size
      return jax.lax.dynamic_update_slice(acc, k, starts), None
    starts[pos], starts[pos + 1] = i * blocks.size, j * blocks.size
    acc = jax.lax.dynamic_update_slice(acc, k, starts)
    if symmetric:  # Θ(x, x)[j-block, i-block] = Θ[i-block, j-block] with sides swapped.
      starts[pos], starts[pos + 1] = j * blocks.size, i * blocks.size
      acc = jax.lax.dynamic_update_slice(acc, _swap_sides(k, leaf.roles), starts)
    return acc, None

  acc, _ = jax.lax.scan(step, init, pairs)
  if role is Role.TRACE:
    return acc
  index = [slice(None)] * len(padded)
  index[pos] = slice(0, full_shape[pos])
  if role is Role.PAIR:
    index[pos + 1] = slice(0, full_shape[pos + 1])
  return acc[tuple(index)]


def _split_kernel(program: Program, sides, leaf: Leaf, blocks: Blocks,
                  spec: sweep_lib.SweepSpec, symmetric: bool, n_ex, full_shape) -> jax.Array:
  """A split sweep (see `Blocks`): lockstep to `blocks.split`, then stash / unstash."""
  t, a, b, n = blocks.split, blocks.axis, blocks.size, blocks.n
  assert a is not None  # Only a leaf with a (PAIR) block axis is split.
  full_rows = leaf.shapes
  spec_full = dataclasses.replace(spec, row_shape=full_rows)
  cts0 = [basis(leaf.shapes[s], full_rows[s], None, 0, leaf.dtype, n_ex[s]) for s in range(2)]
  swept = [sides[0]] if symmetric else list(sides)
  res_a = sweep_lib.sweep(program, swept, cts0[:len(swept)], spec_full, stop=t)
  f1 = res_a.env[0]
  f2 = res_a.env[0] if symmetric else res_a.env[1]
  side2 = sides[0] if symmetric else sides[1]
  size = full_rows[0][a]
  pad = n * b - size

  def block_rows(value, shape, i):
    """Rows of block i of a (B, R, *aval) cotangent (rows flattened over `shape`)."""
    v = value.reshape((value.shape[0], *shape, *value.shape[2:]))
    if pad:
      cfg = [(0, 0)] * v.ndim
      cfg[1 + a] = (0, pad)
      v = jnp.pad(v, cfg)
    v = jax.lax.dynamic_slice_in_dim(v, i * b, b, axis=1 + a)
    return v.reshape((v.shape[0], -1, *value.shape[2:]))

  block_shape = tuple(tuple(b if d == a else k for d, k in enumerate(sh)) for sh in full_rows)
  spec_stash = dataclasses.replace(spec, row_shape=(block_shape[0], block_shape[0]))
  letters_of: dict = {}

  def stash_step(_, i):
    env = {v: block_rows(x, full_rows[0], i) for v, x in f1.items()}
    res = sweep_lib.sweep(program, [sides[0]], None, spec_stash, mode=sweep_lib.Mode.STASH,
                          start=t, env0=[env])
    letters_of.update({ab: h for ab, (_, h) in res.stash.items()})
    return None, {ab: val for ab, (val, _) in res.stash.items()}

  _, h_blocks = jax.lax.scan(stash_step, None, jnp.arange(n))
  row_letter = spec.letters.rows[0][a]
  # H₁ stays stacked by block, (n, *h): reassembling it would copy the whole stash.
  stash = {ab: pair_lib.StackedHalf(val, letters_of[ab], row_letter, size)
           for ab, val in h_blocks.items()}

  spec_un = dataclasses.replace(spec, row_shape=(full_rows[0], block_shape[1]))
  pos = result_position(leaf.roles, leaf.full_axis(a)) + 1
  padded = list(full_shape)
  padded[pos] = n * b
  init = jnp.zeros(padded, leaf.dtype)

  def unstash_step(acc, j):
    env = {v: block_rows(x, full_rows[1], j) for v, x in f2.items()}
    res = sweep_lib.sweep(program, [sides[0], side2], None, spec_un,
                          mode=sweep_lib.Mode.UNSTASH, start=t, env0=[env], stash=stash)
    if res.kernel is None:
      return acc, None
    return jax.lax.dynamic_update_slice_in_dim(acc, res.kernel, j * b, axis=pos), None

  acc, _ = jax.lax.scan(unstash_step, init, jnp.arange(n))
  k_b = jax.lax.slice_in_dim(acc, 0, full_shape[pos], axis=pos)
  return k_b if res_a.kernel is None else res_a.kernel + k_b


def _swap_sides(k: jax.Array, roles: Sequence[Role]) -> jax.Array:
  """The kernel with x1's and x2's axes exchanged (each PAIR axis pair swapped)."""
  perm, p = [], 0
  for r in roles:
    if r is Role.PAIR:
      perm += [p + 1, p]
    elif r is Role.DIAG:
      perm.append(p)
    p += r.width
  return jnp.transpose(k, perm)
