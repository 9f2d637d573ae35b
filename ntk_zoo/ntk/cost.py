"""FLOP and byte counts of jaxprs and equations (for `auto` and the planners).

Counted, not compiled: dot_general and convolutions exactly (2 × multiply-adds), every other
equation one FLOP per output element; bytes are those written by each equation. Inner jaxprs
are recursed into (scan bodies times their length; the costlier branch of a cond).
XLA's own `cost_analysis()` is not used: on CPU it undercounts (it reported fewer FLOPs for a
width-1024 FCN than for width 256 in neural-tangents' AUTO) and it needs a compile.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ntk_zoo.ntk import _compat as C

# A byte written costs about as much time as this many FLOPs (CPU/GPU memory vs compute
# throughput ratio, order of magnitude). Calibrated on the FCN grid (benchmarks/RESULTS.md).
BYTES_WEIGHT = 4.0


@dataclasses.dataclass(frozen=True)
class Estimate:
  flops: float
  bytes: float

  @property
  def cost(self) -> float:
    return self.flops + BYTES_WEIGHT * self.bytes

  def __add__(self, other: Estimate) -> Estimate:
    return Estimate(self.flops + other.flops, self.bytes + other.bytes)

  def __mul__(self, k: float) -> Estimate:
    return Estimate(self.flops * k, self.bytes * k)


ZERO = Estimate(0.0, 0.0)


def _size(aval) -> int:
  return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def _bytes(aval) -> int:
  dtype = getattr(aval, "dtype", None)
  try:
    return _size(aval) * np.dtype(dtype).itemsize
  except TypeError:
    return 0


def eqn_cost(eqn) -> Estimate:
  """FLOPs and bytes written by one equation (inner jaxprs included)."""
  inner = list(C.jaxprs_in_params(eqn.params))
  if inner:
    costs = [jaxpr_cost(j) for j in inner]
    times = eqn.params.get("length", 1) if eqn.primitive is C.prims.scan_p else 1
    if eqn.primitive is C.prims.cond_p:
      costs = [max(costs, key=lambda c: c.cost)]
    return sum(costs, ZERO) * times
  out = eqn.outvars[0].aval if eqn.outvars else None
  written = float(sum(_bytes(v.aval) for v in eqn.outvars))
  if eqn.primitive is C.prims.dot_general_p:
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    return Estimate(2.0 * _size(out) * math.prod(lhs_shape[d] for d in lc), written)
  if eqn.primitive is C.prims.conv_general_dilated_p:
    rhs = eqn.invars[1].aval.shape
    out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return Estimate(2.0 * _size(out) * math.prod(rhs) / out_feat, written)
  return Estimate(float(sum(_size(v.aval) for v in eqn.outvars)), written)


def jaxpr_cost(jaxpr) -> Estimate:
  """FLOPs and bytes written by a (closed) jaxpr, recursing into inner jaxprs."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return sum((eqn_cost(e) for e in jaxpr.eqns), ZERO)
