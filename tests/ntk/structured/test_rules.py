"""Each structured-derivatives rule against the unstructured path and the brute-force reference.

For every view rule (`rules_views.py`) and structure rule (`rules_linear.py`, `rules_index.py`)
a tiny function exercises exactly that primitive on a parameter. Each case checks, in float64
(rtol 1e-10):

* structured kernel == the same engine with the rule removed (`rules_disabled(prim)`: the
  parameter then takes the unstructured, identity/materialized path) == `reference_ntk`;
* the rule is actually hit: the parameter's use is cut at ("eqn", k) of the expected structure
  primitive (for view rules: the structure primitive downstream of the view), and with the rule
  disabled it is not.

Identity-path primitives (add, concatenate, pad, select_n, reduce_sum) must be cut at their
operand without a warning; a primitive with no rule (`cond`, or `cumsum` once its identity
registration is removed) must warn `UnstructuredPrimitiveWarning` once, naming it, and stay
exact.

Every function is per-example along axis 0 of its input and output, and is checked at two
complementary settings: (trace_axes=(), vmap_axes=None) and (trace_axes=(-1,), vmap_axes=0).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ntk_zoo import ntk_fn
from ntk_zoo.ntk.structured import UnstructuredPrimitiveWarning, rules_disabled
from ntk_zoo.ntk.structured import program as program_lib
from ntk_zoo.ntk.structured._compat import is_literal
from ntk_zoo.ntk.structured._compat import prims as P
from ntk_zoo.ntk.structured.program import build_program
from ntk_zoo.ntk.structured.flatten import flatten
from ntk_zoo.ntk.structured.rules import IDENTITY_PRIMITIVES
from ntk_zoo.testing import assert_ntk_close, reference_ntk

SETTINGS = {"full-novmap": ((), None), "trace-vmap0": ((-1,), 0)}
N1, N2 = 2, 3


def rotate(names, offset: int = 0) -> list:
  """pytest params (name, setting): the two settings alternate over the cases (one compile
  of each kernel per case keeps the file within its CPU budget)."""
  settings = list(SETTINGS)
  return [pytest.param(n, settings[(i + offset) % 2], id=f"{n}-{settings[(i + offset) % 2]}")
          for i, n in enumerate(names)]


# ---------------------------------------------------------------------------------------------
# Helpers.

def _rand(seed: int, *shape: int, scale: float = 1.0) -> jax.Array:
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float64)


def _ints(seed: int, *shape: int, low: int = -3, high: int = 4) -> jax.Array:
  """Small integer-valued float64 data: products and sums of these are exact in float32."""
  return jnp.asarray(np.random.default_rng(seed).integers(low, high, shape), jnp.float64)


def program_of(f: Callable, params: Any, x: Any) -> program_lib.Program:
  """The structured program of f at x, built as the structured engine builds it."""
  theta, tree = jax.tree_util.tree_flatten(params)
  _, f_lin = jax.linearize(lambda *t: f(jax.tree_util.tree_unflatten(tree, t), x), *theta)
  closed = jax.make_jaxpr(f_lin)(*theta)
  return build_program(flatten(closed), len(closed.consts))


def uses(f: Callable, params: Any, x: Any) -> list[tuple[int, str, str]]:
  """(leaf, site kind, primitive name) of every parameter use of the structured program."""
  program = program_of(f, params, x)
  out = []
  for u in program.uses:
    kind = u.site[0]
    prim = str(program.jaxpr.eqns[u.site[1]].primitive) if kind in ("eqn", "operand") else ""
    out.append((u.leaf, kind, prim))
  return out


def _jit(fn, *args):
  """fn(*args) under `jax.jit`, compiled at XLA optimization level 0.

  One compilation per kernel is ~5x cheaper on CPU than eager op-by-op dispatch of these
  tiny, all-different programs, and level 0 halves it again (float64 results are unchanged
  to rounding). Rules are looked up while tracing, i.e. inside `lower`.
  """
  compiled = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})
  return compiled(*args)


def kernels(f, params, x1, x2, setting: str, disabled: tuple = ()):
  """(structured, structured with `disabled` rules removed (all if empty), reference)."""
  trace_axes, vmap_axes = SETTINGS[setting]
  kernel = ntk_fn(f, implementation="structured_derivatives", trace_axes=trace_axes,
                  vmap_axes=vmap_axes)
  sd = _jit(lambda a, b, p: kernel(a, b, p), x1, x2, params)
  with rules_disabled(*disabled):
    unstructured = _jit(lambda a, b, p: kernel(a, b, p), x1, x2, params)
  ref = reference_ntk(f, x1, x2, params, trace_axes=trace_axes)
  return sd, unstructured, ref


def check_exact(sd, unstructured, ref) -> None:
  """All three agree to float64 tolerance (rtol 1e-10); the structured kernel is float64."""
  for k in jax.tree_util.tree_leaves(sd):
    assert k.dtype == jnp.float64, k.dtype
  assert_ntk_close(sd, ref, dtype=np.float64)
  assert_ntk_close(unstructured, ref, dtype=np.float64)
  assert_ntk_close(sd, unstructured, dtype=np.float64)
  assert np.max(np.abs(ref)) > 0  # Not trivially zero.


@dataclasses.dataclass(frozen=True)
class Case:
  """`make()` -> (f, params, x1, x2) (built under x64); `disable`: the primitives whose rules
  are under test; `expect`: the primitive of each (eqn) use the structured program must have."""
  make: Callable[[], tuple]
  disable: tuple
  expect: tuple[str, ...]


def _run_case(case: Case, setting: str) -> None:
  f, params, x1, x2 = case.make()
  with warnings.catch_warnings():
    warnings.simplefilter("error", UnstructuredPrimitiveWarning)
    got = uses(f, params, x1)
    assert [(kind, prim) for _, kind, prim in got] == [("eqn", p) for p in case.expect], got
    with rules_disabled(*case.disable):
      plain = uses(f, params, x1)
    assert all(kind != "eqn" or prim not in {str(p) for p in case.disable}
               for _, kind, prim in plain), plain
    assert plain != got, "disabling the rule did not change the program"
    check_exact(*kernels(f, params, x1, x2, setting, case.disable))


# ---------------------------------------------------------------------------------------------
# View rules: a parameter re-indexed before a structure primitive consumes it.

def _dense_case(shape, view: Callable, x_shape, seed=0, data=_rand):
  """f(w, x) = x @ view(w) (x: (N, *x_shape), contracting x's last axis)."""
  def make():
    w = data(seed, *shape)
    f = lambda w, x: jnp.tensordot(x, view(w), axes=1)
    return f, w, data(seed + 1, N1, *x_shape), data(seed + 2, N2, *x_shape)
  return make


def _convert_f32_to_f64():
  w = _ints(0, 4, 5).astype(jnp.float32)
  f = lambda w, x: x @ w.astype(jnp.float64)
  return f, w, _ints(1, N1, 4), _ints(2, N2, 4)


VIEW_CASES = {
    # f64 -> f32 -> f64 on integer-valued data (exact in float32).
    "convert_roundtrip": Case(_dense_case((4, 5), lambda w: w.astype(jnp.float32).astype(
        jnp.float64), (4,), data=_ints), (P.convert_element_type_p,), ("dot_general",)),
    "convert_f32_param": Case(_convert_f32_to_f64, (P.convert_element_type_p,),
                              ("dot_general",)),
    "copy": Case(_dense_case((4, 5), lambda w: jnp.array(w, copy=True), (4,)), (P.copy_p,),
                 ("dot_general",)),
    "transpose_2d": Case(_dense_case((5, 4), lambda w: w.T, (4,)), (P.transpose_p,),
                         ("dot_general",)),
    "transpose_3d": Case(_dense_case((3, 2, 4), lambda w: jnp.transpose(w, (2, 0, 1)), (4,)),
                         (P.transpose_p,), ("dot_general",)),
    "squeeze_lead": Case(_dense_case((1, 4, 5), lambda w: jnp.squeeze(w, 0), (4,)),
                         (P.squeeze_p,), ("dot_general",)),
    "squeeze_mid": Case(_dense_case((4, 1, 5), lambda w: jnp.squeeze(w, 1), (4,)),
                        (P.squeeze_p,), ("dot_general",)),
    # Unit axis grows to 5: a tiled (local) axis on the y side.
    "broadcast_tile": Case(_dense_case((4, 1), lambda w: jnp.broadcast_to(w, (4, 5)), (4,)),
                           (P.broadcast_in_dim_p,), ("dot_general",)),
    "reshape_add_unit": Case(_dense_case((4, 5), lambda w: w.reshape(4, 1, 5), (4,)),
                             (P.reshape_p,), ("dot_general",)),
    "reshape_drop_unit": Case(_dense_case((1, 4, 1, 5), lambda w: w.reshape(4, 5), (4,)),
                              (P.reshape_p,), ("dot_general",)),
    "reshape_merge": Case(_dense_case((2, 2, 5), lambda w: w.reshape(4, 5), (4,)),
                          (P.reshape_p,), ("dot_general",)),
    "reshape_flat": Case(_dense_case((20,), lambda w: w.reshape(4, 5), (4,)), (P.reshape_p,),
                         ("dot_general",)),
    "reshape_split": Case(_dense_case((4, 6), lambda w: w.reshape(4, 2, 3), (4,)),
                          (P.reshape_p,), ("dot_general",)),
    "slice": Case(_dense_case((4, 5), lambda w: w[1:3], (2,)), (P.slice_p,), ("dot_general",)),
    "slice_2d": Case(_dense_case((4, 5), lambda w: w[1:3, 2:5], (2,)), (P.slice_p,),
                     ("dot_general",)),
}


def _broadcast_in_mul():
  # w (4,) -> broadcast_in_dim to (1, 4) -> mul with x (N, 4): unit-axis broadcasting.
  f = lambda w, x: x * w
  return f, _rand(0, 4), _rand(1, N1, 4), _rand(2, N2, 4)


def _broadcast_new_axis():
  # w (4, 5) tiled over a new leading axis that is a batch dim of the dot.
  def f(w, x):  # x (N, 2, 4)
    wb = jnp.broadcast_to(w, (2, 4, 5))
    return jnp.swapaxes(lax.dot_general(x, wb, (((2,), (1,)), ((1,), (0,)))), 0, 1)
  return f, _rand(0, 4, 5), _rand(1, N1, 2, 4), _rand(2, N2, 2, 4)


def _disjoint_slices():
  f = lambda w, x: x @ w[0:2] + jnp.tanh(x @ w[2:4])
  return f, _rand(0, 4, 3), _rand(1, N1, 2), _rand(2, N2, 2)


def _scan_stack():
  def f(ws, x):
    h, _ = lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, ws)
    return h
  return f, _rand(0, 3, 4, 4, scale=0.5), _rand(1, N1, 4), _rand(2, N2, 4)


