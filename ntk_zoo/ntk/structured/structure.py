"""How structure is described: einsum letters, parameter views, and a use's structure.

A *use* of a parameter leaf θ is an equation y = prim(view(θ), c₁, …) whose other operands are
constants w.r.t. θ. Its Jacobian ∂y/∂θ is described, never instantiated, as an einsum over
letters:

* θ letters (`ThetaLetter`) index θ's entries. They are shared between the two sides of the
  NTK contraction (Σ_θ ∂y₁/∂θ · ∂y₂/∂θ): this is what makes "constant block-diagonal" and
  "diagonal" structure cheap — the identity over an output axis of W in y = x·W becomes the
  same letter on y₁ and y₂.
* local letters (`LocalLetter`) index everything else (batch, pixels, broadcast axes, the
  constant operand's free axes); each side gets its own copy.

∂y/∂θ[y-letters, θ-letters] = Π factors, with δ's implied by shared letters. E.g. for
y[b, n] = Σ_k x[b, k] W[k, n]: y letters (b, n), factor x with letters (b, k), θ letters
(k, n); the contraction ct₁[o₁,b₁,n] x₁[b₁,k] x₂[b₂,k] ct₂[o₂,b₂,n] is left to einsum's path
optimizer, which picks Gram-first (O²W) or Jacobian-first (O²W²) per layer by cost.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

Array = Any

_counter = itertools.count()


@dataclasses.dataclass(frozen=True)
class ThetaLetter:
  """Indexes an axis of a parameter in one coordinate system (`system`, `axis`)."""
  system: Any
  axis: int
  size: int


@dataclasses.dataclass(frozen=True, eq=False)
class LocalLetter:
  """Indexes a non-parameter axis; unique by identity, renamed per side at contraction."""
  size: int
  uid: int = dataclasses.field(default_factory=lambda: next(_counter))


Letter = ThetaLetter | LocalLetter


@dataclasses.dataclass(frozen=True)
class View:
  """A parameter seen through re-indexing ops (slice, reshape, transpose, broadcast, ...).

  Attributes:
    leaf: index of the parameter leaf.
    window: static (start, stop) per axis of the leaf selected by slicing, or None (all of it).
    dims: one letter per axis of the viewed value: θ letters, or local letters for broadcast
      axes.
    shape: the viewed value's shape.
  """
  leaf: int
  window: tuple[tuple[int, int], ...] | None
  dims: tuple[Letter, ...]
  shape: tuple[int, ...]

  def theta_letters(self) -> frozenset[ThetaLetter]:
    return frozenset(d for d in self.dims if isinstance(d, ThetaLetter) and d.size > 1)


@dataclasses.dataclass(frozen=True)
class Factor:
  """A constant operand of ∂y/∂θ: `value(read)` builds it from the equation's constant inputs."""
  value: Callable[[Callable], Array]
  letters: tuple[Letter, ...]


@dataclasses.dataclass(frozen=True)
class PairFactor:
  """A factor that couples the two sides (e.g. index equality for embedding gathers).

  `key(read)` is built per side; `combine(key1, key2)` returns an array whose axes are key1's
  letters (side 1) followed by key2's letters (side 2).
  """
  key: Callable[[Callable], Array]
  letters: tuple[Letter, ...]
  combine: Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Structure:
  """∂y/∂θ for one use: y's letters, and the factors whose product (with δ's) it is."""
  y_letters: tuple[Letter, ...]
  factors: tuple[Factor, ...] = ()
  pair: PairFactor | None = None


def identity(view: View) -> Structure:
  """y = view(θ): ∂y/∂θ is the identity (tiled over the broadcast axes)."""
  return Structure(y_letters=view.dims)


def windows_disjoint(a, b) -> bool:
  if a is None or b is None:
    return False
  return any(s1 >= e2 or s2 >= e1 for (s1, e1), (s2, e2) in zip(a, b))
