"""Regression: > 64 output directions through a 1×1-spatial conv (XLA CPU vmap-of-conv-VJP bug).

On jax 0.10.2 CPU, `vmap` of a conv VJP over more than 64 cotangents silently returns zero weight
gradients; the engines map over the output basis in chunks of ≤ 64 rows. For y = x·W (a 1×1
conv), the exact NTK is |x|² I, independent of any reference that might hit the same bug.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_zoo


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products",
                                            "structured_derivatives"])
@pytest.mark.parametrize("vmap_axes", [None, 0])
def test_many_outputs_through_1x1_conv(implementation, vmap_axes):
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 256))
  w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 256, 512))

  def f(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(x.shape[0], -1)[:, :100]

  k = jax.jit(ntk_zoo.ntk_fn(f, implementation=implementation, trace_axes=(),
                             vmap_axes=vmap_axes))(x, None, w)
  exact = float(jnp.sum(x ** 2)) * np.eye(100)
  err = np.abs(np.asarray(k[0, 0]) - exact).max() / exact.max()
  assert err < 1e-5, err
