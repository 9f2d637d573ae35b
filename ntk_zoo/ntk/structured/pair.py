"""Pair terms: Σ_θ ∂f₁/∂y₁ · ∂y₁/∂θ · ∂y₂/∂θᵀ · ∂f₂/∂y₂ᵀ for one pair of uses, as one einsum.

The operands are the cotangents of the two uses (batch, rows, y letters), each side's constant
factors (e.g. convolution patches), and a pair factor when the structure couples the sides
(index equality for embeddings). θ letters are shared between the sides; the row letters are
arranged by the trace/diagonal roles (`KernelLetters`).

The contraction order is the *route*: for a convolution, cotangent·patches first is the
weight-gradient route (O·[weight grad] + O²·P), patches₁·patches₂ first the patch-Gram route
((HW)²·K + O·(HW)²·C + O²·HW·C). The path is chosen per use by FLOPs under a cap on the
largest intermediate (opt_einsum), so wide-spatial early layers and narrow late layers each
take their cheaper route without a blow-up in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk.structured.structure import ThetaLetter

Array = Any


@dataclasses.dataclass(frozen=True)
class KernelLetters:
  """Einsum letters (ints) of one output leaf's kernel block.

  Attributes:
    bat: batch letter of each side (equal when the batch axis is traced or diagonal).
    rows: letters of each side's row axes (the per-example output axes).
    out: the kernel's letters, in the documented output order.
  """
  bat: tuple[int, int]
  rows: tuple[tuple[int, ...], tuple[int, ...]]
  out: tuple[int, ...]
  first_free: int  # Letters >= this are free for the uses' own axes.


@dataclasses.dataclass(frozen=True)
class SideValues:
  """One side's arrays for one use: its cotangent and constant factors, batch-flagged."""
  ct: Array  # (B, *rows, *y)
  factors: tuple[tuple[Array, bool], ...]  # (value, batched)
  key: tuple[Array, bool] | None  # pair-factor key


class _Namer:
  """θ letters shared across sides, local letters per side."""

  def __init__(self, first: int):
    self._ids: dict = {}
    self._next = first

  def __call__(self, letter, side: int) -> int:
    key = letter if isinstance(letter, ThetaLetter) else (side, letter)
    if key not in self._ids:
      self._ids[key] = self._next
      self._next += 1
    return self._ids[key]


@dataclasses.dataclass(frozen=True)
class Einsum:
  operands: tuple[Array, ...]
  subscripts: tuple[tuple[int, ...], ...]
  out: tuple[int, ...]

  def shapes(self) -> list[tuple[int, ...]]:
    return [tuple(np.shape(o)) for o in self.operands]


def build(ua, ub, v1: SideValues, v2: SideValues, letters: KernelLetters) -> Einsum:
  """The einsum of the pair term of use `ua` at x1 and use `ub` at x2."""
  names = _Namer(letters.first_free)
  b1, b2 = letters.bat
  ops, subs = [], []

  def add(value, sub):
    ops.append(value)
    subs.append(tuple(sub))

  add(v1.ct, [b1, *letters.rows[0], *(names(l, 1) for l in ua.structure.y_letters)])
  for fac, (val, batched) in zip(ua.structure.factors, v1.factors):
    add(val, ([b1] if batched else []) + [names(l, 1) for l in fac.letters])
  if ua.structure.pair is not None:
    assert v1.key is not None and v2.key is not None  # Set for a structure with a pair factor.
    (k1, bk1), (k2, bk2) = v1.key, v2.key
    add(_combine(ua.structure.pair.combine, k1, k2, v1.ct.dtype),
        ([b1] if bk1 else []) + [names(l, 1) for l in ua.structure.pair.letters]
        + ([b2] if bk2 else []) + [names(l, 2) for l in ub.structure.pair.letters])
  for fac, (val, batched) in zip(ub.structure.factors, v2.factors):
    add(val, ([b2] if batched else []) + [names(l, 2) for l in fac.letters])
  add(v2.ct, [b2, *letters.rows[1], *(names(l, 2) for l in ub.structure.y_letters)])
  return Einsum(tuple(ops), tuple(subs), letters.out)


def _combine(combine, k1, k2, dtype):
  def fn(k1, k2):
    e = combine(k1.reshape(k1.shape + (1,) * k2.ndim), k2.reshape((1,) * k1.ndim + k2.shape))
    return e.astype(dtype)
  if isinstance(k1, jax.ShapeDtypeStruct):  # Planning: shapes only.
    return jax.eval_shape(fn, k1, k2)
  return fn(k1, k2)


@dataclasses.dataclass(frozen=True)
class Route:
  """The contraction order chosen for one pair term, and its cost."""
  path: tuple[tuple[int, ...], ...]
  flops: float
  largest: int  # Elements of the largest intermediate (including the output).


def _symbols(sub: Sequence[int]) -> str:
  return "".join(opt_einsum.get_symbol(i) for i in sub)


