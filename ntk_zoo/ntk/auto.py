"""`implementation="auto"`: estimate each method's cost on the actual program, run the cheapest.

Each candidate engine is *traced* (not compiled) for the given shapes, and its jaxpr is costed
by counting FLOPs (dot_general/conv exactly, other ops one per output element) and bytes
written by every equation, recursing into inner jaxprs (scan bodies times their length).
XLA's own `cost_analysis()` is not used for the decision: on CPU it undercounts (it reported
fewer FLOPs for a width-1024 FCN than for width 256 in neural-tangents' AUTO) and it needs a
compile per candidate. The estimate is `flops + BYTES_WEIGHT * bytes`, a roofline-style time
proxy; decisions are cached per input signature and recorded in `Decision`s (also logged at
INFO level on logger `ntk_zoo.ntk.auto`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ntk_zoo.ntk.options import NTKOptions

PyTree = Any
log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class Decision:
  """Why `auto` chose an implementation for one input signature."""
  signature: str
  chosen: str
  estimates: dict[str, Estimate]

  def __str__(self) -> str:
    rows = ", ".join(f"{k}: {v.flops:.3g} FLOPs + {v.bytes:.3g} B" for k, v in self.estimates.items())
    return f"auto chose {self.chosen} for {self.signature} ({rows})"


def _size(aval) -> int:
  return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def _bytes(aval) -> int:
  dtype = getattr(aval, "dtype", None)
  try:
    return _size(aval) * np.dtype(dtype).itemsize
  except TypeError:
    return 0


def jaxpr_cost(jaxpr) -> Estimate:
  """FLOPs and bytes written by a (closed) jaxpr, recursing into inner jaxprs."""
  from ntk_zoo.ntk.structured import _compat as C  # pylint: disable=g-import-not-at-top
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  flops = 0.0
  written = 0.0
  for eqn in jaxpr.eqns:
    inner = list(C.jaxprs_in_params(eqn.params))
    if inner:
      costs = [jaxpr_cost(j) for j in inner]
      times = eqn.params.get("length", 1) if eqn.primitive is C.prims.scan_p else 1
      if eqn.primitive is C.prims.cond_p:
        costs = [max(costs, key=lambda c: c.cost)]
      flops += times * sum(c.flops for c in costs)
      written += times * sum(c.bytes for c in costs)
      continue
    out = eqn.outvars[0].aval if eqn.outvars else None
    n_out = sum(_size(v.aval) for v in eqn.outvars)
    written += sum(_bytes(v.aval) for v in eqn.outvars)
    if eqn.primitive is C.prims.dot_general_p:
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      flops += 2.0 * _size(out) * math.prod(lhs_shape[d] for d in lc)
    elif eqn.primitive is C.prims.conv_general_dilated_p:
      rhs = eqn.invars[1].aval.shape
      out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      flops += 2.0 * _size(out) * math.prod(rhs) / out_feat
    else:
      flops += n_out
  return Estimate(flops, written)


def _signature(params, x1, x2, opts) -> str:
  def sig(t):
    return jax.tree_util.tree_map(lambda a: f"{np.dtype(a.dtype).name}{list(np.shape(a))}", t)
  return repr((jax.tree_util.tree_leaves(sig(x1)), None if x2 is None else
               jax.tree_util.tree_leaves(sig(x2)), jax.tree_util.tree_leaves(sig(params)),
               opts))


def make_engine(candidates: dict[str, Callable]) -> Callable:
  """An engine that picks the cheapest of `candidates` per input signature.

  The returned engine has attribute `decisions: dict[signature, Decision]`.
  """
  decisions: dict[str, Decision] = {}

  def engine(f, params, x1, x2, opts: NTKOptions, out_shapes):
    key = _signature(params, x1, x2, opts)
    if key not in decisions:
      estimates = {}
      shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                                      (params, x1, x2))
      for name, cand in candidates.items():
        closed = jax.make_jaxpr(
            lambda p, a, b, cand=cand: cand(f, p, a, b, opts, out_shapes))(*shapes)
        estimates[name] = jaxpr_cost(closed)
      chosen = min(estimates, key=lambda k: estimates[k].cost)
      decisions[key] = Decision(key, chosen, estimates)
      log.info("%s", decisions[key])
    engine.last_decision = decisions[key]
    return candidates[decisions[key].chosen](f, params, x1, x2, opts, out_shapes)

  engine.decisions = decisions
  engine.last_decision = None
  return engine
