"""Planning the sweep on shapes: each output leaf's blocking under the memory budget.

The sweep's control flow runs on `sides.AbstractSide`s with a `sweep.Probe`, which records the
peak of live cotangents, the pair terms' shapes and the points where the sweep could be split,
without tracing or running anything heavy. From that, `plan` picks for every output leaf the
cheapest blocking that fits the budget: the whole output at once, uniform blocks of output
directions, or a split sweep (`blocking.Blocks`); each pair term's route (contraction order)
is capped to `ROUTE_FRACTION` of the budget.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from ntk_zoo.ntk.cost import Estimate
from ntk_zoo.ntk.memory import BudgetError, Plan, fmt_bytes
from ntk_zoo.ntk.options import Role
from ntk_zoo.ntk.problem import Problem
from ntk_zoo.ntk.structured import pair as pair_lib
from ntk_zoo.ntk.structured import sweep as sweep_lib
from ntk_zoo.ntk.structured.blocking import Blocks, Leaf, Prepared, letters, single_side
from ntk_zoo.ntk.structured.sides import AbstractSide

__all__ = ["ROUTE_FRACTION", "LeafEstimate", "plan", "route_limit_of"]

# Pair-term intermediates (e.g. a layer's weight gradients for a block of directions) may take
# up to this fraction of the budget; beyond it the route with smaller intermediates is taken.
ROUTE_FRACTION = 0.25

# Split plans whose estimated costs are within this fraction of the cheapest count as equal:
# among them the one with the fewest (largest) blocks runs best (larger batched operations).
SPLIT_COST_TOLERANCE = 0.03


def route_limit_of(budget: int) -> int:
  """The cap (elements) on any pair term's intermediates under `budget` bytes."""
  return max(1, int(ROUTE_FRACTION * budget) // 4)


@dataclasses.dataclass(frozen=True)
class LeafEstimate:
  """One output leaf swept with one (unsplit) blocking, as measured on shapes.

  Attributes:
    peak: estimated peak bytes.
    cost: FLOPs and bytes written by all the leaf's sweeps.
    probe: what the sweep of one block holds (live cotangents, cut points, pair terms).
    const_bytes: bytes of the programs' constants (both sides).
    kernel_bytes: bytes of three copies of the leaf's full kernel.
    n_sides: the number of sides swept (1 when one sweep serves both).
  """
  peak: float
  cost: Estimate
  probe: sweep_lib.Probe
  const_bytes: int
  kernel_bytes: int
  n_sides: int


def _estimate(prep: Prepared, problem: Problem, m: int, blocks: Blocks,
              route_limit: int) -> LeafEstimate:
  """Peak bytes and FLOPs/bytes of leaf m's kernel with this (unsplit) blocking."""
  program = prep.lp.program
  leaf = prep.leaves[m]
  single = single_side(leaf, blocks, problem.symmetric)
  n_sides = 1 if single else 2
  rows = blocks.row_shapes(leaf)
  lps = (prep.lp, prep.lp2)
  sides = [AbstractSide(lps[s].program, prep.pe.n[s], lps[s].batched)
           for s in range(1 if problem.symmetric else 2)]
  sweep_sides = sides[:1] if single else (sides if len(sides) == 2 else sides * 2)
  cts0 = [jax.ShapeDtypeStruct((prep.pe.n[s], math.prod(rows[s]), *leaf.shapes[s]),
                               leaf.dtype) for s in range(n_sides)]
  spec = sweep_lib.SweepSpec(m, letters(leaf), rows, route_limit)
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
  return LeafEstimate(consts + peak + 3 * full, per_sweep * n_sweeps, probe, consts, 3 * full,
                      n_sides)


def _split_plans(leaf: Leaf, size: int, budget: int, route_limit: int, whole: LeafEstimate,
                 extra: float = 0.0):
  """Candidate split plans of a leaf: (peak, estimate, blocks, parts), from the full-rows
  estimate `whole`. `extra`: bytes XLA was measured to need beyond the estimate of the
  blocked phase."""
  probe, consts, kernel_bytes, n_sides = (whole.probe, whole.const_bytes, whole.kernel_bytes,
                                          whole.n_sides)
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
    plans.append((peak, est, Blocks(leaf.block_axis, b, n, t),
                  (("lockstep", peak_lockstep), ("blocks", peak_blocks))))
  return plans


def plan(name: str, prep: Prepared, problem: Problem, budget: int,
         calibration: dict[str, float] | None = None) -> Plan:
  """The cheapest blocking of every output leaf that fits `budget`, as engine `name`'s plan.

  `calibration`: per plan kind ("blocks", "split"), the factor by which XLA's measured peak
  exceeded the estimate for a plan of that kind (estimates are scaled by it), and
  "split_extra": bytes added to the estimate of a split sweep's blocked phase.
  """
  calibration = calibration or {}
  route_limit = route_limit_of(budget)
  blocks_all, total, peak_all, notes, parts = [], Estimate(0.0, 0.0), 0.0, [], ()
  for m, leaf in enumerate(prep.leaves):
    blocks, peak, est, leaf_parts = _plan_leaf(name, prep, problem, m, leaf, budget,
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
  return Plan(name, tuple(blocks_all), peak_all, total.flops, total.bytes, budget, kind,
              "; ".join(notes), parts=parts)


def _plan_leaf(name: str, prep: Prepared, problem: Problem, m: int, leaf: Leaf, budget: int,
               route_limit: int, calibration: dict[str, float]):
  full_budget = budget
  budget = int(full_budget / calibration.get("blocks", 1.0))
  size = leaf.shapes[0][leaf.block_axis] if leaf.block_axis is not None else 1
  whole = Blocks(leaf.block_axis, size, 1)
  whole_est = _estimate(prep, problem, m, whole, route_limit)
  peak, est = whole_est.peak, whole_est.cost
  if peak <= budget:
    return whole, peak, est, ()
  splits = _split_plans(leaf, size, int(full_budget / calibration.get("split", 1.0)),
                        route_limit, whole_est, calibration.get("split_extra", 0.0))
  smallest = Blocks(leaf.block_axis, 1, size)
  peak1 = _estimate(prep, problem, m, smallest, route_limit).peak
  if peak1 > budget or size == 1:
    if splits:
      return _best_split(splits)
    # Estimates are scaled by the calibration (XLA's measured overshoot) for the user.
    scale = calibration.get("blocks", 1.0)
    needed = peak1 * scale
    raise BudgetError(
        f"{name}: no blocking of output {m} fits the memory budget of "
        f"{fmt_bytes(full_budget)}: one output direction at a time still needs about "
        f"{fmt_bytes(needed)} (the whole output: {fmt_bytes(peak * scale)}). Pass "
        f"memory_budget >= {fmt_bytes(needed)}, fewer examples per call, or another "
        "implementation.", int(math.ceil(needed)))
  # Peak is ~affine in the block size: interpolate, then shrink until it fits.
  per_row = max((peak - peak1) / max(size - 1, 1), 1.0)
  b = max(1, min(size - 1, int((budget - peak1) / per_row) + 1))
  while True:
    n = -(-size // b)
    blocks = Blocks(leaf.block_axis, -(-size // n), n)
    estimate = _estimate(prep, problem, m, blocks, route_limit)
    p, e = estimate.peak, estimate.cost
    if p <= budget or blocks.size == 1:
      break
    b = max(1, int(blocks.size * 0.85))
  if splits:
    best = _best_split(splits)
    if best[2].cost < e.cost:
      return best
  return blocks, p, e, ()


def _split_blocks(size: int, b_max: int) -> tuple[int, int]:
  """(n, b): n blocks of b ≤ b_max rows covering `size`, exactly (n·b = size) if a divisor
  of `size` gives at most twice the fewest blocks (padding makes XLA copy the frontier)."""
  n_min = -(-size // b_max)
  for n in range(n_min, 2 * n_min + 1):
    if size % n == 0:
      return n, size // n
  return n_min, -(-size // n_min)


def _best_split(splits):
  """The split plan to run: near-cheapest, then fewest blocks, then lowest peak."""
  cheapest = min(c[1].cost for c in splits)
  near = [c for c in splits if c[1].cost <= cheapest * (1 + SPLIT_COST_TOLERANCE)]
  peak, est, blocks, parts = min(near, key=lambda c: (c[2].n, c[0]))
  return blocks, peak, est, parts
