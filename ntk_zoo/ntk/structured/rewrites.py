"""Rewrites applied while flattening: linear primitives re-expressed in cheaper linear ops.

`REWRITES[prim](*invals, **params) -> outs` replaces `prim.bind` in the flattening
interpreter. A rewrite must compute exactly what the primitive computes; it exists because
the primitive's transpose is expensive when vmapped over many output directions.

* `select_and_gather_add` (max/min-pool's JVP): its transpose `select_and_scatter_add`, vmapped
  over output directions, broadcasts the pooled operand to every direction and XLA on CPU
  lowers it to a scatter with an index array per element (at O = 1000 on ResNet-50's stem,
  ~8 GB per input). It is rewritten as a gather t[index]: the index of the selected element
  of each window is computed once per example from the operand — by running the primitive
  itself on a tangent that encodes positions, so ties resolve exactly as JAX's JVP resolves
  them — and the transpose is a scatter-add whose indices are shared by all directions.
  (A sum of masked strided slices was tried first: XLA kept all K padded transposes alive.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ntk_zoo.ntk import _compat as C

REWRITES: dict[C.Primitive, Callable] = {}

_CODE_BASE = 4096  # Positions are encoded in base-4096 digits (exact in float32).


def _select_and_gather_add(tangent, operand, *, select_prim, window_dimensions, window_strides,
                           padding, base_dilation, window_dilation):
  dtype = operand.dtype
  code_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
  operand_c = operand.astype(code_dtype)
  size = int(np.prod(operand.shape))
  n_digits = 1 if size + 1 < 2 ** 24 else 2
  pos = jnp.arange(1, size + 1, dtype=jnp.int32).reshape(operand.shape)  # 0: padding.
  params = dict(select_prim=select_prim, window_dimensions=window_dimensions,
                window_strides=window_strides, padding=padding, base_dilation=base_dilation,
                window_dilation=window_dilation)
  selected = None
  for digit in range(n_digits):
    code = (pos // _CODE_BASE ** digit) % (_CODE_BASE if n_digits > 1 else size + 2)
    sel = C.prims.select_and_gather_add_p.bind(code.astype(code_dtype), operand_c, **params)
    part = jnp.round(sel).astype(jnp.int32) * (_CODE_BASE ** digit)
    selected = part if selected is None else selected + part
  # Flat index of the selected element per output (size: padding, a zero appended to t).
  index = jnp.where(selected > 0, selected - 1, size)
  flat = jnp.concatenate([tangent.reshape(-1), jnp.zeros((1,), tangent.dtype)])
  return [flat.at[index].get(mode="promise_in_bounds")]


REWRITES[C.prims.select_and_gather_add_p] = _select_and_gather_add


def _custom_lin(*invals, **params):
  """A `jax.custom_vjp` function's linearization, as the ops its `bwd` transposes to.

  `custom_lin` is opaque (only its transpose, the user's bwd, is defined); re-expressed as the
  transpose of bwd, the parameters it consumes meet ordinary primitives with structure rules
  (the derivative is still exactly the one bwd defines). A bwd that is not linear in its
  cotangents cannot be transposed: the equation stays, and its parameters take the
  materialized path (`program.py` warns, naming the custom_vjp).
  """
  from ntk_zoo.ntk.structured.flatten import eval_inlined  # pylint: disable=g-import-not-at-top
  avals = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in invals]
  try:
    closed = C.custom_lin_jaxpr(avals, **params)
  except Exception:  # noqa: BLE001  (any failure to transpose bwd: keep the opaque equation)
    return C.prims.custom_lin_p.bind(*invals, **params)
  return eval_inlined(closed.jaxpr, closed.consts, invals)


REWRITES[C.prims.custom_lin_p] = _custom_lin


# ---------------------------------------------------------------------------------------------
# Transpose overrides used by the sweep: `TRANSPOSES[prim](eqn, lin_pos, invals, ct) -> cts`
# (one example, one row; `invals` holds the constant operands, None at linear positions), or
# None to use JAX's own rule.
#
# JAX transposes a gather into a scatter-add onto a fresh zero array. That array depends on
# nothing, so XLA's scheduler may create it (R × operand size, vmapped over R directions) at
# the start of the program and hold it through the whole sweep. Here the zeros depend on the
# cotangent, so they are created when it arrives.

TRANSPOSES: dict[C.Primitive, Callable] = {}


def _gather_transpose(eqn, lin_pos, invals, ct):
  if list(lin_pos) != [0]:
    return None
  p = eqn.params
  dn = p["dimension_numbers"]
  aval = eqn.invars[0].aval
  anchor = jnp.ravel(ct)[:1].sum() * 0  # A runtime zero that depends on the cotangent.
  zeros = jnp.zeros(aval.shape, ct.dtype) + anchor
  sdn = lax.ScatterDimensionNumbers(
      update_window_dims=dn.offset_dims, inserted_window_dims=dn.collapsed_slice_dims,
      scatter_dims_to_operand_dims=dn.start_index_map,
      operand_batching_dims=dn.operand_batching_dims,
      scatter_indices_batching_dims=dn.start_indices_batching_dims)
  return [lax.scatter_add(zeros, invals[1], ct, sdn, unique_indices=p["unique_indices"],
                          indices_are_sorted=p["indices_are_sorted"], mode=p["mode"])]


TRANSPOSES[C.prims.gather_p] = _gather_transpose



def _conv_transpose(eqn, lin_pos, invals, ct):
  """A convolution's transpose, where XLA's own is slow on CPU (the input cotangent here).

  * 1×1 windows: y = pad(x)[::s] · W, so x̄ = crop(place(ȳ · Wᵀ, stride s)): a matrix product
    (about 3× faster on CPU than the equivalent convolution: 40 vs 130 GFLOP/s on ResNet-50's
    28²×512 layers), then one `lax.pad` (interior padding s − 1, negative edges to crop).
  * strided windows: JAX transposes a stride-s convolution into one over the input dilated
    by s, (s² − 1)/s² of whose products are with zeros. Instead, each phase r of the input
    (positions ≡ r mod s) receives ȳ convolved with the sub-kernel W[r::s]; the phases are
    then interleaved. Same FLOPs as the forward convolution.

  Returns None (JAX's rule) for other convolutions (stride 1 with a window, dilations,
  groups). With the kernel linear instead (`lin_pos == [1]`), see `_conv_rhs_transpose`.
  """
  p = eqn.params
  if list(lin_pos) == [1]:
    return _conv_rhs_transpose(eqn, invals, ct)
  if (list(lin_pos) != [0] or invals[1] is None or p["feature_group_count"] != 1
      or p["batch_group_count"] != 1 or any(d != 1 for d in p["lhs_dilation"])
      or any(d != 1 for d in p["rhs_dilation"])):
    return None
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  w = invals[1]
  nd = len(lhs_spec) - 2
  window = [w.shape[d] for d in rhs_spec[2:]]
  strides = list(p["window_strides"])
  one_by_one = all(k == 1 for k in window)
  if not one_by_one and all(st == 1 for st in strides):
    return None
  lhs_shape = eqn.invars[0].aval.shape
  # Canonical layouts: ȳ (N, *sp, C_out), W (*window, C_in, C_out), x̄ (N, *sp, C_in).
  y = jnp.transpose(ct, (out_spec[0], *out_spec[2:], out_spec[1]))
  wc = jnp.transpose(w, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])).astype(ct.dtype)
  in_sp = [lhs_shape[d] for d in lhs_spec[2:]]
  pads = [lo for lo, _ in p["padding"]]
  padded = [n + lo + hi for n, (lo, hi) in zip(in_sp, p["padding"])]
  if one_by_one:
    z = lax.dot_general(y, wc.reshape(wc.shape[-2:]), (((nd + 1,), (1,)), ((), ())),
                        precision=lax.Precision.HIGHEST)
    cfg = [(0, 0, 0)] + [(-lo, n + lo - (m - 1) * st - 1, st - 1) for n, lo, m, st in
                         zip(in_sp, pads, y.shape[1:nd + 1], strides)] + [(0, 0, 0)]
    xbar = lax.pad(z, jnp.zeros((), z.dtype), cfg)
  else:
    xbar = _phase_transpose(y, wc, window, strides, padded, pads, in_sp)
  inv = [0] * (nd + 2)  # canonical axis -> lhs axis
  for c, d in enumerate((lhs_spec[0], *lhs_spec[2:], lhs_spec[1])):
    inv[d] = c
  return [jnp.transpose(xbar, inv)]


def _phase_transpose(y, wc, window, strides, padded, pads, in_sp):
  """x̄ of a strided convolution, phase by phase (canonical layouts; see above)."""
  nd = len(window)
  q_len = [-(-n // st) for n, st in zip(padded, strides)]  # Positions per phase (padded up).
  dn = lax.ConvDimensionNumbers((0, nd + 1, *range(1, nd + 1)), (nd, nd + 1, *range(nd)),
                                (0, nd + 1, *range(1, nd + 1)))
  n_b, c_in = y.shape[0], wc.shape[-2]
  phases = []
  for r in itertools.product(*(range(st) for st in strides)):
    taps = [len(range(ri, k, st)) for ri, k, st in zip(r, window, strides)]
    if any(t == 0 for t in taps):
      phases.append(jnp.zeros((n_b, *q_len, c_in), y.dtype))
      continue
    # z_r[q] = Σ_j ȳ[q − j] · W[r + j·s]ᵀ: a correlation of ȳ (padded by taps − 1 in front)
    # with the flipped sub-kernel.
    sub = wc[tuple(slice(ri, None, st) for ri, st in zip(r, strides))]
    sub = jnp.flip(sub, tuple(range(nd)))
    cfg = [(0, 0, 0)] + [(t - 1, q - m, 0) for t, q, m in zip(taps, q_len, y.shape[1:nd + 1])]
    cfg += [(0, 0, 0)]
    yp = lax.pad(y, jnp.zeros((), y.dtype), cfg)
    phases.append(lax.conv_general_dilated(yp, sub, (1,) * nd, "VALID", dimension_numbers=dn,
                                           precision=lax.Precision.HIGHEST))
  # Interleave: (N, *q, C) per phase -> (N, q1, s1, q2, s2, ..., C) -> (N, *padded, C).
  z = jnp.stack(phases, axis=1).reshape((n_b, *strides, *q_len, c_in))
  perm = [0] + [a for d in range(nd) for a in (1 + nd + d, 1 + d)] + [1 + 2 * nd]
  z = jnp.transpose(z, perm).reshape((n_b, *(q * st for q, st in zip(q_len, strides)), c_in))
  return z[(slice(None), *(slice(lo, lo + n) for lo, n in zip(pads, in_sp)), slice(None))]


def conv_rhs_transpose_ok(eqn) -> bool:
  """Whether `_conv_rhs_transpose` handles `eqn` (else JAX's rule is used)."""
  p = eqn.params
  return p["feature_group_count"] == 1 and p["batch_group_count"] == 1


def _conv_rhs_transpose(eqn, invals, ct):
  """The kernel cotangent (weight gradient) of a convolution: W̄ = Σ patches(x) ⊗ ȳ.

  JAX transposes a convolution w.r.t. its kernel into a convolution of the input with ȳ;
  vmapped over output directions XLA on CPU runs it as a batch-grouped convolution at a
  fifth of the speed of an ordinary one (7–15 vs 29–54 GFLOP/s measured on ResNet-50's
  layers). As a contraction of the input patches (strided slices, no FLOPs) with ȳ it is one
  matrix product (and XLA CPU's zeroed-gradient bug for vmaps over > 64 directions does not
  apply).
  """
  from ntk_zoo.ntk.structured.rules_linear import _patches  # pylint: disable=g-import-not-at-top
  if invals[0] is None or not conv_rhs_transpose_ok(eqn):
    return None
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  rhs_shape = eqn.invars[1].aval.shape
  window = tuple(rhs_shape[d] for d in rhs_spec[2:])
  nd = len(window)
  y_shape = tuple(eqn.outvars[0].aval.shape)
  patches = _patches(invals[0].astype(ct.dtype), window, y_shape, out_spec, p)
  # patches (N, *sp, C_in, *window), ȳ in the output layout -> (N, *sp, C_out).
  y = jnp.transpose(ct, (out_spec[0], *out_spec[2:], out_spec[1]))
  contract = tuple(range(nd + 1))
  w = lax.dot_general(patches, y, ((contract, contract), ((), ())),
                      precision=lax.Precision.HIGHEST)  # (C_in, *window, C_out)
  inv = [0] * (nd + 2)
  for c, d in enumerate((rhs_spec[1], *rhs_spec[2:], rhs_spec[0])):
    inv[d] = c
  return [jnp.transpose(w, inv)]


TRANSPOSES[C.prims.conv_general_dilated_p] = _conv_transpose
