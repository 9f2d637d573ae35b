"""The one place that touches JAX's jaxpr machinery (public `jax.extend` API only).

If a JAX upgrade moves something, this is the file to change.
"""

from __future__ import annotations

from jax.extend import core as jex_core
from jax.extend.core import primitives as P

ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
Var = jex_core.Var
Primitive = jex_core.Primitive
DropVar = jex_core.DropVar
jaxprs_in_params = jex_core.jaxprs_in_params

prims = P

# Call-like primitives whose inner jaxpr is inlined, and the param holding it.
INLINE_PARAM: dict[Primitive, str] = {
    P.jit_p: "jaxpr",
    P.closed_call_p: "call_jaxpr",
    P.core_call_p if hasattr(P, "core_call_p") else P.call_p: "call_jaxpr",
    P.remat_p: "jaxpr",
    P.custom_jvp_call_p: "call_jaxpr",
    P.custom_vjp_call_p: "call_jaxpr",
}


def inner_jaxpr(eqn: JaxprEqn) -> tuple[Jaxpr, list] | None:
  """(jaxpr, consts) of a call-like equation to inline, or None if it is not one."""
  name = INLINE_PARAM.get(eqn.primitive)
  if name is None or name not in eqn.params:
    return None
  j = eqn.params[name]
  if isinstance(j, ClosedJaxpr):
    return j.jaxpr, list(j.consts)
  if isinstance(j, Jaxpr):
    return j, []
  return None


def is_literal(v) -> bool:
  return isinstance(v, Literal)


def is_tracer(x) -> bool:
  """Whether `x` is an abstract value being traced (under jit/vmap/grad), not a concrete array."""
  import jax  # pylint: disable=g-import-not-at-top
  return isinstance(x, jax.core.Tracer)
