"""The reverse sweep: transpose g one equation at a time, contract each use as soon as it can.

For one output leaf and one block of its output directions ("rows"), the cotangents of both
inputs are pulled back through the linear program g in reverse order *in lockstep*. When a
use's cotangent is complete on both sides, its pair term is contracted into the kernel block
and the cotangent is dropped, so at any time only the cotangents alive at one point of the
backward sweep are held: memory ∝ rows × (frontier), not rows × (all uses). Uses of a shared
weight are held until the group's last use, then all their pairs are contracted.

An `optimization_barrier` after each contraction keeps XLA from hoisting later parts of the
sweep above it (which would keep more cotangents alive than the plan counted on).

When both sides are the same input (x2 is None and the same rows), one side is swept and
paired with itself.

Each side evaluates its factors and transposes its equations through a `sides.Side`. The same
control flow runs on shapes (`sides.AbstractSide`, with a `Probe`): the planner uses it to
measure the frontier and the pair terms' shapes without tracing or running anything heavy.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.cost import ZERO, eqn_cost
from ntk_zoo.ntk.structured import pair as pair_lib
from ntk_zoo.ntk.structured.program import PairStatus, Program, Site, SiteKind, pair_status
from ntk_zoo.ntk.structured.sides import SDS, Array, nbytes

__all__ = ["Mode", "Probe", "SweepResult", "SweepSpec", "sweep"]


def _materialize(state, pred):
  """`state`, with XLA forced to materialize it here.

  An `optimization_barrier` alone does not do it on CPU: XLA expands barriers before fusion,
  then fuses long elementwise chains of cotangents (residual skip paths) across many blocks,
  duplicating them into several consumers and keeping every branch's cotangent alive until
  the last one (5× the planned memory on ResNet-50). A conditional is never fused or
  duplicated, so passing the state through an identity `cond` on a predicate XLA cannot fold
  pins the frontier to memory at this point of the sweep.
  """
  state = jax.lax.optimization_barrier(state)
  if pred is None:
    return state
  # Identity branches would be forwarded away by JAX, and XLA copies a parameter returned by a
  # branch: the taken branch adds a runtime zero, the other returns zeros.
  zero = jnp.where(pred, 0, jnp.nan)

  def taken(s, z):
    return jax.tree_util.tree_map(lambda a: a + z.astype(a.dtype), s)

  return jax.lax.cond(pred, taken,
                      lambda s, z: jax.tree_util.tree_map(jnp.zeros_like, s), state, zero)


def _add(a, b):
  return a if isinstance(a, SDS) else a + b


class Probe:
  """Records what a sweep on `AbstractSide`s holds: live cotangent bytes and pair terms.

  Attributes:
    peak_live: the most cotangent bytes alive at any point (both sides).
    pairs: per pair term: (position, bytes of cotangents alive while it is contracted, the
      pair of uses, its einsum, the number of its operands that belong to side 1).
    cuts: positions where the sweep holds no use's cotangent (it can be split there), with
      the bytes of cotangents alive there.
    cost: FLOPs and bytes written by the transposed equations (pair terms not included).
  """

  def __init__(self) -> None:
    self.peak_live = 0
    self.pairs: list[tuple[int, int, tuple[int, int], pair_lib.Einsum, int]] = []
    self.cost = ZERO
    self.live_at: list[tuple[int, int]] = []  # (position, live bytes) per transposed eqn
    self.cost_at: list[tuple[int, Any]] = []  # (position, cost) per transposed eqn and side
    self.cuts: list[tuple[int, int]] = []  # (position, live bytes) where no use is held

  def live(self, nbytes: int, pos: int = 0) -> None:
    self.peak_live = max(self.peak_live, nbytes)
    self.live_at.append((pos, nbytes))

  def step(self, pos: int, cost) -> None:
    self.cost = self.cost + cost
    self.cost_at.append((pos, cost))


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """What one sweep computes: output leaf `m`'s kernel block for given row blocks.

  Attributes:
    m: output leaf.
    letters: einsum letters of the kernel block.
    row_shape: per side, the shape of its row block (the per-example output shape with the
      blocked axis cut to the block size).
    memory_limit: cap (elements) on any pair term's intermediates, for the route choice.
    barrier: whether to put an optimization barrier after each contraction.
  """
  m: int
  letters: pair_lib.KernelLetters
  row_shape: tuple[tuple[int, ...], tuple[int, ...]]
  memory_limit: int | None = None
  barrier: bool = True


def _side_values(program: Program, side, u: int, ct, row_shape) -> pair_lib.SideValues:
  use = program.uses[u]
  shape = (ct.shape[0], *row_shape, *ct.shape[2:])
  ct = SDS(shape, ct.dtype) if isinstance(ct, SDS) else ct.reshape(shape)
  factors = tuple(side.value(f.value) for f in use.structure.factors)
  key = side.value(use.structure.pair.key) if use.structure.pair is not None else None
  return pair_lib.SideValues(ct, factors, key)


def _pair_einsums(program: Program, sides: Sequence, group: Sequence[int], cts: dict,
                  spec: SweepSpec) -> list[tuple[tuple[int, int], pair_lib.Einsum]]:
  """The einsums of every pair (a at x1, b at x2) of a completed group of uses."""
  values: list[dict] = [{}, {}]
  out = []
  for a in group:
    for b in group:
      if pair_status(program.uses[a], program.uses[b]) is not PairStatus.OK:
        continue
      if cts[a][0] is None or cts[b][1] is None:
        continue
      for s, u in ((0, a), (1, b)):
        if u not in values[s]:
          values[s][u] = _side_values(sides[s].program, sides[s], u, cts[u][s],
                                      spec.row_shape[s])
      out.append(((a, b), pair_lib.build(sides[0].program.uses[a], sides[1].program.uses[b],
                                         values[0][a], values[1][b], spec.letters)))
  return out


class Mode(enum.Enum):
  """What a sweep does when a group of uses completes."""
  PAIR = "pair"  # Both sides swept in lockstep; contract each pair term.
  STASH = "stash"  # Side 1 alone: keep its half of each pair term, H₁ = ct₁ · factors₁.
  UNSTASH = "unstash"  # Side 2 alone: contract its half with the stashed H₁.


@dataclasses.dataclass
class SweepResult:
  """kernel: the accumulated kernel block (or None); env: per swept side, the cotangents
  alive where the sweep stopped; stash: per pair of uses, H₁ and its letters (STASH mode)."""
  kernel: Array | None
  env: list[dict]
  stash: dict


@dataclasses.dataclass(frozen=True)
class _Flow:
  """Where cotangents flow through g for one output (fixed by the program, not the values).

  Attributes:
    lin_vars: the variables that carry a cotangent: outputs of g's equations, and the tangents
      of leaves cut at themselves (`INVAR` uses).
    invar_of_use: per `INVAR` use reaching the output, its leaf's tangent variable.
    last_consumer: per such use read by g, the first equation of g reading it (the last the
      reverse sweep transposes: the use's cotangent is complete after it).
    completes_after: per equation, the `INVAR` uses whose cotangent it completes.
  """
  lin_vars: set
  invar_of_use: dict[int, Any]
  last_consumer: dict[int, int]
  completes_after: dict[int, list[int]]


def _flow(program: Program, reach: frozenset[int]) -> _Flow:
  """The `_Flow` of the output whose uses are `reach`."""
  jaxpr = program.jaxpr
  lin_vars = {v for k in program.g_eqns for v in jaxpr.eqns[k].outvars}
  invar_of_use: dict[int, Any] = {}
  for u in reach:
    if program.uses[u].site.kind is SiteKind.INVAR:
      var = jaxpr.invars[program.n_consts + program.uses[u].leaf]
      lin_vars.add(var)
      invar_of_use[u] = var
  last_consumer: dict[int, int] = {}
  if invar_of_use:
    consumer = {var: u for u, var in invar_of_use.items()}
    for k in program.g_eqns:
      for v in jaxpr.eqns[k].invars:
        if not C.is_literal(v) and v in consumer:
          u = consumer[v]
          last_consumer[u] = min(last_consumer.get(u, k), k)
  completes_after: dict[int, list[int]] = {}
  for u, k in last_consumer.items():
    completes_after.setdefault(k, []).append(u)
  return _Flow(lin_vars, invar_of_use, last_consumer, completes_after)


def sweep(program: Program, sides: Sequence, cts0: Sequence | None, spec: SweepSpec,
          probe: Probe | None = None, *, mode: Mode = Mode.PAIR, start: int = 0,
          stop: int | None = None, env0: Sequence[dict] | None = None,
          stash: dict | None = None) -> SweepResult:
  """Output `spec.m`'s kernel block for the row blocks whose cotangents are `cts0`.

  The sweep visits the equations of g in reverse order (`order = reversed(g_eqns)`); it can
  run a part of them, `order[start:stop]`, starting from the cotangents `env0` another sweep
  stopped with. That is how a sweep is split: the late part in lockstep for all rows, the
  early part (wide activations, few parameters) one side at a time in row blocks, stashing
  side 1's halves of the pair terms.

  Args:
    program: the analyzed program (its structure drives the sweep; each side transposes and
      reads factors from its own program, which has the same structure, and may differ in
      shapes when the whole batch is one "example").
    sides: PAIR: `[side1, side2]`, or `[side]` when both inputs are the same (self-pairs).
      STASH: `[side1]`. UNSTASH: `[side1, side2]`, only side 2 is swept (side 1 gives the
      letters). `Side`s, or `AbstractSide`s with a `probe` (planning).
    cts0: per swept side, the cotangent of output m, (B, R, *out_shape), when start == 0.
    spec: the block's letters, row shapes and route memory cap.
    probe: records live bytes, cut points and pair terms instead of contracting.
    mode: see `Mode`.
    start, stop: the part of the sweep to run.
    env0: per swept side, the cotangents to start from (when start > 0).
    stash: UNSTASH: the STASH sweep's `stash` (H₁ for all rows of side 1).

  Returns:
    A `SweepResult`.
  """
  jaxpr = program.jaxpr
  m = spec.m
  swept = [sides[1]] if mode is Mode.UNSTASH else list(sides)
  n_sides = len(swept)
  pair_sides = list(sides) if len(sides) == 2 else [sides[0], sides[0]]
  reach = program.reach[m]
  groups = program.groups(m)
  group_of = {u: g for g, members in enumerate(groups) for u in members}
  remaining = [set(g) for g in groups]
  done: dict[int, list] = {}
  env: list[dict] = [dict(e) for e in env0] if env0 is not None else [{} for _ in swept]
  acc = None  # The kernel block accumulated so far.
  new_stash: dict = {}
  order = list(reversed(program.g_eqns))
  stop = len(order) if stop is None else stop
  flow = _flow(program, reach)

  def live_bytes(extra=()) -> int:
    vals = [v for e in env for v in e.values()]
    vals += [c for cts in done.values() for c in cts[:n_sides] if c is not None]
    return sum(nbytes(v) for v in (*vals, *extra))

  pinned: dict[int, Any] = {}  # id -> value already passed through a barrier.

  def barrier():
    """Pins the values created since the last barrier: those pinned before are buffers
    already (a cond's outputs), and passing them again would copy them at every barrier."""
    nonlocal acc
    if not spec.barrier or probe is not None:
      return
    slots = [(e, k) for e in env for k in e]  # (container, key) of each cotangent.
    for cts in done.values():
      slots += [(cts, i) for i, c in enumerate(cts) if c is not None]
    values = ([] if acc is None else [acc]) + [box[k] for box, k in slots]
    fresh = {id(v): v for v in values if id(v) not in pinned}
    if not fresh:
      return
    pinned_now = dict(zip(fresh, _materialize(list(fresh.values()), gate)))
    if acc is not None:
      acc = pinned_now.get(id(acc), acc)
    for box, k in slots:
      box[k] = pinned_now.get(id(box[k]), box[k])
    pinned.update((id(v), v) for v in pinned_now.values())

  def complete(u: int, cts: list):
    nonlocal acc
    if mode is Mode.UNSTASH:
      rows1 = math.prod(spec.row_shape[0])
      aval = program.cut_aval(program.uses[u])
      cts = [SDS((pair_sides[0].n_examples, rows1, *aval.shape), aval.dtype), cts[0]]
    elif n_sides == 1:
      cts = [cts[0], cts[0]]
    done[u] = cts
    g = group_of[u]
    remaining[g].discard(u)
    if remaining[g]:
      return
    for ab, e in _pair_einsums(program, pair_sides, groups[g], done, spec):
      n1 = 1 + len(program.uses[ab[0]].structure.factors)
      if probe is not None:
        probe.pairs.append((probe_pos, live_bytes(), ab, e, n1))
        continue
      if mode is Mode.STASH:
        new_stash[ab] = pair_lib.half(e, n1)
        continue
      finish = None
      if mode is Mode.UNSTASH:
        assert stash is not None, "an UNSTASH sweep needs the STASH sweep's stash"
        e, finish = pair_lib.with_half(e, n1, stash[ab])
      term = pair_lib.contract(e, pair_lib.route(e, spec.memory_limit))
      if finish is not None:
        term = finish(term)
      acc = term if acc is None else acc + term
    for member in groups[g]:
      done.pop(member, None)
    barrier()

  def add_ct(s: int, v, c):
    env[s][v] = c if v not in env[s] else _add(env[s][v], c)

  # A runtime-true predicate for `_materialize` (XLA cannot fold it away).
  gate = None if probe is not None else pair_sides[0].gate()
  probe_pos = 0  # The position the sweep is at, for the probe's pair records.

  if start == 0:
    assert cts0 is not None, "a sweep from the start needs cts0"
    out_var = jaxpr.outvars[m]
    out_site = program.cut_at.get(Site(SiteKind.OUTPUT, m))
    if out_site is not None and out_site in reach:
      complete(out_site, list(cts0))
    elif not C.is_literal(out_var) and out_var in flow.lin_vars:
      for s in range(n_sides):
        add_ct(s, out_var, cts0[s])
    for u, var in flow.invar_of_use.items():
      if u not in flow.last_consumer:
        complete(u, [env[s].pop(var, None) for s in range(n_sides)])

  for t in range(start, stop):
    if probe is not None:
      probe_pos = t
      if not done:
        probe.cuts.append((t, live_bytes()))
    k = order[t]
    eqn = jaxpr.eqns[k]
    site = Site(SiteKind.EQN, k)
    if site in program.cut_at:
      u = program.cut_at[site]
      cts = [env[s].pop(eqn.outvars[0], None) for s in range(n_sides)]
      if u in reach:
        complete(u, cts)
      continue
    outs = [[None if isinstance(v, C.DropVar) else env[s].pop(v, None) for v in eqn.outvars]
            for s in range(n_sides)]
    if all(c is None for c in outs[0]):
      continue
    lin_pos = [i for i, v in enumerate(eqn.invars)
               if not C.is_literal(v) and (v in flow.lin_vars or Site(SiteKind.OPERAND, k, i)
                                           in program.cut_at)]
    new = [swept[s].transpose(swept[s].program.jaxpr.eqns[k], lin_pos, outs[s])
           for s in range(n_sides)]
    if probe is not None:
      for s in range(n_sides):
        lead = next(c for c in outs[s] if c is not None).shape[:2]
        probe.step(t, eqn_cost(eqn) * math.prod(lead))
      probe.live(live_bytes([c for s in range(n_sides) for c in (*outs[s], *new[s])
                             if c is not None]), t)
    operand_uses = []
    for j, i in enumerate(lin_pos):
      op_site = Site(SiteKind.OPERAND, k, i)
      if op_site in program.cut_at:
        operand_uses.append((program.cut_at[op_site], [new[s][j] for s in range(n_sides)]))
      else:
        for s in range(n_sides):
          add_ct(s, eqn.invars[i], new[s][j])
    for u, cts in operand_uses:
      if u in reach:
        complete(u, cts)
    for u in flow.completes_after.get(k, ()):
      complete(u, [env[s].pop(flow.invar_of_use[u], None) for s in range(n_sides)])
  if probe is not None and not done:
    probe.cuts.append((stop, live_bytes()))
  return SweepResult(acc, env, new_stash)
