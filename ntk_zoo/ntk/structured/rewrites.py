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

from collections.abc import Callable

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