VIEW_CASES.update({
    "broadcast_mul": Case(_broadcast_in_mul, (P.broadcast_in_dim_p,), ("mul",)),
    "broadcast_new_axis": Case(_broadcast_new_axis, (P.broadcast_in_dim_p,), ("dot_general",)),
    "slices_disjoint": Case(_disjoint_slices, (P.slice_p,), ("dot_general", "dot_general")),
    # Unrolled scan: each step is slice -> squeeze -> dot of its own layer.
    "slice_scan": Case(_scan_stack, (P.slice_p,), ("dot_general",) * 3),
})


@pytest.mark.parametrize("name, setting", rotate(list(VIEW_CASES)))
def test_view_rule(x64, name, setting):
  _run_case(VIEW_CASES[name], setting)


def test_overlapping_slices_fall_back_exactly(x64):
  """Two uses of overlapping windows cannot share θ letters: the leaf is materialized."""
  f = lambda w, x: x @ w[0:3] + jnp.tanh(x @ w[1:4])
  w, x1, x2 = _rand(0, 4, 3), _rand(1, N1, 3), _rand(2, N2, 3)
  assert [kind for _, kind, _ in uses(f, w, x1)] == ["invar"]
  for setting in SETTINGS:
    check_exact(*kernels(f, w, x1, x2, setting, (P.slice_p,)))