# No intermediate of a pair term may be larger than this many times its largest operand or
# its result (those are in memory anyway): the FLOP-optimal order sometimes forms an outer
# product (rows₁ × rows₂ × channels) that is no cheaper than the sane order.
INTERMEDIATE_FACTOR = 4


def route(e: Einsum, memory_limit: int | None) -> Route:
  """The cheapest contraction order whose intermediates stay under `memory_limit` elements."""
  shapes = tuple(e.shapes())
  sizes = {l: n for sub, sh in zip(e.subscripts, shapes) for l, n in zip(sub, sh)}
  largest = max([math.prod(sh) for sh in shapes] + [math.prod(sizes[l] for l in e.out)])
  cap = INTERMEDIATE_FACTOR * largest
  return _route(shapes, e.subscripts, e.out, cap if memory_limit is None else
                min(memory_limit, cap))


@functools.lru_cache(maxsize=4096)
def _route(shapes, subscripts, out, memory_limit) -> Route:
  eq = ",".join(_symbols(s) for s in subscripts) + "->" + _symbols(out)
  n = len(shapes)
  if n == 1:
    return Route(((0,),), float(np.prod(shapes[0])), int(np.prod(shapes[0])))
  # "optimal" in opt_einsum 3.4 returns paths worse in FLOPs and memory than "dp" when a
  # letter is shared by every operand (diagonal structure): take the best of several.
  best = None
  for method, limit in (("dp", memory_limit), ("greedy", memory_limit),
                        ("optimal" if n <= 5 else "branch-2", memory_limit), ("greedy", None)):
    try:
      path, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=method,
                                            memory_limit=limit)
    except (ValueError, RuntimeError):  # "No contraction found for given `memory_limit`".
      continue
    if any(len(step) > 2 for step in path):
      # Under a memory limit opt_einsum ends a path that cannot stay under it with one step
      # over all remaining operands; jnp.einsum runs only pairwise steps.
      continue
    r = Route(tuple(tuple(p) for p in path), float(info.opt_cost),
              int(info.largest_intermediate))
    fits = memory_limit is None or r.largest <= memory_limit
    key = (not fits, r.flops, r.largest)
    if best is None or key < best[0]:
      best = (key, r)
  assert best is not None  # Greedy with no memory limit always finds a pairwise path.
  return best[1]


def contract(e: Einsum, r: Route) -> Array:
  args = []
  for o, s in zip(e.operands, e.subscripts):
    args += [o, list(s)]
  return jnp.einsum(*args, list(e.out), optimize=[tuple(p) for p in r.path],
                    precision=_tree.HIGHEST)


def size(shape) -> int:
  return math.prod(shape)


def half_letters(e: Einsum, n1: int) -> tuple[int, ...]:
  """Letters of side 1's half of a pair term: those its operands share with the rest."""
  rest = {l for sub in e.subscripts[n1:] for l in sub} | set(e.out)
  return tuple(dict.fromkeys(l for sub in e.subscripts[:n1] for l in sub if l in rest))


def half(e: Einsum, n1: int) -> tuple[Array, tuple[int, ...]]:
  """H₁ = the contraction of side 1's operands (the first n1): (value, letters)."""
  h = half_letters(e, n1)
  part = Einsum(e.operands[:n1], e.subscripts[:n1], h)
  return contract(part, route(part, None)), h


@dataclasses.dataclass(frozen=True)
class StackedHalf:
  """Side 1's half H₁ of a pair term, computed in `n` row blocks and kept stacked.

  `value` is (n, *h) where h's axis for the row letter `row` has the block size b; the
  blocks cover the `size` rows (n·b ≥ size). Kept stacked, the blocks never need to be
  copied into one array: the pair term contracts with the block axis as a letter of its own,
  and its result is reshaped (free) to the full rows.
  """
  value: Array
  letters: tuple[int, ...]
  row: int
  size: int


def with_half(e: Einsum, n1: int, h1: StackedHalf):
  """The pair term with side 1's operands replaced by their stashed contraction.

  Returns (einsum, finish): `finish(contract(einsum, ...))` is the pair term.
  """
  n_blocks, b = h1.value.shape[0], h1.value.shape[1 + h1.letters.index(h1.row)]
  used = {l for sub in e.subscripts for l in sub} | set(e.out) | set(h1.letters)
  l_blk, l_in = max(used) + 1, max(used) + 2
  letters = (l_blk, *(l_in if l == h1.row else l for l in h1.letters))
  out = []
  for l in e.out:
    out += [l_blk, l_in] if l == h1.row else [l]
  pos = e.out.index(h1.row)

  def finish(term):
    shape = term.shape[:pos] + (n_blocks * b,) + term.shape[pos + 2:]
    term = term.reshape(shape)
    return term if n_blocks * b == h1.size else jax.lax.slice_in_dim(term, 0, h1.size,
                                                                     axis=pos)

  return Einsum((h1.value, *e.operands[n1:]), (letters, *e.subscripts[n1:]), tuple(out)), finish
