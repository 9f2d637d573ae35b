"""One input batch as the sweep sees it: the program's constants, and its transposed equations.

A `Side` holds the values of the linear program's constants for the examples of one input
(batched on a leading example axis where they depend on the example, shared otherwise),
evaluates the factors and keys of structure rules on them, and transposes one equation of g
for every example and row (`Side.transpose`, through the overrides of `rewrites.TRANSPOSES`).
An `AbstractSide` does the same on shapes, for the planner: what a sweep would hold, without
computing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.program import Program
from ntk_zoo.ntk.structured.rewrites import TRANSPOSES, conv_rhs_transpose_ok

__all__ = ["AbstractSide", "Side", "nbytes"]

Array = Any
SDS = jax.ShapeDtypeStruct


def _bind(eqn, invals):
  outs = eqn.primitive.bind(*invals, **eqn.params)
  return outs if eqn.primitive.multiple_results else [outs]


def _vmap_flags(fn: Callable, args: Sequence, batched: Sequence[bool]):
  """fn(*args), vmapped over axis 0 of the batched args (if any). Returns (out, batched)."""
  if not any(batched):
    return fn(*args), False
  return jax.vmap(fn, in_axes=[0 if b else None for b in batched])(*args), True


def _probe_reads(fn: Callable[[Callable], Array]) -> tuple[list, Any]:
  """The variables `fn(read)` reads, and the shape of its result (per example)."""
  seen: list = []

  def probe(v):
    if C.is_literal(v):
      return v.val
    seen.append(v)
    return jnp.zeros(v.aval.shape, v.aval.dtype)

  shape = jax.eval_shape(lambda: fn(probe))
  return list(dict.fromkeys(seen)), shape


class Side:
  """One input batch: the program's constants for its examples (batched on axis 0, or shared).

  Args:
    program: the analyzed program.
    consts: values of the constant invars; batched ones have a leading example axis.
    batched: per constant invar, whether it is batched.
    n_examples: the number of examples.
  """

  def __init__(self, program: Program, consts: Sequence[Array], batched: Sequence[bool],
               n_examples: int):
    self.program = program
    self.n_examples = n_examples
    jaxpr = program.jaxpr
    env: dict = {}
    for v, c in zip(jaxpr.constvars, program.consts):
      env[v] = (c, False)
    for v, c, b in zip(jaxpr.invars[:program.n_consts], consts, batched):
      env[v] = (c, b)
    self.env = env
    for k in program.const_eqns:
      eqn = jaxpr.eqns[k]
      vals, flags = zip(*[self.read(v) for v in eqn.invars]) if eqn.invars else ((), ())
      outs, b = _vmap_flags(lambda *a, eqn=eqn: _bind(eqn, a), vals, flags)
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, C.DropVar):
          env[v] = (o, b)

  def gate(self) -> Array | None:
    """A scalar predicate that is true at run time but depends on the inputs."""
    for v in self.program.jaxpr.invars[:self.program.n_consts]:
      val = self.env[v][0]
      if isinstance(val, jax.Array) and val.size and jnp.issubdtype(val.dtype, jnp.inexact):
        return jnp.logical_not(jnp.isnan(jnp.ravel(val)[0]))
    return None

  def read(self, v) -> tuple[Array, bool]:
    if C.is_literal(v):
      return v.val, False
    return self.env[v]

  def value(self, fn: Callable[[Callable], Array]) -> tuple[Array, bool]:
    """`fn(read)` (a factor or key of a structure rule) per example: (value, batched)."""
    reads, _ = _probe_reads(fn)
    bvars = [v for v in reads if self.env[v][1]]

    def run(*bvals):
      m = dict(zip(bvars, bvals))
      return fn(lambda v: v.val if C.is_literal(v) else (m[v] if v in m else self.env[v][0]))

    return _vmap_flags(run, [self.env[v][0] for v in bvars], [True] * len(bvars))

  def transpose(self, eqn, lin_pos: Sequence[int], cts: Sequence[Array | None]) -> list[Array]:
    """Cotangents of the linear operands `lin_pos` of `eqn`, for every example and row.

    `cts`: per output of eqn, its cotangent (B, R, *aval), or None (zero).
    """
    lin_set = set(lin_pos)
    const_pos = [i for i in range(len(eqn.invars)) if i not in lin_set]
    const_vals, const_b = [], []
    for i in const_pos:
      val, b = self.read(eqn.invars[i])
      const_vals.append(val)
      const_b.append(b)
    lin_avals = [SDS(eqn.invars[i].aval.shape, eqn.invars[i].aval.dtype) for i in lin_pos]
    out_avals = [v.aval for v in eqn.outvars]
    present = [i for i, c in enumerate(cts) if c is not None]

    def one(consts, cts_present):  # One example, one row.
      def fwd(*lin):
        invals = [None] * len(eqn.invars)
        for i, val in zip(lin_pos, lin):
          invals[i] = val
        for i, val in zip(const_pos, consts):
          invals[i] = val
        return _bind(eqn, invals)

      full = [jnp.zeros(a.shape, a.dtype) for a in out_avals]
      for i, c in zip(present, cts_present):
        full[i] = c
      rule = TRANSPOSES.get(eqn.primitive)
      if rule is not None and len(full) == 1:
        invals = [None] * len(eqn.invars)
        for i, val in zip(const_pos, consts):
          invals[i] = val
        out = rule(eqn, lin_pos, invals, full[0])
        if out is not None:
          return out
      return list(jax.linear_transpose(fwd, *lin_avals)(full))

    first = cts[present[0]]
    assert first is not None  # `present` lists the outputs with a cotangent.
    rows = first.shape[1]
    if (eqn.primitive is C.prims.conv_general_dilated_p and 1 in lin_set
        and rows > _tree.MAX_VMAP_ROWS and (0 in lin_set or not conv_rhs_transpose_ok(eqn))):
      # XLA CPU bug: weight gradients of a conv vmapped over > 64 cotangents come out zero.
      # Chunks are unrolled (not a `lax.map`: XLA allocates a map's stacked output at the
      # start of the program, which would hold every weight gradient at once).
      def per_example(c, t):
        step = _tree.MAX_VMAP_ROWS
        parts = [jax.vmap(one, in_axes=(None, 0))(c, [x[i:i + step] for x in t])
                 for i in range(0, rows, step)]
        return [jnp.concatenate(xs) for xs in zip(*parts)]
    else:
      per_example = jax.vmap(one, in_axes=(None, 0))
    fn = jax.vmap(per_example, in_axes=([0 if b else None for b in const_b], 0))
    return fn(const_vals, [cts[i] for i in present])


class AbstractSide:
  """A `Side` on shapes: what the sweep would hold, without computing anything."""

  def __init__(self, program: Program, n_examples: int, batched: Sequence[bool]):
    self.program = program
    self.n = self.n_examples = n_examples
    jaxpr = program.jaxpr
    flag: dict = {v: False for v in jaxpr.constvars}
    flag.update(zip(jaxpr.invars[:program.n_consts], batched))
    for k in program.const_eqns:
      eqn = jaxpr.eqns[k]
      b = any(flag[v] for v in eqn.invars if not C.is_literal(v))
      flag.update((v, b) for v in eqn.outvars)
    self.flag = flag
    self._values: dict = {}
    needed: set[C.Var | C.Literal] = set()  # Vars only; mypy cannot narrow `is_literal`.
    for k in program.g_eqns:
      eqn = jaxpr.eqns[k]
      needed.update(v for v in eqn.invars if not C.is_literal(v) and v in flag)
    self.const_bytes = sum(nbytes(v.aval) * (n_examples if flag[v] else 1) for v in needed)

  def value(self, fn) -> tuple[SDS, bool]:
    if id(fn) not in self._values:
      reads, shape = _probe_reads(fn)
      b = any(self.flag[v] for v in reads)
      self._values[id(fn)] = (SDS((self.n, *shape.shape) if b else shape.shape, shape.dtype),
                              b, fn)
    val, b, _ = self._values[id(fn)]
    return val, b

  def transpose(self, eqn, lin_pos, cts) -> list[SDS]:
    present = next(c for c in cts if c is not None)
    lead = present.shape[:2]
    return [SDS((*lead, *eqn.invars[i].aval.shape), eqn.invars[i].aval.dtype) for i in lin_pos]


def nbytes(x) -> int:
  return math.prod(x.shape) * np.dtype(x.dtype).itemsize