# ---------------------------------------------------------------------------------------------
# dot_general: (theta shape, x per-example shape, dimension numbers, theta side, out transpose).

DOT_CASES = {
    # y = x @ W.
    "rhs_standard": ((4, 5), (4,), (((1,), (0,)), ((), ())), 1, None),
    # y = x @ W.T without a transpose op: W contracted on its last axis.
    "rhs_contract_last": ((5, 4), (4,), (((1,), (1,)), ((), ())), 1, None),
    # W as lhs: (5, N) -> transposed.
    "lhs_standard": ((4, 5), (4,), (((0,), (1,)), ((), ())), 0, (1, 0)),
    # Two contracting axes, in swapped order.
    "rhs_two_contracting": ((3, 2, 4), (2, 3), (((1, 2), (1, 0)), ((), ())), 1, None),
    # Batch dims, W as rhs: x (N, B, 3), W (B, 3, 4) -> (B, N, 4).
    "rhs_batch": ((2, 3, 4), (2, 3), (((2,), (1,)), ((1,), (0,))), 1, (1, 0, 2)),
    # Batch dims, W as lhs: W (B, 4, 3), x (N, B, 3) -> (B, 4, N).
    "lhs_batch": ((2, 4, 3), (2, 3), (((2,), (2,)), ((0,), (1,))), 0, (2, 0, 1)),
    # Batch dim not leading on W: W (3, B, 4).
    "rhs_batch_mid": ((3, 2, 4), (2, 3), (((2,), (0,)), ((1,), (1,))), 1, (1, 0, 2)),
    # Batch and two free axes on W, W as lhs: W (B, 2, 3, 5), x (N, B, 3) -> (B, 2, 5, N).
    "lhs_batch_free": ((2, 2, 3, 5), (2, 3), (((2,), (2,)), ((0,), (1,))), 0, (3, 0, 1, 2)),
}


