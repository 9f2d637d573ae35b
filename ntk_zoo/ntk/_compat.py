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


def custom_lin_name(params: dict) -> str:
  """The name of the custom_vjp function a `custom_lin` equation comes from (its bwd's)."""
  bwd = params.get("bwd")
  info = getattr(bwd, "debug_info", None)
  return getattr(info, "func_name", None) or getattr(bwd, "__name__", None) or "<custom_vjp>"


def custom_lin_jaxpr(avals, *, num_res, bwd, out_avals, symbolic_zeros, in_zeros) -> ClosedJaxpr:
  """The linear map of a `custom_lin` equation as a jaxpr of ordinary ops.

  `jax.custom_vjp` functions linearize to `custom_lin(residuals..., tangents...)`, whose only
  rule is its transpose, the user's `bwd`. Its forward map is the transpose of
  `cts_out ↦ bwd(residuals, cts_out)` (restricted to the inputs with nonzero tangents): the
  derivative the custom_vjp defines, exactly what reverse-mode `jax.jacobian` uses. Traced on
  its own (`avals`: the equation's operands), so a failure leaves nothing behind.

  Raises:
    NotImplementedError: symbolic-zero cotangents (`symbolic_zeros=True`).
    Any error of `jax.linear_transpose` when `bwd` is not linear in its cotangents (e.g. it
    clips them): the caller then keeps the equation as it is.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.interpreters import ad  # pylint: disable=g-import-not-at-top
  if symbolic_zeros:
    raise NotImplementedError("custom_vjp with symbolic_zeros=True")

  def forward(*invals):
    res, tangents = list(invals[:num_res]), list(invals[num_res:])

    def bwd_of(*cts_out):
      cts_in = bwd.call_wrapped(*res, *cts_out)
      nonzero = [ct for ct, zero in zip(cts_in, in_zeros) if not zero]
      return [jnp.zeros(jnp.shape(t), t.dtype) if ct is None or isinstance(ct, ad.Zero) else ct
              for ct, t in zip(nonzero, tangents)]

    cts_avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in out_avals]
    return list(jax.linear_transpose(bwd_of, *cts_avals)(tangents))

  return jax.make_jaxpr(forward)(*avals)


def is_tracer(x) -> bool:
  """Whether `x` is an abstract value being traced (under jit/vmap/grad), not a concrete array."""
  import jax  # pylint: disable=g-import-not-at-top
  return isinstance(x, jax.core.Tracer)
