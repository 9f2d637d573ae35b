"""FLOPs of a jitted function from XLA's cost analysis, with loops counted once per iteration.

XLA's `compiled.cost_analysis()` counts the body of a `while` loop once, whatever its trip count,
and the NTK engines map over output directions with `lax.map` (a `scan`) in chunks of at most 64
rows. `unrolled_flops` compiles the same program with every `scan` unrolled (the jaxpr is
rewritten; the engines are not touched) and counts again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core
from jax.extend.core import primitives as jex_primitives


def _unrolled(v: Any) -> Any:
  """`v` (a jaxpr, a closed jaxpr, a tuple of them, or any other param) with scans unrolled."""
  if isinstance(v, jex_core.ClosedJaxpr):
    return v.replace(jaxpr=_unrolled(v.jaxpr))
  if isinstance(v, jex_core.Jaxpr):
    eqns = []
    for eqn in v.eqns:
      params = {k: _unrolled(p) for k, p in eqn.params.items()}
      if eqn.primitive is jex_primitives.scan_p:
        params["unroll"] = params["length"]
      eqns.append(eqn.replace(params=params))
    return v.replace(eqns=eqns)
  if isinstance(v, tuple):
    return tuple(_unrolled(p) for p in v)
  return v


def _flops(compiled) -> float | None:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def _loops(v: Any) -> int:
  """Number of scan and while equations in `v`, nested ones included."""
  if isinstance(v, jex_core.ClosedJaxpr):
    return _loops(v.jaxpr)
  if isinstance(v, jex_core.Jaxpr):
    return sum((eqn.primitive in (jex_primitives.scan_p, jex_primitives.while_p))
               + sum(_loops(p) for p in eqn.params.values()) for eqn in v.eqns)
  if isinstance(v, tuple):
    return sum(_loops(p) for p in v)
  return 0


def loops(fn: Callable, *args) -> int:
  """Number of scan and while equations in the jaxpr of `fn(*args)` (nested ones included)."""
  return _loops(jax.make_jaxpr(fn)(*args))


def unrolled_flops(fn: Callable, *args) -> dict:
  """XLA's FLOPs of `jax.jit(fn)(*args)` compiled with every scan unrolled.

  Returns:
    `"loops"` (the number of scan/while equations in fn's jaxpr), `"flops_unrolled"` (XLA's
    count of the unrolled program; the plain count where there are no loops) and
    `"loops_left"` (True when a `while` loop survived, e.g. a `while_loop` that is not a scan:
    its body is still counted once).
  """
  closed = jax.make_jaxpr(fn)(*args)
  flat = jax.tree_util.tree_leaves(args)
  compiled = jax.jit(jex_core.jaxpr_as_fun(_unrolled(closed))).lower(*flat).compile()
  return {"loops": _loops(closed), "flops_unrolled": _flops(compiled),
          "loops_left": " while(" in compiled.as_text()}
