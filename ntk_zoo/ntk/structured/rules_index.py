"""Structure rule for `gather` used as an embedding lookup: y[t, d] = θ[idx[t], d].

∂y/∂θ selects rows, so Σ_θ ∂y₁/∂θ · ∂y₂/∂θ = [idx₁[t₁] = idx₂[t₂]] · δ(d₁, d₂): the vocabulary
axis is replaced by an index-equality matrix coupling the two sides (T₁×T₂ instead of the
O×V×D Jacobian of the table). This is the rule neural-tangents lacked (its issue #199).
"""

from __future__ import annotations

import jax.numpy as jnp

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.rules import defstructure
from ntk_zoo.ntk.structured.structure import LocalLetter, PairFactor, Structure, ThetaLetter, View

P = C.prims


def _same_row(k1, k2):
  return (k1 == k2) & (k1 >= 0)


def _gather(eqn, t: int, view: View) -> Structure | None:
  if t != 0 or len(view.shape) < 1 or not isinstance(view.dims[0], ThetaLetter):
    return None
  dn, p = eqn.params["dimension_numbers"], eqn.params
  rank = len(view.shape)
  idx_var = eqn.invars[1]
  idx_shape = tuple(idx_var.aval.shape)
  out_ndim = len(eqn.outvars[0].aval.shape)
  if (tuple(dn.collapsed_slice_dims) != (0,) or tuple(dn.start_index_map) != (0,)
      or tuple(getattr(dn, "operand_batching_dims", ())) or not idx_shape or idx_shape[-1] != 1
      or tuple(p["slice_sizes"]) != (1, *view.shape[1:])
      or tuple(dn.offset_dims) != tuple(range(out_ndim - (rank - 1), out_ndim))):
    return None
  vocab = view.shape[0]
  clip = "FILL" not in str(p["mode"]).upper()
  tokens = tuple(LocalLetter(n) for n in idx_shape[:-1])

  def key(read):
    idx = read(idx_var)[..., 0]
    if clip:
      return jnp.clip(idx, 0, vocab - 1)
    return jnp.where((idx >= 0) & (idx < vocab), idx, -1)

  return Structure(tokens + tuple(view.dims[1:]), (), PairFactor(key, tokens, _same_row))


defstructure(P.gather_p, _gather)