def _dot_case(theta_shape, x_shape, dn, side, perm):
  def make():
    w = _rand(0, *theta_shape)

    def f(w, x):
      y = lax.dot_general(x, w, dn) if side == 1 else lax.dot_general(w, x, dn)
      return y if perm is None else jnp.transpose(y, perm)

    return f, w, _rand(1, N1, *x_shape), _rand(2, N2, *x_shape)
  return Case(make, (P.dot_general_p,), ("dot_general",))


def _dot_both_sides():
  # y = x @ (W @ W): W is consumed as lhs at one use and as rhs at the other.
  f = lambda w, x: x @ (w @ w)
  return f, _rand(0, 4, 4, scale=0.5), _rand(1, N1, 4), _rand(2, N2, 4)


@pytest.mark.parametrize("name, setting", rotate([*DOT_CASES, "both_sides"]))
def test_dot_general_rule(x64, name, setting):
  if name == "both_sides":
    case = Case(_dot_both_sides, (P.dot_general_p,), ("dot_general", "dot_general"))
  else:
    case = _dot_case(*DOT_CASES[name])
  _run_case(case, setting)


# ---------------------------------------------------------------------------------------------
# mul / div by constants (w.r.t. θ): literals, scalars, arrays, unit-axis broadcasting.

_C45 = lambda: 1.0 + _rand(7, 4, 5) ** 2  # Away from zero (also a divisor).
_C15 = lambda: 1.0 + _rand(8, 1, 5) ** 2

_LAX = {jnp.multiply: lax.mul, jnp.divide: lax.div}

