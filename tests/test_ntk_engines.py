"""Every NTK engine against the brute-force `reference_ntk`, over the model cases of `ntk_cases`.

Grid: case x implementation x trace_axes in {(), (-1,)} x diagonal_axes in {(), (0,)} x
vmap_axes in {None, 0} x x2 in {None, given}.

* float32: the full grid, kernel run under `jax.jit`, compared with the float64 reference
  (max-normalized error <= 1e-4).
* float64 (`jax_enable_x64`), kernel under `jax.jit`, rtol 1e-10: a subset, to keep the file
  within a few minutes on 2 cores (each grid point is one XLA compilation). Every case runs
  with every implementation at two *complementary* settings (each of trace, diagonal, vmap and
  x2 takes both of its values), and the complementary pairs rotate over the cases so that every
  (trace, diagonal) and (vmap, x2) combination also appears in float64. The eager (non-jit)
  path is checked in float64 by `test_float64_eager` and by the shape tests.

The cases draw their numbers in float32 and cast, so the float32 and float64 variants of a case
hold the same values and one float64 reference serves both. `reference_ntk` is called once per
(case, x2) for the full NTK; the traced/diagonal references are taken from it by `_apply_axes`,
which `test_apply_axes_matches_reference_ntk` checks against `reference_ntk` itself.
"""

from __future__ import annotations

import functools
import inspect
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import CASES, IMPLEMENTATIONS, N1
from ntk_zoo import Implementation, ntk_fn
from ntk_zoo.ntk.api import canonicalize_implementation
from ntk_zoo.testing import assert_ntk_close, reference_ntk

TRACE = {"trace": (-1,), "full": ()}
DIAG = {"pairs": (), "diag0": (0,)}
VMAP = {"novmap": None, "vmap0": 0}
X2 = {"x2none": False, "x2given": True}

# Complementary pairs of (trace, diagonal, vmap, x2) settings, rotated over the cases.
_COMPLEMENTARY = [
    (("full", "pairs", "novmap", "x2given"), ("trace", "diag0", "vmap0", "x2none")),
    (("full", "diag0", "vmap0", "x2given"), ("trace", "pairs", "novmap", "x2none")),
    (("full", "pairs", "vmap0", "x2none"), ("trace", "diag0", "novmap", "x2given")),
    (("full", "diag0", "novmap", "x2none"), ("trace", "pairs", "vmap0", "x2given")),
]
_FLOAT64_GRID = [(case, setting) for i, case in enumerate(CASES)
                 for setting in _COMPLEMENTARY[i % len(_COMPLEMENTARY)]]


def _x2_kind(diagonal_axes, x2_given: bool) -> str:
  # diagonal_axes=(0,) needs equal batch sizes when x2 is given.
  return "none" if not x2_given else ("n1" if 0 in diagonal_axes else "n2")


@functools.cache
def _case(name: str, dtype, x2_kind: str):
  f, params, x1, x2 = CASES[name](dtype, n2=N1 if x2_kind == "n1" else 2)
  return f, params, x1, (None if x2_kind == "none" else x2)


def _get_case(name: str, dtype, diagonal_axes, x2_given: bool):
  return _case(name, jnp.dtype(dtype), _x2_kind(diagonal_axes, x2_given))


@functools.cache
def _full_reference(name: str, x2_kind: str):
  """Float64 brute-force full NTK of a case (numpy arrays), computed once per (case, x2)."""
  with jax.enable_x64(True):
    f, params, x1, x2 = _case(name, jnp.dtype(jnp.float64), x2_kind)
    return reference_ntk(f, x1, x2, params, trace_axes=(), diagonal_axes=())


def _apply_axes(full: np.ndarray, trace_axes, diagonal_axes) -> np.ndarray:
  """Traced/diagonal kernel from a full kernel (axes in pairs: a1 b1 a2 b2 ...), by np.einsum."""
  n = full.ndim // 2
  a, b = string.ascii_lowercase[:n], string.ascii_lowercase[n:2 * n]
  trace, diag = {t % n for t in trace_axes}, {d % n for d in diagonal_axes}
  lhs = "".join(a[i] + (a[i] if i in trace | diag else b[i]) for i in range(n))
  out = "".join("" if i in trace else a[i] if i in diag else a[i] + b[i] for i in range(n))
  size = int(np.prod([full.shape[2 * i] for i in trace]))
  return np.einsum(f"{lhs}->{out}", full) / size


