"""Structure rules for the bilinear primitives: dot_general, mul, div, conv_general_dilated.

Each describes y = prim(θ-view, c) as an einsum of the constant operand(s) with θ's letters:
dot_general is an einsum already (constant block-diagonal: the identity over W's free axes is
a θ letter shared by y and W); mul/div by a constant is diagonal (every θ letter lands on y);
a convolution is a dot with the patches of its input (identity over output channels, patches
for the spatial part; grouped/depthwise convolutions repeat the patches per output channel).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.rules import defidentity, defstructure
from ntk_zoo.ntk.structured.structure import Factor, Letter, LocalLetter, Structure, View

P = C.prims


def _shape(v) -> tuple[int, ...]:
  return tuple(np.shape(v.val)) if C.is_literal(v) else tuple(v.aval.shape)


def _dot_general(eqn, t: int, view: View) -> Structure | None:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  c_var = eqn.invars[1 - t]
  c_shape = _shape(c_var)
  t_con, c_con = (lc, rc) if t == 0 else (rc, lc)
  t_bat, c_bat = (lb, rb) if t == 0 else (rb, lb)
  shared: list[Letter | None] = [None] * len(c_shape)  # θ letters of contracted/batch axes.
  for td, cd in (*zip(t_con, c_con), *zip(t_bat, c_bat)):
    shared[cd] = view.dims[td]
  c_letters = [l if l is not None else LocalLetter(n) for l, n in zip(shared, c_shape)]
  lhs, rhs = (view.dims, c_letters) if t == 0 else (c_letters, view.dims)
  y = [lhs[d] for d in lb]
  y += [l for d, l in enumerate(lhs) if d not in lc and d not in lb]
  y += [l for d, l in enumerate(rhs) if d not in rc and d not in rb]
  return Structure(tuple(y), (Factor(lambda read: read(c_var), tuple(c_letters)),))


def _elementwise(eqn, t: int, view: View, transform) -> Structure | None:
  """y = view ⊙ g(c) (with rank-preserving unit-axis broadcasting, or a scalar operand)."""
  c_var = eqn.invars[1 - t]
  y_shape = tuple(eqn.outvars[0].aval.shape)
  c_shape = _shape(c_var)
  if len(view.shape) == len(y_shape):
    y = [d if n_v == n else LocalLetter(n) for d, n_v, n in zip(view.dims, view.shape, y_shape)]
  elif not view.shape:
    y = [LocalLetter(n) for n in y_shape]
  else:
    return None
  if not c_shape:
    return Structure(tuple(y), (Factor(lambda read: transform(read(c_var)), ()),))
  if len(c_shape) != len(y_shape):
    return None
  keep = [d for d, (nc, n) in enumerate(zip(c_shape, y_shape)) if nc == n]
  kept_shape = tuple(c_shape[d] for d in keep)

  def value(read):
    return transform(jnp.reshape(read(c_var), kept_shape))

  return Structure(tuple(y), (Factor(value, tuple(y[d] for d in keep)),))


def _mul(eqn, t, view):
  return _elementwise(eqn, t, view, lambda c: c)


def _div(eqn, t, view):
  if t != 0:
    return None  # θ in a denominator is not linear.
  return _elementwise(eqn, t, view, lambda c: 1 / c)


def _conv(eqn, t: int, view: View) -> Structure | None:
  p = eqn.params
  if t != 1 or p["batch_group_count"] != 1:
    return None
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  lhs_var = eqn.invars[0]
  y_shape = tuple(eqn.outvars[0].aval.shape)
  groups = p["feature_group_count"]
  n_out, n_in_group = view.shape[rhs_spec[0]], view.shape[rhs_spec[1]]
  window = tuple(view.shape[d] for d in rhs_spec[2:])
  n_sp = len(window)

  batch = LocalLetter(y_shape[out_spec[0]])
  spatial = [LocalLetter(y_shape[d]) for d in out_spec[2:]]
  y_by_axis: dict[int, Letter] = {out_spec[0]: batch, out_spec[1]: view.dims[rhs_spec[0]],
                                  **dict(zip(out_spec[2:], spatial))}
  y = [y_by_axis[d] for d in range(len(y_shape))]  # out_spec names every axis of y once.
  feat = [view.dims[rhs_spec[1]], *(view.dims[d] for d in rhs_spec[2:])]
  letters = [batch, *spatial] + ([view.dims[rhs_spec[0]]] if groups > 1 else []) + feat

  def value(read):
    patches = _patches(read(lhs_var), window, y_shape, out_spec, p)  # (N, *sp, C, *window)
    patches = patches.reshape((*patches.shape[:n_sp + 1], groups, n_in_group, *window))
    if groups == 1:
      return jnp.squeeze(patches, n_sp + 1)
    return jnp.repeat(patches, n_out // groups, axis=n_sp + 1)  # group -> its output channels

  return Structure(tuple(y), (Factor(value, tuple(letters)),))


def _patches(lhs, window, y_shape, out_spec, p):
  """Input patches of a convolution, (N, *out_spatial, C, *window), by strided slicing.

  No FLOPs (unlike `lax.conv_general_dilated_patches`, a convolution with a one-hot kernel
  whose cost grows with (C·K)²): pad (with interior padding for lhs dilation), then one strided
  slice per kernel offset.
  """
  lhs_spec = p["dimension_numbers"][0]
  x = jnp.moveaxis(lhs, lhs_spec, tuple(range(lhs.ndim)))  # (N, C, *spatial)
  cfg = [(0, 0, 0), (0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in
                                  zip(p["padding"], p["lhs_dilation"])]
  x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  out_sp = [y_shape[d] for d in out_spec[2:]]
  strides, rhs_dil = p["window_strides"], p["rhs_dilation"]
  slices = []
  for offs in itertools.product(*(range(k) for k in window)):
    start = [0, 0] + [o * d for o, d in zip(offs, rhs_dil)]
    limit = list(x.shape[:2]) + [s0 + (n - 1) * st + 1 for s0, n, st in
                                 zip(start[2:], out_sp, strides)]
    slices.append(lax.slice(x, start, limit, (1, 1, *strides)))
  pt = jnp.stack(slices, axis=-1).reshape((*x.shape[:2], *out_sp, *window))
  n_sp = len(out_sp)
  return jnp.moveaxis(pt, 1, n_sp + 1)  # (N, *out_sp, C, *window)


defstructure(P.dot_general_p, _dot_general)
defstructure(P.mul_p, _mul)
defstructure(P.div_p, _div)
defstructure(P.conv_general_dilated_p, _conv)
defidentity(P.add_p, P.add_jaxvals_p, P.sub_p, P.neg_p, P.concatenate_p, P.pad_p, P.select_n_p,
            P.reduce_sum_p, P.dynamic_slice_p, P.dynamic_update_slice_p, P.cumsum_p,
            P.reduce_window_sum_p, P.rev_p, P.slice_p, P.reshape_p, P.broadcast_in_dim_p,
            P.transpose_p, P.squeeze_p, P.convert_element_type_p, P.copy_p,
            P.select_and_gather_add_p, P.scatter_add_p)