ELEMENTWISE = {
    # name: (theta shape, g(op) -> f(w, x), x per-example shape)
    # lax.mul/div with a Python scalar keep a Literal in the jaxpr (jnp makes it a constant).
    "literal": ((4, 5), lambda op: lambda w, x: x @ _LAX[op](w, 2.0), (4,)),
    "scalar_const": ((4, 5), lambda op: lambda w, x: x @ op(w, jnp.asarray(3.0)), (4,)),
    "array_const": ((4, 5), lambda op: lambda w, x: x @ op(w, _C45()), (4,)),
    "unit_axis_const": ((4, 5), lambda op: lambda w, x: x @ op(w, _C15()), (4,)),
    # θ with unit axes against an x-dependent operand: (1, 1, 5) * (N, 4, 1) -> (N, 4, 5).
    "unit_axis_theta": ((1, 5), lambda op: lambda w, x: op(w[None], 1.0 + x[:, :, None] ** 2),
                        (4,)),
    # Same shape, x-dependent: (N, 4) * (N, 4) after broadcasting θ over the batch.
    "x_dependent": ((3, 4), lambda op: lambda w, x: op(w[None], 1.0 + x ** 2).sum(1), (3, 4)),
    # Scalar θ: all of y's letters are local.
    "scalar_theta": ((), lambda op: lambda w, x: op(w, 1.0 + x ** 2), (3,)),
}


_MUL_DIV = [pytest.param(p.values[0], prim, p.values[1], id=f"{prim}-{p.id}")
            for prim, offset in (("mul", 0), ("div", 1)) for p in rotate(ELEMENTWISE, offset)]


@pytest.mark.parametrize("name, prim, setting", _MUL_DIV)
def test_mul_div_rule(x64, name, prim, setting):
  theta_shape, g, x_shape = ELEMENTWISE[name]
  op = {"mul": jnp.multiply, "div": jnp.divide}[prim]

  def make():
    return g(op), _rand(0, *theta_shape), _rand(1, N1, *x_shape), _rand(2, N2, *x_shape)

  p = {"mul": P.mul_p, "div": P.div_p}[prim]
  if name == "literal":
    f, w, x1, _ = make()
    program = program_of(f, w, x1)
    (use,) = program.uses
    assert any(is_literal(v) for v in program.jaxpr.eqns[use.site[1]].invars)
  _run_case(Case(make, (p,), (prim,)), setting)


def test_mul_theta_on_either_side(x64):
  """c * θ (θ as operand 1) and θ * c (operand 0) are the same diagonal structure."""
  c = _C45()
  f = lambda w, x: x @ (c * w) + jnp.tanh(x @ (w * c))
  w, x1, x2 = _rand(0, 4, 5), _rand(1, N1, 4), _rand(2, N2, 4)
  assert [prim for _, _, prim in uses(f, w, x1)] == ["mul", "mul"]
  check_exact(*kernels(f, w, x1, x2, "full-novmap", (P.mul_p,)))


# ---------------------------------------------------------------------------------------------
# conv_general_dilated (θ = the kernel).

