"""Structured derivatives (and Jacobian contraction) by a memory-planned reverse sweep.

1. *Trace once*: linearize f in θ at an abstract example, flatten, find every parameter use and
   its structure (`program.py`). Residuals that depend on the example are computed per example
   (vmapped), the others once.
2. *Plan*: run the sweep's control flow on shapes (`sweep.AbstractSide`) to measure the peak of
   live cotangents and the pair terms' shapes; pick each pair term's route (contraction order)
   and, if the whole output does not fit the memory budget, the largest block of output
   directions that does (`plan`).
3. *Sweep*: for each block (pair), pull the output directions back through the linear program in
   lockstep for x1 and x2, contracting each use's pair term as soon as both cotangents exist
   (`sweep.py`). Blocks run in a `lax.scan`, so the program compiles once whatever the count.

Jacobian contraction is the same sweep with every parameter cut at itself (its Jacobian
materialized, one leaf at a time): `SweepEngine(materialize=True)`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk import memory
from ntk_zoo.ntk.cost import Estimate
from ntk_zoo.ntk.memory import BudgetError, Plan, fmt_bytes
from ntk_zoo.ntk.options import Role, kernel_subscripts, result_position, trace_size
from ntk_zoo.ntk.problem import PerExample, Problem, kernel_shape, per_example
from ntk_zoo.ntk.structured import pair as pair_lib
from ntk_zoo.ntk.structured import sweep as sweep_lib
from ntk_zoo.ntk.structured.program import (LinearProgram, Program, SiteKind,
                                            UnstructuredPrimitiveWarning, trace_program)
from ntk_zoo.ntk.typing import PyTree

__all__ = ["SweepEngine", "UnstructuredPrimitiveWarning", "kernel"]

log = logging.getLogger(__name__)

# Pair-term intermediates (e.g. a layer's weight gradients for a block of directions) may take
# up to this fraction of the budget; beyond it the route with smaller intermediates is taken.
ROUTE_FRACTION = 0.25


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


def _leaves(problem: Problem, pe: PerExample) -> tuple[Leaf, ...]:
  out = []
  for m, (o1, _) in enumerate(problem.out_leaves()):
    roles = problem.opts.roles(len(o1.shape))
    s1, s2 = pe.out_shapes[m]
    cands = [a for a in range(len(s1)) if s1[a] == s2[a] and s1[a] > 1]
    axis = max(cands, key=lambda a: (s1[a], -a)) if cands else None
    out.append(Leaf(roles, pe.batch_axes[m], (s1, s2), np.dtype(o1.dtype), axis))
  return tuple(out)


def _letters(leaf: Leaf) -> pair_lib.KernelLetters:
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
class _Blocks:
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


def _single_side(leaf: Leaf, blocks: _Blocks, symmetric: bool) -> bool:
  """Whether one sweep serves both sides (same input, same rows)."""
  return symmetric and (blocks.n == 1 or leaf.block_role() is not Role.PAIR)


def _basis(shape: tuple[int, ...], rows: tuple[int, ...], axis: int | None, offset, dtype,
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


class SweepEngine:
  """Structured derivatives (or, with `materialize`, Jacobian contraction) under a budget."""

  def __init__(self, name: str, materialize: bool = False):
    self.name = name
    self.materialize = materialize
    self._programs: dict = {}

  # -- preparation ------------------------------------------------------------------------

  def prepare(self, problem: Problem) -> Prepared:
    pe = per_example(problem)
    examples = pe.examples(problem)
    lps = [self._program(problem, pe, ex) for ex in examples]
    if _signature(examples[0]) == _signature(examples[1]):
      lps[1] = lps[0]
    else:
      _check_same_structure(lps[0].program, lps[1].program)
    return Prepared(lps[0], lps[1], pe, _leaves(problem, pe))

  def _program(self, problem: Problem, pe: PerExample, example) -> LinearProgram:
    key: tuple | None = (problem.f, _signature((problem.params, example)), problem.opts)
    try:
      lp = self._programs.get(key)
    except TypeError:  # Unhashable f: no caching.
      key, lp = None, None
    if lp is None:
      lp = trace_program(pe.f1, problem.params, example, materialize=self.materialize)
      if key is not None:
        if len(self._programs) > 16:
          self._programs.clear()
        self._programs[key] = lp
    return lp

  # -- planning ---------------------------------------------------------------------------

  def _estimate(self, prep: Prepared, problem: Problem, m: int, blocks: _Blocks,
                route_limit: int, keep: list | None = None) -> tuple[float, Estimate]:
    """(peak bytes, FLOPs/bytes) of leaf m's kernel with this (unsplit) blocking.

    `keep`, if given, receives the probe and the constants' bytes (for `_split_plans`).
    """
    program = prep.lp.program
    leaf = prep.leaves[m]
    single = _single_side(leaf, blocks, problem.symmetric)
    n_sides = 1 if single else 2
    rows = blocks.row_shapes(leaf)
    lps = (prep.lp, prep.lp2)
    sides = [sweep_lib.AbstractSide(lps[s].program, prep.pe.n[s], lps[s].batched)
             for s in range(1 if problem.symmetric else 2)]
    sweep_sides = sides[:1] if single else (sides if len(sides) == 2 else sides * 2)
    cts0 = [jax.ShapeDtypeStruct((prep.pe.n[s], math.prod(rows[s]), *leaf.shapes[s]),
                                 leaf.dtype) for s in range(n_sides)]
    spec = sweep_lib.SweepSpec(m, _letters(leaf), rows, route_limit)
    probe = sweep_lib.Probe()
    sweep_lib.sweep(program, sweep_sides, cts0, spec, probe=probe)
    itemsize = leaf.dtype.itemsize
    per_sweep = probe.cost
    peak = probe.peak_live
    for _, live, _, e, _ in probe.pairs:
      r = pair_lib.route(e, route_limit)
      factor_bytes = sum(math.prod(s) for s in e.shapes()[1:-1]) * itemsize
      peak = max(peak, live + factor_bytes + 2 * r.largest * itemsize)
      per_sweep = per_sweep + Estimate(r.flops, r.largest * itemsize)
    n_sweeps = len(blocks.pairs(leaf, problem.symmetric))
    consts = sides[0].const_bytes + (0 if problem.symmetric else sides[1].const_bytes)
    s1, s2 = (leaf.shapes[0], leaf.shapes[1])
    full = (prep.pe.n[0] * prep.pe.n[1] * math.prod(s1) * math.prod(s2)) * itemsize
    if keep is not None:
      keep += [probe, consts, 3 * full, n_sides]
    return consts + peak + 3 * full, per_sweep * n_sweeps

  def _split_plans(self, leaf: Leaf, size: int, budget: int, route_limit: int, keep: list,
                   extra: float = 0.0):
    """Candidate split plans of a leaf: (peak, estimate, blocks, parts), from the full-rows
    probe. `extra`: bytes XLA was measured to need beyond the estimate of the blocked phase."""
    probe, consts, kernel_bytes, n_sides = keep
    if leaf.block_role() is not Role.PAIR or size < 2:
      return []
    itemsize = leaf.dtype.itemsize
    pair_cost = []
    for pos, live, _, e, n1 in probe.pairs:
      r = pair_lib.route(e, route_limit)
      factor_bytes = sum(math.prod(sh) for sh in e.shapes()[1:-1]) * itemsize
      h = pair_lib.half_letters(e, n1)
      sizes = {l: n for sub, sh in zip(e.subscripts, e.shapes()) for l, n in zip(sub, sh)}
      h_elems = math.prod(sizes[l] for l in h)
      part = pair_lib.Einsum(e.operands[:n1], e.subscripts[:n1], h)
      r_half = pair_lib.route(part, None)
      rest = pair_lib.Einsum((jax.ShapeDtypeStruct(tuple(sizes[l] for l in h), leaf.dtype),
                              *e.operands[n1:]), (h, *e.subscripts[n1:]), e.out)
      r_rest = pair_lib.route(rest, route_limit)
      pair_cost.append((pos, live + factor_bytes + 2 * r.largest * itemsize, r,
                        h_elems * itemsize, r_half, r_rest))
    plans = []
    for t, f_bytes in probe.cuts:
      if t == 0 or not any(pos >= t for pos, *_ in probe.live_at):
        continue
      peak_a = max([b for pos, b in probe.live_at if pos < t]
                   + [c[1] for c in pair_cost if c[0] < t] + [0])
      per_row = max([b for pos, b in probe.live_at if pos >= t] + [0]) / (n_sides * size)
      late = [c for c in pair_cost if c[0] >= t]
      stash = sum(c[3] for c in late)
      h_row = max([c[3] for c in late] + [0]) / size
      fixed = consts + kernel_bytes + f_bytes * (2 if n_sides == 1 else 1) + stash + extra
      if consts + kernel_bytes + peak_a > budget or fixed + 3 * (per_row + h_row) > budget:
        continue
      b = int(min(size, (budget - fixed) // (per_row + 3 * h_row)))
      if b < 1:
        continue
      n, b = _split_blocks(size, b)
      # Rows padded up to n·b: XLA pads the held frontier once, a copy of it.
      pad_copy = f_bytes if n * b != size else 0
      peak_lockstep = consts + kernel_bytes + peak_a
      peak_blocks = fixed + pad_copy + b * (per_row + 3 * h_row)
      peak = max(peak_lockstep, peak_blocks)
      if peak > budget:
        continue
      est = Estimate(0.0, 0.0)
      for pos, c in probe.cost_at:
        est = est + c * (1 if pos < t or n_sides == 2 else 2)
      for pos, _, r, h_bytes, r_half, r_rest in pair_cost:
        if pos < t:
          est = est + Estimate(r.flops, r.largest * itemsize)
        else:
          est = est + Estimate(2 * r_half.flops + r_rest.flops, 2 * h_bytes)
      plans.append((peak, est, _Blocks(leaf.block_axis, b, n, t),
                    (("lockstep", peak_lockstep), ("blocks", peak_blocks))))
    return plans

  def plan(self, problem: Problem, budget: int, calibration: dict[str, float] | None = None,
           prep: Prepared | None = None) -> Plan:
    """The cheapest blocking of every output leaf that fits `budget`.

    `calibration`: per plan kind ("blocks", "split"), the factor by which XLA's measured peak
    exceeded the estimate for a plan of that kind (estimates are scaled by it), and
    "split_extra": bytes added to the estimate of a split sweep's blocked phase.
    """
    prep = prep or self.prepare(problem)
    calibration = calibration or {}
    route_limit = max(1, int(ROUTE_FRACTION * budget) // 4)
    blocks_all, total, peak_all, notes, parts = [], Estimate(0.0, 0.0), 0.0, [], ()
    for m, leaf in enumerate(prep.leaves):
      blocks, peak, est, leaf_parts = self._plan_leaf(prep, problem, m, leaf, budget,
                                                      route_limit, calibration)
      if peak >= peak_all:
        parts = leaf_parts
      blocks_all.append((-1 if blocks.axis is None else blocks.axis, blocks.size, blocks.n,
                         blocks.split))
      total = total + est
      peak_all = max(peak_all, peak)
      if blocks.split:
        notes.append(f"output {m}: sweep split at step {blocks.split}: late part in lockstep "
                     f"for all directions, early part per side in {blocks.n} blocks of "
                     f"{blocks.size}")
      elif blocks.n > 1:
        notes.append(f"output {m}: {blocks.n} blocks of {blocks.size} directions")
    kind = "split" if any(b[3] for b in blocks_all) else "blocks"
    return Plan(self.name, tuple(blocks_all), peak_all, total.flops, total.bytes, budget, kind,
                "; ".join(notes), parts=parts)

  def _plan_leaf(self, prep, problem, m, leaf: Leaf, budget: int, route_limit: int,
                 calibration: dict[str, float]):
    full_budget = budget
    budget = int(full_budget / calibration.get("blocks", 1.0))
    size = leaf.shapes[0][leaf.block_axis] if leaf.block_axis is not None else 1
    whole = _Blocks(leaf.block_axis, size, 1)
    keep: list = []
    peak, est = self._estimate(prep, problem, m, whole, route_limit, keep)
    if peak <= budget:
      return whole, peak, est, ()
    splits = self._split_plans(leaf, size, int(full_budget / calibration.get("split", 1.0)),
                               route_limit, keep, calibration.get("split_extra", 0.0))
    smallest = _Blocks(leaf.block_axis, 1, size)
    peak1, _ = self._estimate(prep, problem, m, smallest, route_limit)
    if peak1 > budget or size == 1:
      if splits:
        return _best_split(splits)
      # Estimates are scaled by the calibration (XLA's measured overshoot) for the user.
      scale = calibration.get("blocks", 1.0)
      needed = peak1 * scale
      raise BudgetError(
          f"{self.name}: no blocking of output {m} fits the memory budget of "
          f"{fmt_bytes(full_budget)}: one output direction at a time still needs about "
          f"{fmt_bytes(needed)} (the whole output: {fmt_bytes(peak * scale)}). Pass "
          f"memory_budget >= {fmt_bytes(needed)}, fewer examples per call, or another "
          "implementation.", int(math.ceil(needed)))
    # Peak is ~affine in the block size: interpolate, then shrink until it fits.
    per_row = max((peak - peak1) / max(size - 1, 1), 1.0)
    b = max(1, min(size - 1, int((budget - peak1) / per_row) + 1))
    while True:
      n = -(-size // b)
      blocks = _Blocks(leaf.block_axis, -(-size // n), n)
      p, e = self._estimate(prep, problem, m, blocks, route_limit)
      if p <= budget or blocks.size == 1:
        break
      b = max(1, int(blocks.size * 0.85))
    if splits:
      best = _best_split(splits)
      if best[2].cost < e.cost:
        return best
    return blocks, p, e, ()

  # -- computing --------------------------------------------------------------------------

  def kernel(self, problem: Problem, plan: Plan, prep: Prepared | None = None) -> PyTree:
    prep = prep or self.prepare(problem)
    xb1, xb2 = prep.pe.batched_inputs(problem)
    consts1 = prep.lp.constants(problem.params, xb1, prep.pe.in_axes)
    side1 = sweep_lib.Side(prep.lp.program, consts1, prep.lp.batched, prep.pe.n[0])
    if problem.symmetric:
      side2 = side1
    else:
      consts2 = prep.lp2.constants(problem.params, xb2, prep.pe.in_axes)
      side2 = sweep_lib.Side(prep.lp2.program, consts2, prep.lp2.batched, prep.pe.n[1])
    route_limit = max(1, int(ROUTE_FRACTION * plan.budget) // 4)
    out_leaves, out_tree = jax.tree_util.tree_flatten(problem.out_shapes)
    kernels = []
    for m, leaf in enumerate(prep.leaves):
      axis, size, n, split = plan.blocks[m]
      blocks = _Blocks(None if axis < 0 else axis, size, n, split)
      k = self._leaf_kernel(prep, problem, m, leaf, blocks, (side1, side2), route_limit)
      if k is None:
        k = jnp.zeros(self._full_shape(prep, problem, m), leaf.dtype)
      tsize = trace_size(leaf.roles, out_leaves[m].shape)
      kernels.append(k / tsize if tsize > 1 else k)
    return jax.tree_util.tree_unflatten(out_tree, kernels)

  def _full_shape(self, prep, problem, m) -> tuple[int, ...]:
    o1, o2 = problem.out_leaves()[m]
    return kernel_shape(o1.shape, o2.shape, prep.leaves[m].roles)

  def _leaf_kernel(self, prep: Prepared, problem: Problem, m: int, leaf: Leaf, blocks: _Blocks,
                   sides: Sequence[sweep_lib.Side], route_limit: int) -> jax.Array | None:
    program = prep.lp.program
    if not program.reach[m]:
      return None
    single = _single_side(leaf, blocks, problem.symmetric)
    rows = blocks.row_shapes(leaf)
    spec = sweep_lib.SweepSpec(m, _letters(leaf), rows, route_limit)
    n_ex = prep.pe.n

    def block(i, j):
      cts0 = [_basis(leaf.shapes[s], rows[s], blocks.axis, off * blocks.size, leaf.dtype,
                     n_ex[s]) for s, off in ((0, i), (1, j))]
      if single:
        return sweep_lib.sweep(program, [sides[0]], cts0[:1], spec).kernel
      return sweep_lib.sweep(program, list(sides), cts0, spec).kernel

    if blocks.split:
      return _split_kernel(program, sides, leaf, blocks, spec, problem.symmetric, n_ex,
                           self._full_shape(prep, problem, m))
    if blocks.n == 1:
      return block(0, 0)
    return _assemble(block, blocks, leaf, problem.symmetric, self._full_shape(prep, problem, m))


def _split_blocks(size: int, b_max: int) -> tuple[int, int]:
  """(n, b): n blocks of b ≤ b_max rows covering `size`, exactly (n·b = size) if a divisor
  of `size` gives at most twice the fewest blocks (padding makes XLA copy the frontier)."""
  n_min = -(-size // b_max)
  for n in range(n_min, 2 * n_min + 1):
    if size % n == 0:
      return n, size // n
  return n_min, -(-size // n_min)


# Split plans whose estimated costs are within this fraction of the cheapest count as equal:
# among them the one with the fewest (largest) blocks runs best (larger batched operations).
SPLIT_COST_TOLERANCE = 0.03


def _best_split(splits):
  """The split plan to run: near-cheapest, then fewest blocks, then lowest peak."""
  cheapest = min(c[1].cost for c in splits)
  near = [c for c in splits if c[1].cost <= cheapest * (1 + SPLIT_COST_TOLERANCE)]
  peak, est, blocks, parts = min(near, key=lambda c: (c[2].n, c[0]))
  return blocks, peak, est, parts


def _assemble(block, blocks: _Blocks, leaf: Leaf, symmetric: bool, full_shape) -> jax.Array:
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


def _split_kernel(program: Program, sides, leaf: Leaf, blocks: _Blocks,
                  spec: sweep_lib.SweepSpec, symmetric: bool, n_ex, full_shape) -> jax.Array:
  """A split sweep (see `_Blocks`): lockstep to `blocks.split`, then stash / unstash."""
  t, a, b, n = blocks.split, blocks.axis, blocks.size, blocks.n
  assert a is not None  # Only a leaf with a (PAIR) block axis is split.
  full_rows = leaf.shapes
  spec_full = dataclasses.replace(spec, row_shape=full_rows)
  cts0 = [_basis(leaf.shapes[s], full_rows[s], None, 0, leaf.dtype, n_ex[s]) for s in range(2)]
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


def _check_same_structure(p1: Program, p2: Program) -> None:
  if ([(u.leaf, u.site) for u in p1.uses] != [(u.leaf, u.site) for u in p2.uses]
      or p1.g_eqns != p2.g_eqns):
    raise ValueError(
        "Structured derivatives: f traced to differently structured programs on x1 and x2 "
        "(its operations depend on the batch size). Pass vmap_axes so that f is traced per "
        "example, or use implementation='ntk_vector_products'.")


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return (treedef, tuple((tuple(np.shape(l)), np.dtype(l.dtype).name) for l in leaves))


STRUCTURED = SweepEngine("structured_derivatives")
JACOBIAN = SweepEngine("jacobian_contraction", materialize=True)


def kernel(f, params, x1, x2, opts, out_shapes, budget: int | str | None = None) -> PyTree:
  """The NTK by structured derivatives; see `ntk_zoo.ntk_fn` for the arguments' meaning."""
  problem = Problem(f, params, x1, x2, opts, out_shapes,
                    out_shapes if x2 is None else jax.eval_shape(f, params, x2))
  prep = STRUCTURED.prepare(problem)
  plan = STRUCTURED.plan(problem, memory.resolve(budget), prep=prep)
  return STRUCTURED.kernel(problem, plan, prep)


__all__ += ["Program", "SiteKind"]
