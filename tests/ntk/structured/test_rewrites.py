"""Transpose overrides of the sweep (`rewrites.TRANSPOSES`) against JAX's own transposes.

Each case is a convolution y = conv(x, W) with W constant (or x constant: the weight
gradient); the override's x̄ (W̄) for a random ȳ must equal `jax.vjp`'s in float64, for every layout, stride, padding and window it accepts,
and it must decline (None) the convolutions it leaves to JAX.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

from ntk_zoo.ntk.structured.rewrites import TRANSPOSES

CONV = TRANSPOSES[lax.conv_general_dilated_p]

# (dimension numbers, strides, padding, x shape, window)
CASES = {
    "1x1": (("NHWC", "HWIO", "NHWC"), (1, 1), ((0, 0), (0, 0)), (2, 7, 7, 5), (1, 1)),
    "1x1-s2": (("NHWC", "HWIO", "NHWC"), (2, 2), ((0, 0), (0, 0)), (2, 7, 8, 5), (1, 1)),
    "1x1-nchw-pad": (("NCHW", "OIHW", "NCHW"), (2, 1), ((1, 0), (0, 2)), (2, 5, 7, 6), (1, 1)),
    "1x1-mixed-layouts": (("NHWC", "OIHW", "NCHW"), (3, 2), ((1, 1), (0, 1)), (1, 8, 9, 3),
                          (1, 1)),
    "3x3-s2": (("NHWC", "HWIO", "NHWC"), (2, 2), ((1, 1), (1, 1)), (2, 8, 8, 3), (3, 3)),
    "3x3-s2-odd": (("NHWC", "HWIO", "NHWC"), (2, 2), ((1, 1), (1, 1)), (2, 7, 9, 3), (3, 3)),
    "3x3-s2-same": (("NHWC", "HWIO", "NHWC"), (2, 2), ((0, 1), (0, 1)), (2, 8, 8, 3), (3, 3)),
    "7x7-s2-stem": (("NHWC", "HWIO", "NHWC"), (2, 2), ((3, 3), (3, 3)), (1, 11, 10, 3),
                    (7, 7)),
    "4x3-s3x2-nchw": (("NCHW", "OIHW", "NCHW"), (3, 2), ((0, 2), (1, 0)), (2, 4, 10, 9),
                      (4, 3)),
    "1d-k5-s3": (("NWC", "WIO", "NWC"), (3,), ((2, 1),), (2, 13, 3), (5,)),
}


def _case(name, x64=True):
  dn, strides, pad, xs, win = CASES[name]
  rng = np.random.default_rng(0)
  x = rng.standard_normal(xs)
  sizes = dict(zip("HW", win)) if len(win) == 2 else {"W": win[0]}
  sizes.update(I=xs[dn[0].index("C")], O=4)
  w = rng.standard_normal([sizes[c] for c in dn[1]])

  def f(x):
    return lax.conv_general_dilated(x, w, strides, pad, dimension_numbers=dn)

  eqn = next(e for e in jax.make_jaxpr(f)(x).eqns if e.primitive is lax.conv_general_dilated_p)
  y, vjp = jax.vjp(f, x)
  ct = rng.standard_normal(y.shape)
  return eqn, w, ct, vjp(ct)[0]


@pytest.mark.parametrize("name", list(CASES))
def test_conv_weight_gradient_equals_jax(x64, name):
  dn, strides, pad, xs, _ = CASES[name]
  eqn, w, ct, _ = _case(name)
  x = np.random.default_rng(2).standard_normal(xs)
  f = lambda w: lax.conv_general_dilated(x, w, strides, pad, dimension_numbers=dn)  # noqa: E731
  ref = jax.vjp(f, w)[1](ct)[0]
  eqn_w = next(e for e in jax.make_jaxpr(f)(w).eqns if e.primitive is lax.conv_general_dilated_p)
  out = CONV(eqn_w, [1], [x, None], ct)
  assert out is not None
  np.testing.assert_allclose(np.asarray(out[0]), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_conv_transpose_equals_jax(x64, name):
  eqn, w, ct, ref = _case(name)
  out = CONV(eqn, [0], [None, w], ct)
  assert out is not None, "the override declined a convolution it handles"
  assert out[0].shape == ref.shape
  np.testing.assert_allclose(np.asarray(out[0]), ref, rtol=1e-12, atol=1e-12)


def test_conv_transpose_under_vmap_over_directions(x64):
  """The sweep calls the rule per example and row, vmapped over both."""
  eqn, w, _, _ = _case("3x3-s2")
  rng = np.random.default_rng(1)
  cts = rng.standard_normal((3, 70, *eqn.outvars[0].aval.shape))
  got = jax.vmap(jax.vmap(lambda c: CONV(eqn, [0], [None, w], c)[0]))(cts)
  f = lambda x: lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),  # noqa: E731
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x0 = np.zeros(eqn.invars[0].aval.shape)
  ref = jax.vmap(jax.vmap(lambda c: jax.linear_transpose(f, x0)(c)[0]))(cts)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_conv_transpose_declines_what_jax_does_well():
  dn = ("NHWC", "HWIO", "NHWC")
  x = np.ones((1, 6, 6, 2), np.float32)
  for kw in (dict(window_strides=(1, 1), padding=((1, 1), (1, 1))),  # stride-1 3×3
             dict(window_strides=(2, 2), padding="SAME", rhs_dilation=(2, 2)),
             dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2))):
    w = np.ones((3, 3, 2, 4), np.float32)
    f = lambda x, kw=kw, w=w: lax.conv_general_dilated(x, w, dimension_numbers=dn, **kw)  # noqa: E731
    eqn = next(e for e in jax.make_jaxpr(f)(x).eqns
               if e.primitive is lax.conv_general_dilated_p)
    ct = np.ones(eqn.outvars[0].aval.shape, np.float32)
    assert CONV(eqn, [0], [None, w], ct) is None, kw
  # Grouped 1×1 convolutions and θ-side transposes are JAX's too.
  w = np.ones((1, 1, 1, 4), np.float32)
  f = lambda x: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn,  # noqa: E731
                                         feature_group_count=2)
  eqn = next(e for e in jax.make_jaxpr(f)(x).eqns if e.primitive is lax.conv_general_dilated_p)
  ct = np.ones(eqn.outvars[0].aval.shape, np.float32)
  assert CONV(eqn, [0], [None, w], ct) is None
  assert CONV(eqn, [1], [x, None], ct) is None  # Grouped: JAX's rule.