# name: (x per-example shape, kernel shape, dimension numbers, strides, padding, lhs_dilation,
#        rhs_dilation, feature_group_count)
CONV_CASES = {
    "2d_nhwc_same": ((5, 5, 2), (3, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME",
                     None, None, 1),
    "2d_nchw_stride_explicit": ((2, 6, 5), (3, 2, 3, 2), ("NCHW", "OIHW", "NCHW"), (2, 2),
                                ((1, 0), (0, 1)), None, None, 1),
    "2d_nhwc_stride_same": ((6, 5, 2), (3, 2, 2, 3), ("NHWC", "HWIO", "NHWC"), (2, 1), "SAME",
                            None, None, 1),
    "2d_lhs_dilation": ((4, 3, 2), (2, 2, 2, 3), ("NHWC", "HWIO", "NHWC"), (1, 1),
                        ((1, 1), (0, 1)), (2, 1), None, 1),
    "2d_rhs_dilation": ((6, 6, 2), (2, 2, 2, 2), ("NHWC", "HWIO", "NHWC"), (1, 1), "VALID",
                        None, (2, 2), 1),
    "2d_grouped": ((4, 4, 4), (2, 2, 2, 6), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", None,
                   None, 2),
    "2d_depthwise_nchw": ((3, 5, 5), (6, 1, 3, 3), ("NCHW", "OIHW", "NCHW"), (1, 1),
                          ((1, 1), (1, 1)), None, None, 3),
    "2d_mixed_specs": ((2, 5, 4), (2, 3, 2, 3), ("NCHW", "HWIO", "NHWC"), (1, 2), "SAME",
                       None, (1, 2), 1),
    "1d_nwc_stride_same": ((6, 2), (3, 2, 3), ("NWC", "WIO", "NWC"), (2,), "SAME", None, None,
                           1),
    "1d_ncw_grouped_dilated": ((4, 6), (4, 2, 2), ("NCW", "OIW", "NCW"), (1,), ((1, 0),),
                               None, (2,), 2),
    "1d_depthwise_lhs_dilation": ((5, 2), (3, 1, 2), ("NWC", "WIO", "NWC"), (1,), ((1, 1),),
                                  (2,), None, 2),
}


def _conv_fn(dn, strides, padding, lhs_dil, rhs_dil, groups):
  def f(w, x):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dil,
                                    rhs_dilation=rhs_dil, dimension_numbers=dn,
                                    feature_group_count=groups,
                                    precision=lax.Precision.HIGHEST)
  return f


@pytest.mark.parametrize("name, setting", rotate(list(CONV_CASES)))
def test_conv_rule(x64, name, setting):
  x_shape, k_shape, dn, strides, padding, lhs_dil, rhs_dil, groups = CONV_CASES[name]

  def make():
    f = _conv_fn(dn, strides, padding, lhs_dil, rhs_dil, groups)
    return f, _rand(0, *k_shape), _rand(1, N1, *x_shape), _rand(2, N2, *x_shape)

  _run_case(Case(make, (P.conv_general_dilated_p,), ("conv_general_dilated",)), setting)


def test_conv_with_theta_as_input_is_exact(x64):
  """θ as the conv's lhs (a learned input): the rule declines; the kernel stays exact."""
  def f(w, x):  # w (1, 4) is the signal, each example's x (1,) a 2-tap filter: out (N, 4).
    filters = jnp.broadcast_to(x[:, :, None], (x.shape[0], 1, 2))
    return lax.conv_general_dilated(w[None], filters, (1,), "SAME",
                                    dimension_numbers=("NCW", "OIW", "NCW"))[0]
  w, x1, x2 = _rand(0, 1, 4), _rand(1, N1, 1), _rand(2, N2, 1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnstructuredPrimitiveWarning)
    assert [kind for _, kind, _ in uses(f, w, x1)] == ["operand"]
    check_exact(*kernels(f, w, x1, x2, "full-novmap", (P.conv_general_dilated_p,)))


# ---------------------------------------------------------------------------------------------
# gather as an embedding lookup (x = integer ids).

_IN_RANGE = ([[0, 3], [4, 0]], [[1, 1], [3, 4], [2, 0]])
_OUT_OF_RANGE = ([[0, 7], [-2, 4]], [[5, 1], [-1, 4], [9, -6]])

GATHER_CASES = {
    # name: (table shape, lookup, (ids1, ids2))
    "index": ((5, 3), lambda t, ids: t[ids], _IN_RANGE),
    "index_negative_wraps": ((5, 3), lambda t, ids: t[ids], ([[0, -1], [-5, 2]],
                                                           [[-2, 1], [3, 4], [-1, 0]])),
    "take_default_out_of_range": ((5, 3), lambda t, ids: jnp.take(t, ids, axis=0),
                                  _OUT_OF_RANGE),
    "take_clip_out_of_range": ((5, 3), lambda t, ids: jnp.take(t, ids, axis=0, mode="clip"),
                               _OUT_OF_RANGE),
    "take_fill_out_of_range": ((5, 3), lambda t, ids: jnp.take(t, ids, axis=0, mode="fill"),
                               _OUT_OF_RANGE),
    "take_fill_in_range": ((5, 3), lambda t, ids: jnp.take(t, ids, axis=0, mode="fill"),
                           _IN_RANGE),
    "ids_1d": ((5, 3), lambda t, ids: t[ids], ([0, 4], [4, 2, 4])),
    "table_3d": ((4, 2, 3), lambda t, ids: t[ids], ([[0, 3], [1, 0]], [[3, 3], [2, 1], [0, 0]])),
    "then_dense": ((5, 3), lambda t, ids: jnp.tanh(t[ids]) @ jnp.arange(6.0).reshape(3, 2),
                   _IN_RANGE),
}


