"""Every NTK engine against the brute-force `reference_ntk`, over the model cases of `ntk_cases`.

Grid: case x implementation x trace_axes in {(), (-1,)} x diagonal_axes in {(), (0,)} x
vmap_axes in {None, 0} x x2 in {None, given}.

* float32: the full grid, with the kernel run under `jax.jit`, compared with the float64
  reference (max-normalized error <= 1e-4).
* float64: the kernel run eagerly (no jit) with `jax_enable_x64`, compared at rtol 1e-10. To
  keep the file fast on 2 cores, float64 runs on a subset of the grid: every case with every
  implementation and with each of its settings (trace, diagonal, vmap, x2) taking each value
  at least once (see `_FLOAT64_GRID`), rather than the full 16-point product.

The cases draw their numbers in float32 and cast, so the float32 and float64 variants of a case
hold the same values and one float64 reference (cached) serves both.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import CASES, IMPLEMENTATIONS, N1
from ntk_zoo import Implementation, ntk_fn
from ntk_zoo.testing import assert_ntk_close, reference_ntk

TRACE = {"trace": (-1,), "full": ()}
DIAG = {"pairs": (), "diag0": (0,)}
VMAP = {"novmap": None, "vmap0": 0}
X2 = {"x2none": False, "x2given": True}

# float64 subset: (trace, diagonal, vmap, x2) settings; each value of each option appears at
# least once, and the full NTK appears both with and without the diagonal and vmap.
_FLOAT64_GRID = [
    ("full", "pairs", "novmap", "x2given"),
    ("full", "diag0", "vmap0", "x2none"),
    ("trace", "pairs", "vmap0", "x2given"),
    ("trace", "diag0", "novmap", "x2given"),
]


def _get_case(name: str, dtype, diagonal_axes, x2_given: bool):
  # diagonal_axes=(0,) needs equal batch sizes when x2 is given.
  f, params, x1, x2 = CASES[name](dtype, n2=N1 if 0 in diagonal_axes else 2)
  return f, params, x1, (x2 if x2_given else None)


@functools.cache
def _reference(name: str, trace_axes, diagonal_axes, x2_given: bool):
  """Float64 brute-force kernel for a case (numpy arrays), computed once per setting."""
  with jax.enable_x64(True):
    f, params, x1, x2 = _get_case(name, jnp.float64, diagonal_axes, x2_given)
    return reference_ntk(f, x1, x2, params, trace_axes=trace_axes, diagonal_axes=diagonal_axes)


def _leaf_dtypes(tree):
  return {np.dtype(l.dtype) for l in jax.tree_util.tree_leaves(tree)}


@pytest.mark.parametrize("x2", X2)
@pytest.mark.parametrize("vmap", VMAP)
@pytest.mark.parametrize("diag", DIAG)
@pytest.mark.parametrize("trace", TRACE)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_float32_jit_matches_reference(case, implementation, trace, diag, vmap, x2):
  trace_axes, diagonal_axes = TRACE[trace], DIAG[diag]
  f, params, x1, x2_ = _get_case(case, jnp.float32, diagonal_axes, X2[x2])
  kernel = ntk_fn(f, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes, vmap_axes=VMAP[vmap])
  actual = jax.jit(kernel)(x1, x2_, params)
  assert _leaf_dtypes(actual) == {np.dtype(np.float32)}
  expected = _reference(case, trace_axes, diagonal_axes, X2[x2])
  assert_ntk_close(actual, expected, dtype=np.float32)


@pytest.mark.parametrize("setting", _FLOAT64_GRID, ids="-".join)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_float64_matches_reference(case, implementation, setting, x64):
  trace, diag, vmap, x2 = setting
  trace_axes, diagonal_axes = TRACE[trace], DIAG[diag]
  f, params, x1, x2_ = _get_case(case, jnp.float64, diagonal_axes, X2[x2])
  kernel = ntk_fn(f, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes, vmap_axes=VMAP[vmap])
  actual = kernel(x1, x2_, params)
  assert _leaf_dtypes(actual) == {np.dtype(np.float64)}
  assert_ntk_close(actual, _reference(case, trace_axes, diagonal_axes, X2[x2]))


# ---------------------------------------------------------------------------------------------
# Output shapes: the documented convention (see `ntk_fn`'s docstring).

def _dense(params, x):
  return x @ params["w"]  # (N, O)


def _dense3(params, x):
  return jnp.einsum("nhi,io->nho", x, params["w"])  # (N, H, O)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("trace_axes, diagonal_axes, x2_batch, expected", [
    # Output (N, O) = (3, 4); x2 of batch 2 (3 for the diagonal).
    ((), (), 2, (3, 2, 4, 4)),        # Full NTK: (N1, N2, O, O).
    ((-1,), (), 2, (3, 2)),           # Traced logits: (N1, N2).
    ((1,), (), 2, (3, 2)),            # Same axis, non-negative index.
    ((), (0,), 3, (3, 4, 4)),         # Diagonal over the batch: (N, O, O).
    ((-1,), (0,), 3, (3,)),           # Diagonal + traced: (N,).
])
def test_output_shape_2d(implementation, trace_axes, diagonal_axes, x2_batch, expected):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
  x1 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
  x2 = jnp.asarray(rng.standard_normal((x2_batch, 5)), jnp.float32)
  kernel = ntk_fn(_dense, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes)
  assert kernel(x1, x2, params).shape == expected


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("trace_axes, diagonal_axes, expected", [
    ((-1,), (), (3, 2, 6, 6)),           # (N1, N2, H1, H2).
    ((), (), (3, 2, 6, 6, 4, 4)),        # (N1, N2, H1, H2, O1, O2).
    ((1,), (), (3, 2, 4, 4)),            # (N1, N2, O1, O2).
    ((-1,), (1,), (3, 2, 6)),            # (N1, N2, H).
    ((0, 2), (), (6, 6)),                # Batch traced too: (H1, H2) — needs equal batches.
])
def test_output_shape_3d(implementation, trace_axes, diagonal_axes, expected):
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
  x1 = jnp.asarray(rng.standard_normal((3, 6, 5)), jnp.float32)
  x2 = jnp.asarray(rng.standard_normal((3 if 0 in trace_axes else 2, 6, 5)), jnp.float32)
  kernel = ntk_fn(_dense3, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes)
  actual = kernel(x1, x2, params)
  assert actual.shape == expected
  assert_ntk_close(actual, reference_ntk(_dense3, x1, x2, params, trace_axes=trace_axes,
                                         diagonal_axes=diagonal_axes))


def test_output_shape_pytree():
  f, params, x1, x2 = CASES["pytree_outputs"](jnp.float32)
  k = ntk_fn(f, implementation="jacobian_contraction", trace_axes=())(x1, x2, params)
  assert set(k) == {"a", "b"}
  assert k["a"].shape == (3, 2, 3, 3)
  assert k["b"].shape == (3, 2, 2, 2, 4, 4)


# ---------------------------------------------------------------------------------------------
# Implementation given as string aliases, ints and the enum.

@pytest.mark.parametrize("implementation, member", [
    ("jacobian_contraction", Implementation.JACOBIAN_CONTRACTION),
    ("jc", Implementation.JACOBIAN_CONTRACTION),
    ("jacobian", Implementation.JACOBIAN_CONTRACTION),
    ("Jacobian_Contraction", Implementation.JACOBIAN_CONTRACTION),
    (1, Implementation.JACOBIAN_CONTRACTION),
    (Implementation.JACOBIAN_CONTRACTION, Implementation.JACOBIAN_CONTRACTION),
    ("ntk_vector_products", Implementation.NTK_VECTOR_PRODUCTS),
    ("vp", Implementation.NTK_VECTOR_PRODUCTS),
    ("ntk_vp", Implementation.NTK_VECTOR_PRODUCTS),
    (2, Implementation.NTK_VECTOR_PRODUCTS),
    (Implementation.NTK_VECTOR_PRODUCTS, Implementation.NTK_VECTOR_PRODUCTS),
    ("structured_derivatives", Implementation.STRUCTURED_DERIVATIVES),
    ("structured", Implementation.STRUCTURED_DERIVATIVES),
    ("sd", Implementation.STRUCTURED_DERIVATIVES),
    (3, Implementation.STRUCTURED_DERIVATIVES),
    (Implementation.STRUCTURED_DERIVATIVES, Implementation.STRUCTURED_DERIVATIVES),
])
def test_implementation_aliases(implementation, member):
  f, params, x1, x2 = CASES["mlp_tanh"](jnp.float32)
  kernel = ntk_fn(f, implementation=implementation, trace_axes=())
  assert kernel.implementation is member
  assert_ntk_close(kernel(x1, x2, params), _reference("mlp_tanh", (), (), True), dtype=np.float32)


@pytest.mark.parametrize("implementation", ["auto", 0, Implementation.AUTO])
def test_implementation_auto_aliases(implementation):
  # Only the alias resolution: the auto engine is tested with its own module.
  f = CASES["mlp_tanh"](jnp.float32)[0]
  assert ntk_fn(f, implementation=implementation).implementation is Implementation.AUTO


def test_default_implementation_is_auto():
  f = CASES["mlp_tanh"](jnp.float32)[0]
  assert ntk_fn(f).implementation is Implementation.AUTO


# ---------------------------------------------------------------------------------------------
# dtype end to end.

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_end_to_end_under_jit(implementation, x64):
  f, params, x1, x2 = CASES["cnn"](jnp.float64)
  assert _leaf_dtypes(params) == {np.dtype(np.float64)}
  kernel = jax.jit(ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0))
  actual = kernel(x1, x2, params)
  assert actual.dtype == np.float64
  assert_ntk_close(actual, _reference("cnn", (), (), True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_stays_float32_under_x64(implementation, x64):
  # With x64 on, float32 params/inputs must not be silently promoted to float64.
  f, params, x1, x2 = CASES["mlp_tanh"](jnp.float32)
  actual = ntk_fn(f, implementation=implementation, trace_axes=())(x1, x2, params)
  assert actual.dtype == np.float32


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_f_kwargs_are_passed(implementation):
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
  x1 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)

  def f(params, x, scale=1.0):
    return scale * jnp.tanh(x @ params["w"])

  kernel = ntk_fn(f, implementation=implementation, trace_axes=())
  k1, k2 = kernel(x1, None, params), kernel(x1, None, params, scale=2.0)
  np.testing.assert_allclose(np.asarray(k2), 4.0 * np.asarray(k1), rtol=1e-5, atol=1e-6)