def _reference(name: str, trace_axes, diagonal_axes, x2_given: bool):
  full = _full_reference(name, _x2_kind(diagonal_axes, x2_given))
  return jax.tree_util.tree_map(lambda k: _apply_axes(k, trace_axes, diagonal_axes), full)


def _leaf_dtypes(tree):
  return {np.dtype(l.dtype) for l in jax.tree_util.tree_leaves(tree)}


@pytest.mark.parametrize("trace_axes, diagonal_axes, x2_given", [
    ((-1,), (), True), ((), (0,), False), ((-1,), (0,), True), ((0, -1), (), False)])
def test_apply_axes_matches_reference_ntk(trace_axes, diagonal_axes, x2_given, x64):
  # Covers a 2-D and a 3-D output leaf.
  f, params, x1, x2 = _get_case("pytree_outputs", jnp.float64, diagonal_axes, x2_given)
  expected = reference_ntk(f, x1, x2, params, trace_axes=trace_axes, diagonal_axes=diagonal_axes)
  assert_ntk_close(_reference("pytree_outputs", trace_axes, diagonal_axes, x2_given), expected)


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
  assert_ntk_close(actual, _reference(case, trace_axes, diagonal_axes, X2[x2]),
                   dtype=np.float32)


@pytest.mark.parametrize("case, setting", _FLOAT64_GRID,
                         ids=[f"{c}-{'-'.join(s)}" for c, s in _FLOAT64_GRID])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_jit_matches_reference(implementation, case, setting, x64):
  trace, diag, vmap, x2 = setting
  trace_axes, diagonal_axes = TRACE[trace], DIAG[diag]
  f, params, x1, x2_ = _get_case(case, jnp.float64, diagonal_axes, X2[x2])
  kernel = ntk_fn(f, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes, vmap_axes=VMAP[vmap])
  actual = jax.jit(kernel)(x1, x2_, params)
  assert _leaf_dtypes(actual) == {np.dtype(np.float64)}
  assert_ntk_close(actual, _reference(case, trace_axes, diagonal_axes, X2[x2]))


@pytest.mark.parametrize("vmap_axes", [None, 0])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_eager(implementation, vmap_axes, x64):
  f, params, x1, x2 = _get_case("mlp_tanh", jnp.float64, (), True)
  kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=vmap_axes)
  actual = kernel(x1, x2, params)
  assert actual.dtype == np.float64
  assert_ntk_close(actual, _reference("mlp_tanh", (), (), True))


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
  f, params, x1, x2 = _get_case("mlp_tanh", jnp.float32, (), True)
  kernel = ntk_fn(f, implementation=implementation, trace_axes=())
  assert kernel.implementation is member
  assert_ntk_close(kernel(x1, x2, params), _reference("mlp_tanh", (), (), True), dtype=np.float32)


@pytest.mark.parametrize("implementation", ["auto", "AUTO", 0, Implementation.AUTO])
def test_implementation_auto_aliases(implementation):
  # Only the alias resolution: the auto engine itself is tested with its own module.
  assert canonicalize_implementation(implementation) is Implementation.AUTO


def test_default_implementation_is_auto():
  assert inspect.signature(ntk_fn).parameters["implementation"].default == "auto"


# ---------------------------------------------------------------------------------------------
# dtype end to end.

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_end_to_end_under_jit(implementation, x64):
  f, params, x1, x2 = _get_case("cnn", jnp.float64, (), True)
  assert _leaf_dtypes(params) == {np.dtype(np.float64)}
  kernel = jax.jit(ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0))
  actual = kernel(x1, x2, params)
  assert actual.dtype == np.float64
  assert_ntk_close(actual, _reference("cnn", (), (), True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_stays_float32_under_x64(implementation, x64):
  # With x64 on, float32 params/inputs must not be silently promoted to float64.
  f, params, x1, x2 = _get_case("mlp_tanh", jnp.float32, (), True)
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