@pytest.mark.parametrize("name, setting", rotate(list(GATHER_CASES)))
def test_gather_rule(x64, name, setting):
  table_shape, lookup, (ids1, ids2) = GATHER_CASES[name]

  def make():
    return lookup, _rand(0, *table_shape), jnp.asarray(ids1), jnp.asarray(ids2)

  _run_case(Case(make, (P.gather_p,), ("gather",)), setting)


def test_gather_twice_pairs_uses(x64):
  """Two lookups of one table: all four pairs of uses (index equality) are summed."""
  f = lambda t, ids: t[ids] + 2.0 * jnp.take(t, ids[:, ::-1], axis=0, mode="fill")
  t = _rand(0, 5, 3)
  ids1, ids2 = jnp.asarray(_IN_RANGE[0]), jnp.asarray(_IN_RANGE[1])
  assert [prim for _, _, prim in uses(f, t, ids1)] == ["gather", "gather"]
  for setting in SETTINGS:
    check_exact(*kernels(f, t, ids1, ids2, setting, (P.gather_p,)))


# ---------------------------------------------------------------------------------------------
# Identity-path primitives: cut at the parameter view, no warning.

def _add_bias():
  f = lambda p, x: jnp.tanh(x @ p["w"]) + p["b"]
  params = {"b": _rand(0, 3), "w": _rand(1, 4, 3)}
  return f, params, _rand(2, N1, 4), _rand(3, N2, 4)


def _concat_cls():
  def f(p, x):
    h = x @ p["w"]  # (N, T, 3)
    cls = jnp.broadcast_to(p["cls"], (x.shape[0], 1, 3))
    return jnp.tanh(jnp.concatenate([cls, h], axis=1))
  params = {"cls": _rand(0, 1, 3), "w": _rand(1, 4, 3)}
  return f, params, _rand(2, N1, 2, 4), _rand(3, N2, 2, 4)


def _pad():
  f = lambda w, x: x @ jnp.pad(w, ((1, 0), (0, 2)))
  return f, _rand(0, 3, 2), _rand(1, N1, 4), _rand(2, N2, 4)


def _select():
  mask = jnp.asarray([[True, False, True], [False, True, True]])
  f = lambda w, x: x @ jnp.where(mask, w, 0.0)
  return f, _rand(0, 2, 3), _rand(1, N1, 2), _rand(2, N2, 2)


def _reduce_sum():
  f = lambda w, x: x * jnp.sum(w, axis=0)
  return f, _rand(0, 3, 4), _rand(1, N1, 4), _rand(2, N2, 4)


IDENTITY_CASES = {
    "add_bias": (_add_bias, {0: "add"}),
    "concatenate_cls": (_concat_cls, {0: "concatenate"}),
    "pad": (_pad, {0: "pad"}),
    "select_n": (_select, {0: "select_n"}),
    "reduce_sum": (_reduce_sum, {0: "reduce_sum"}),
}


@pytest.mark.parametrize("name, setting", rotate(list(IDENTITY_CASES)))
def test_identity_primitive(x64, name, setting, monkeypatch):
  make, expected = IDENTITY_CASES[name]
  f, params, x1, x2 = make()
  monkeypatch.setattr(program_lib, "_WARNED", set())
  with warnings.catch_warnings():
    warnings.simplefilter("error", UnstructuredPrimitiveWarning)
    got = uses(f, params, x1)
    for leaf, prim in expected.items():
      assert (leaf, "operand", prim) in got, got
    check_exact(*kernels(f, params, x1, x2, setting))


