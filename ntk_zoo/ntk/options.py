"""Options shared by every engine: trace/diagonal/vmap axes, and the output-axis bookkeeping.

Output-shape convention (same as neural-tangents' `empirical_ntk_fn`): for an output leaf of
shape (N, A, ..., O), walk its axes in order; an axis in `trace_axes` disappears (the kernel is
the *mean* over its diagonal), an axis in `diagonal_axes` appears once (only Θ[.., i, .., i, ..]
is computed), any other axis appears twice, as an adjacent pair (x1's then x2's). E.g. an output
(N, O) gives (N1, N2, O1, O2) for trace_axes=(), (N1, N2) for trace_axes=(-1,), and (N, O1, O2)
for trace_axes=(), diagonal_axes=(0,).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

from ntk_zoo.ntk.typing import PyTree


class Role(enum.Enum):
  """What happens to one output axis in the kernel."""
  TRACE = "trace"  # Reduced: mean over the diagonal.
  DIAG = "diag"  # Kept once: only the diagonal.
  PAIR = "pair"  # Kept twice: x1's axis then x2's axis.

  @property
  def width(self) -> int:
    return {Role.TRACE: 0, Role.DIAG: 1, Role.PAIR: 2}[self]


@dataclasses.dataclass(frozen=True)
class VmapAxes:
  """Batch axes along which `f` is per-example (no mixing across examples).

  Attributes:
    inputs: pytree of int|None matching `x` (or one int for all leaves): the batch axis of each
      input leaf (None: not batched).
    outputs: pytree of int matching `f`'s output (or one int): the batch axis of each output leaf.
  """
  inputs: PyTree = 0
  outputs: PyTree = 0


@dataclasses.dataclass(frozen=True)
class NTKOptions:
  """Everything about *what* kernel is computed (not how); one frozen bundle passed to engines."""
  trace_axes: tuple[int, ...] = (-1,)
  diagonal_axes: tuple[int, ...] = ()
  vmap_axes: VmapAxes | None = None

  def roles(self, ndim: int) -> tuple[Role, ...]:
    """Role of each axis of an output leaf with `ndim` axes (axes already validated)."""
    trace = {a % ndim for a in self.trace_axes}
    diag = {a % ndim for a in self.diagonal_axes}
    return tuple(Role.TRACE if a in trace else Role.DIAG if a in diag else Role.PAIR
                 for a in range(ndim))


def canonicalize_vmap_axes(vmap_axes) -> VmapAxes | None:
  """Accepts None, an int, a `VmapAxes`, or neural-tangents' `(in_axes, out_axes, kwargs_axes)`."""
  if vmap_axes is None or isinstance(vmap_axes, VmapAxes):
    return vmap_axes
  if isinstance(vmap_axes, int):
    return VmapAxes(vmap_axes, vmap_axes)
  if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
    in_axes, out_axes, kwargs_axes = vmap_axes
    if kwargs_axes:
      raise NotImplementedError(
          "vmap_axes with batched keyword arguments is not supported: pass keyword arguments "
          "that are the same for every example (they are closed over), or fold them into x.")
    return VmapAxes(in_axes, out_axes)
  return VmapAxes(vmap_axes, vmap_axes)


def kernel_subscripts(roles: Sequence[Role], letters1: Sequence[Any], letters2: Sequence[Any]):
  """Output subscripts of a kernel einsum, and the letters each side should use.

  Args:
    roles: role of each output axis.
    letters1: fresh letters for x1's output axes (one per axis).
    letters2: fresh letters for x2's output axes.

  Returns:
    (side1, side2, out): side1/side2 are the letters to put on each side's output axes (traced
    and diagonal axes share x1's letter, so einsum sums resp. keeps their diagonal), `out` the
    output subscripts in the documented order.
  """
  side1, side2, out = [], [], []
  for role, a, b in zip(roles, letters1, letters2):
    side1.append(a)
    if role is Role.PAIR:
      side2.append(b)
      out += [a, b]
    else:
      side2.append(a)
      if role is Role.DIAG:
        out.append(a)
  return side1, side2, out


def trace_size(roles: Sequence[Role], shape: Sequence[int]) -> int:
  """Number of diagonal entries the traced axes average over."""
  size = 1
  for role, n in zip(roles, shape):
    if role is Role.TRACE:
      size *= n
  return size


def result_position(roles: Sequence[Role], axis: int) -> int:
  """Position in the kernel of the (first) kernel axis that output axis `axis` maps to."""
  return sum(r.width for r in roles[:axis])
