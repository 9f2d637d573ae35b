"""Flattening a linear jaxpr: inline call-like equations and unroll `scan`.

After flattening every use of a parameter (or of a slice of a stacked parameter, for scanned
layers) is a top-level equation the structure rules can see. Flattening is done by re-tracing:
an interpreter evaluates the jaxpr under `jax.make_jaxpr`, binding ordinary primitives as they
are and recursing into inner jaxprs of `jit`/`closed_call`/`remat`/`custom_jvp_call`/
`custom_vjp_call`; `scan` is unrolled step by step (its length is static). Other higher-order
primitives (`cond`, `while`) are kept whole: parameters they consume take the unstructured path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.rewrites import REWRITES
from ntk_zoo.ntk.typing import PyTree


def eval_inlined(jaxpr: C.Jaxpr, consts: Sequence, args: Sequence) -> list:
  """Evaluates `jaxpr`, inlining call-like equations and unrolling scans."""
  env: dict = {}

  def read(v):
    return v.val if C.is_literal(v) else env[v]

  def write(v, val):
    if not isinstance(v, C.DropVar):
      env[v] = val

  for v, val in zip(jaxpr.constvars, consts):
    write(v, val)
  for v, val in zip(jaxpr.invars, args):
    write(v, val)
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    inner = C.inner_jaxpr(eqn)
    if inner is not None:
      outs = eval_inlined(inner[0], inner[1], invals)
    elif eqn.primitive is C.prims.scan_p:
      outs = _unroll_scan(eqn, invals)
    elif eqn.primitive in REWRITES:
      outs = REWRITES[eqn.primitive](*invals, **eqn.params)
    else:
      outs = eqn.primitive.bind(*invals, **eqn.params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, val in zip(eqn.outvars, outs):
      write(v, val)
  return [read(v) for v in jaxpr.outvars]


def _unroll_scan(eqn: C.JaxprEqn, invals: list) -> list:
  p = eqn.params
  body: C.ClosedJaxpr = p["jaxpr"]
  n_consts, n_carry, length = p["num_consts"], p["num_carry"], p["length"]
  consts, carry, xs = invals[:n_consts], invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
  ys_steps: list = [None] * length
  steps = range(length - 1, -1, -1) if p["reverse"] else range(length)
  for i in steps:
    x_i = [lax.index_in_dim(x, i, 0, keepdims=False) for x in xs]
    outs = eval_inlined(body.jaxpr, body.consts, [*consts, *carry, *x_i])
    carry, ys_steps[i] = outs[:n_carry], outs[n_carry:]
  n_ys = len(eqn.outvars) - n_carry
  ys = [jnp.stack([ys_steps[i][k] for i in range(length)]) for k in range(n_ys)]
  return [*carry, *ys]


def has_custom_lin(jaxpr: C.Jaxpr) -> bool:
  """Whether `jaxpr` or an inner jaxpr holds a `custom_lin` (a jax.custom_vjp)."""
  return any(eqn.primitive is C.prims.custom_lin_p
             or any(has_custom_lin(getattr(j, "jaxpr", j)) for j in C.jaxprs_in_params(eqn.params))
             for eqn in jaxpr.eqns)


def evaluable(f_lin: Callable, tangents: PyTree) -> Callable:
  """`f_lin` (e.g. from `jax.linearize`), runnable forward even through `jax.custom_vjp`.

  A custom_vjp's linearization (`custom_lin`) has no forward rule; when `f_lin` contains one,
  the returned function evaluates its flattened jaxpr, where `custom_lin` is the transpose of
  the custom_vjp's bwd (`rewrites.py`). Otherwise `f_lin` itself is returned.

  Raises:
    NotImplementedError: a custom_vjp whose bwd cannot be transposed (not linear in its
      cotangents): its forward derivative does not exist.
  """
  closed, out = jax.make_jaxpr(f_lin, return_shape=True)(tangents)
  if not has_custom_lin(closed.jaxpr):
    return f_lin
  flat = flatten(closed)
  names = custom_lin_names(flat.jaxpr)
  if names:
    raise NotImplementedError(
        f"A jax.custom_vjp function (bwd rule {', '.join(names)}) has a bwd that is not linear "
        "in its cotangents (it cannot be transposed), so no forward derivative exists for "
        "implementation='ntk_vector_products'. Use 'structured_derivatives' or "
        "'jacobian_contraction' (both apply bwd itself).")
  out_tree = jax.tree_util.tree_structure(out)

  def fn(t):
    outs = eval_inlined(flat.jaxpr, flat.consts, [*closed.consts, *jax.tree_util.tree_leaves(t)])
    return jax.tree_util.tree_unflatten(out_tree, outs)

  return fn


def custom_lin_names(jaxpr: C.Jaxpr) -> list[str]:
  """Names of the custom_vjp functions whose `custom_lin` is left in a flat jaxpr."""
  return sorted({C.custom_lin_name(e.params) for e in jaxpr.eqns
                 if e.primitive is C.prims.custom_lin_p})


def flatten(closed: C.ClosedJaxpr) -> C.ClosedJaxpr:
  """A flat closed jaxpr computing `closed`; its invars are `closed`'s consts then its invars."""
  n_consts = len(closed.consts)

  def fn(*args):
    return eval_inlined(closed.jaxpr, args[:n_consts], args[n_consts:])

  avals = [jax.ShapeDtypeStruct(jnp.shape(c), jnp.result_type(c)) for c in closed.consts]
  avals += [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
  return jax.make_jaxpr(fn)(*avals)