# ---------------------------------------------------------------------------------------------
# A primitive with no rule: warns once, naming it, and is exact.

def _cond():
  flag = jnp.asarray(1)  # A traced predicate keeps the cond (a Python bool would too).

  def f(w, x):
    return lax.cond(flag > 0, lambda w: jnp.tanh(x @ w), lambda w: x @ (2.0 * w), w)
  return f, _rand(0, 4, 3), _rand(1, N1, 4), _rand(2, N2, 4)


def _cumsum():
  f = lambda w, x: jnp.tanh(x @ jnp.cumsum(w, axis=0))
  return f, _rand(0, 4, 3), _rand(1, N1, 4), _rand(2, N2, 4)


def _record_unstructured(fn) -> list[str]:
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    fn()
  return [str(w.message) for w in record if issubclass(w.category, UnstructuredPrimitiveWarning)]


@pytest.mark.parametrize("name", ["cond", "cumsum"])
def test_unruled_primitive_warns_once_and_is_exact(x64, name, monkeypatch):
  monkeypatch.setattr(program_lib, "_WARNED", set())
  if name == "cumsum":
    monkeypatch.setattr(program_lib, "IDENTITY_PRIMITIVES", IDENTITY_PRIMITIVES - {P.cumsum_p})
  f, w, x1, x2 = {"cond": _cond, "cumsum": _cumsum}[name]()
  results = []

  def run():
    for setting in SETTINGS:  # Four traces of the program (x1 and x2, two settings).
      results.append(kernels(f, w, x1, x2, setting))

  messages = _record_unstructured(run)
  assert len(messages) == 1, messages
  assert f"'{name}'" in messages[0]
  for sd, unstructured, ref in results:
    check_exact(sd, unstructured, ref)
  # Once warned, later kernels stay silent.
  assert _record_unstructured(lambda: kernels(f, w, x1, x2, "full-novmap")) == []


# ---------------------------------------------------------------------------------------------
# Call-like wrappers and dtypes.

@jax.custom_vjp
def _scaled_sin(w, x):
  return jnp.sin(x @ w)


def _scaled_sin_fwd(w, x):
  return _scaled_sin(w, x), (w, x)


def _scaled_sin_bwd(res, g):
  w, x = res
  gz = g * jnp.cos(x @ w)
  return x.T @ gz, gz @ w.T


_scaled_sin.defvjp(_scaled_sin_fwd, _scaled_sin_bwd)


def test_custom_vjp_function_of_parameter(x64):
  """A `jax.custom_vjp` function of θ: `jax.linearize` turns it into a `custom_lin` equation,
  which has only a transpose rule; the kernel must still be exact (as jacobian contraction
  and `reference_ntk`, both reverse mode, are)."""
  w, x1, x2 = _rand(0, 4, 3), _rand(1, N1, 4), _rand(2, N2, 4)
  kernel = ntk_fn(_scaled_sin, implementation="structured_derivatives", trace_axes=())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnstructuredPrimitiveWarning)
    actual = kernel(x1, x2, w)
  assert_ntk_close(actual, reference_ntk(_scaled_sin, x1, x2, w, trace_axes=()))


def test_float32_parameter_on_unstructured_path_keeps_output_dtype(x64):
  """`ntk_fn` documents the kernel in the dtype of f's output. A float32 parameter converted
  to float64 *after* an identity-path primitive (here cumsum) is cut in float32; the kernel
  must still be float64 (and is, when the conversion comes first)."""
  w, x1 = _ints(0, 4, 3).astype(jnp.float32), _ints(1, N1, 4)
  for f in (lambda w, x: x @ jnp.cumsum(w.astype(jnp.float64), axis=0),
            lambda w, x: x @ jnp.cumsum(w, axis=0).astype(jnp.float64)):
    assert jax.eval_shape(f, w, x1).dtype == jnp.float64
    actual = ntk_fn(f, implementation="structured_derivatives", trace_axes=())(x1, None, w)
    assert actual.dtype == jnp.float64, actual.dtype
