"""Every NTK engine against the brute-force `reference_ntk`, over the model cases of `ntk_cases`.

Grid: case x implementation x trace_axes in {(), (-1,)} x diagonal_axes in {(), (0,)} x
vmap_axes in {None, 0} x x2 in {None, given}.

* float32: the full grid, kernel run under `jax.jit`, compared with the float64 reference
  (max-normalized error <= 1e-4).
* float64 (`jax_enable_x64`), under `jax.jit`, rtol 1e-10: a subset, to keep the file within a
  few minutes on 2 cores. Every case runs with every implementation at two *complementary*
  settings (each of trace, diagonal, vmap and x2 takes both of its values), and the pairs
  rotate over the cases so that every (trace, diagonal) and (vmap, x2) combination also
  appears in float64. The eager (non-jit) path: `test_float64_eager`, `test_f_kwargs_are_passed`.

Cost control (XLA compilation dominates): the grid points that share (case, implementation,
dtype, vmap_axes, x2) are computed by *one* jitted function (`_kernels`, cached), and each test
checks its own entry; an exception raised while tracing one setting is re-raised by that
setting's test only. The cases draw their numbers in float32 and cast, so the float32 and
float64 variants of a case hold the same values and one float64 reference serves both.
`reference_ntk` is called once per (case, x2) for the full NTK; the traced/diagonal references
are taken from it by `_apply_axes`, which `test_apply_axes_matches_reference_ntk` checks against
`reference_ntk` itself.
"""

from __future__ import annotations

import functools
import inspect
import itertools
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

# Complementary pairs of (trace, diag, vmap, x2) settings, rotated over the cases (float64).
_COMPLEMENTARY = [
    (("full", "pairs", "novmap", "x2given"), ("trace", "diag0", "vmap0", "x2none")),
    (("full", "diag0", "vmap0", "x2given"), ("trace", "pairs", "novmap", "x2none")),
    (("full", "pairs", "vmap0", "x2none"), ("trace", "diag0", "novmap", "x2given")),
    (("full", "diag0", "novmap", "x2none"), ("trace", "pairs", "vmap0", "x2given")),
]
_FLOAT64_SETTINGS = {case: _COMPLEMENTARY[i % len(_COMPLEMENTARY)]
                     for i, case in enumerate(CASES)}
_FLOAT64_GRID = [(case, s) for case, pair in _FLOAT64_SETTINGS.items() for s in pair]


def _x2_kind(diag: str, x2: str) -> str:
  # diagonal_axes=(0,) needs equal batch sizes when x2 is given.
  return "none" if not X2[x2] else ("n1" if 0 in DIAG[diag] else "n2")


@functools.cache
def _case(name: str, dtype: str, x2_kind: str):
  f, params, x1, x2 = CASES[name](jnp.dtype(dtype), n2=N1 if x2_kind == "n1" else 2)
  return f, params, x1, (None if x2_kind == "none" else x2)


@functools.cache
def _full_reference(name: str, x2_kind: str):
  """Float64 brute-force full NTK of a case (numpy arrays), computed once per (case, x2)."""
  with jax.enable_x64(True):
    f, params, x1, x2 = _case(name, "float64", x2_kind)
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


def _reference(name: str, trace: str, diag: str, x2: str):
  full = _full_reference(name, _x2_kind(diag, x2))
  return jax.tree_util.tree_map(lambda k: _apply_axes(k, TRACE[trace], DIAG[diag]), full)


@functools.cache
def _kernels(name: str, implementation: str, dtype: str, settings: tuple) -> dict:
  """Kernels of a case for several (trace, diag, vmap, x2) settings, from ONE jitted function.

  Returns {setting: kernel pytree, or the exception raised while tracing that setting}.
  """
  errors = {}

  def all_kernels(cases):
    out = {}
    for s in settings:
      trace, diag, vmap, x2 = s
      f, params, x1, x2_ = cases[_x2_kind(diag, x2)]
      try:
        kernel = ntk_fn(f, implementation=implementation, trace_axes=TRACE[trace],
                        diagonal_axes=DIAG[diag], vmap_axes=VMAP[vmap])
        out["-".join(s)] = kernel(x1, x2_, params)
      except Exception as e:  # pylint: disable=broad-except
        errors[s] = e
    return out

  kinds = {_x2_kind(s[1], s[3]) for s in settings}
  cases = {k: _case(name, dtype, k) for k in kinds}
  fs = {k: c[0] for k, c in cases.items()}
  arrays = {k: c[1:] for k, c in cases.items()}
  results = jax.jit(lambda arrays: all_kernels(
      {k: (fs[k], *arrays[k]) for k in arrays}))(arrays)
  return {s: errors[s] if s in errors else results["-".join(s)] for s in settings}


def _kernel(name, implementation, dtype, setting, settings):
  k = _kernels(name, implementation, dtype, settings)[setting]
  if isinstance(k, Exception):
    raise k
  return k


def _leaf_dtypes(tree):
  return {np.dtype(l.dtype) for l in jax.tree_util.tree_leaves(tree)}


@pytest.mark.parametrize("trace, diag, x2", [
    ("trace", "pairs", "x2given"), ("full", "diag0", "x2none"), ("trace", "diag0", "x2given")])
def test_apply_axes_matches_reference_ntk(trace, diag, x2, x64):
  # pytree_outputs has a 2-D and a 3-D output leaf.
  f, params, x1, x2_ = _case("pytree_outputs", "float64", _x2_kind(diag, x2))
  expected = reference_ntk(f, x1, x2_, params, trace_axes=TRACE[trace],
                           diagonal_axes=DIAG[diag])
  assert_ntk_close(_reference("pytree_outputs", trace, diag, x2), expected)


_FLOAT32_SETTINGS = {(vmap, x2): tuple((t, d, vmap, x2) for t in TRACE for d in DIAG)
                     for vmap in VMAP for x2 in X2}


def _float32_grid():
  """Every case x setting; the default run keeps half the settings of each case, rotated over
  the cases so that every setting still runs for every implementation (the rest are `slow`)."""
  settings = list(itertools.product(TRACE, DIAG, VMAP, X2))
  for ci, case in enumerate(CASES):
    for k, setting in enumerate(settings):
      marks = () if (k + ci) % 2 == 0 else (pytest.mark.slow,)
      yield pytest.param(case, *setting, id="-".join((case, *setting)), marks=marks)


@pytest.mark.parametrize("case, trace, diag, vmap, x2", list(_float32_grid()))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_jit_matches_reference(case, implementation, trace, diag, vmap, x2):
  actual = _kernel(case, implementation, "float32", (trace, diag, vmap, x2),
                   _FLOAT32_SETTINGS[vmap, x2])
  assert _leaf_dtypes(actual) == {np.dtype(np.float32)}
  assert_ntk_close(actual, _reference(case, trace, diag, x2), dtype=np.float32)


@pytest.mark.parametrize("case, setting", _FLOAT64_GRID,
                         ids=[f"{c}-{'-'.join(s)}" for c, s in _FLOAT64_GRID])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_jit_matches_reference(implementation, case, setting, x64):
  actual = _kernel(case, implementation, "float64", setting, _FLOAT64_SETTINGS[case])
  assert _leaf_dtypes(actual) == {np.dtype(np.float64)}
  assert_ntk_close(actual, _reference(case, setting[0], setting[1], setting[3]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_eager(implementation, x64):
  # Eager (op-by-op) with vmap_axes; a tiny model, since eager compiles every op separately.
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.standard_normal((4, 3))), "b": jnp.asarray(rng.standard_normal(3))}
  x1, x2 = jnp.asarray(rng.standard_normal((3, 2, 4))), jnp.asarray(rng.standard_normal((2, 2, 4)))

  def f(params, x):
    return jnp.tanh(x @ params["w"] + params["b"])  # (N, 2, 3)

  kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0)
  actual = kernel(x1, x2, params)
  assert actual.dtype == np.float64
  assert_ntk_close(actual, reference_ntk(f, x1, x2, params, trace_axes=()))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_f_kwargs_are_passed(implementation):
  # Eager, no vmap_axes.
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
  x1 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)

  def f(params, x, scale=1.0):
    return scale * jnp.tanh(x @ params["w"])

  kernel = ntk_fn(f, implementation=implementation, trace_axes=())
  k1, k2 = kernel(x1, None, params), kernel(x1, None, params, scale=2.0)
  np.testing.assert_allclose(np.asarray(k2), 4.0 * np.asarray(k1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Output shapes: the documented convention (see `ntk_fn`'s docstring). Shapes by eval_shape
# (no compilation); values of the less common axis choices checked once per implementation.

def _dense(params, x):
  return x @ params["w"]  # (N, O)


def _dense3(params, x):
  return jnp.einsum("nhi,io->nho", jnp.tanh(x), params["w"])  # (N, H, O)


def _shape(f, implementation, trace_axes, diagonal_axes, x1, x2, params, vmap_axes=None):
  kernel = ntk_fn(f, implementation=implementation, trace_axes=trace_axes,
                  diagonal_axes=diagonal_axes, vmap_axes=vmap_axes)
  return jax.eval_shape(kernel, x1, x2, params)


_RNG = np.random.default_rng(0)
_W = {"w": jnp.asarray(_RNG.standard_normal((5, 4)), jnp.float32)}
_X1_2D = jnp.asarray(_RNG.standard_normal((3, 5)), jnp.float32)
_X1_3D = jnp.asarray(_RNG.standard_normal((3, 6, 5)), jnp.float32)
_X2_2D = {n: jnp.asarray(_RNG.standard_normal((n, 5)), jnp.float32) for n in (2, 3)}
_X2_3D = {n: jnp.asarray(_RNG.standard_normal((n, 6, 5)), jnp.float32) for n in (2, 3)}

# Output (N, O) = (3, 4); x2 of batch 2 (3 where axis 0 is traced or diagonal).
SHAPES_2D = [
    ((), (), 2, (3, 2, 4, 4)),        # Full NTK: (N1, N2, O, O).
    ((-1,), (), 2, (3, 2)),           # Traced logits: (N1, N2).
    ((1,), (), 2, (3, 2)),            # Same axis, non-negative index.
    ((), (0,), 3, (3, 4, 4)),         # Diagonal over the batch: (N, O, O).
    ((-1,), (0,), 3, (3,)),           # Diagonal + traced: (N,).
    ((), (-1,), 2, (3, 2, 4)),        # Diagonal logits: (N1, N2, O).
]
# Output (N, H, O) = (3, 6, 4).
SHAPES_3D = [
    ((-1,), (), 2, (3, 2, 6, 6)),          # (N1, N2, H1, H2).
    ((), (), 2, (3, 2, 6, 6, 4, 4)),       # (N1, N2, H1, H2, O1, O2).
    ((1,), (), 2, (3, 2, 4, 4)),           # (N1, N2, O1, O2).
    ((-1,), (1,), 2, (3, 2, 6)),           # (N1, N2, H).
    ((0, 2), (), 3, (6, 6)),               # (H1, H2): batch traced too.
    ((2,), (0, 1), 3, (3, 6)),             # (N, H).
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("trace_axes, diagonal_axes, n2, expected", SHAPES_2D)
def test_output_shape_2d(implementation, trace_axes, diagonal_axes, n2, expected):
  out = _shape(_dense, implementation, trace_axes, diagonal_axes, _X1_2D, _X2_2D[n2], _W)
  assert out.shape == expected


@pytest.mark.parametrize("vmap_axes", [None, 0])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("trace_axes, diagonal_axes, n2, expected", SHAPES_3D)
def test_output_shape_3d(implementation, trace_axes, diagonal_axes, n2, expected, vmap_axes):
  out = _shape(_dense3, implementation, trace_axes, diagonal_axes, _X1_3D, _X2_3D[n2], _W,
               vmap_axes)
  assert out.shape == expected


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_output_values_3d(implementation):
  # The SHAPES_3D settings (batch traced, diagonal on a middle axis, ...) against the reference.
  def all_kernels(x1, x2s, params):
    return [ntk_fn(_dense3, implementation=implementation, trace_axes=t, diagonal_axes=d)(
        x1, x2s[n2], params) for t, d, n2, _ in SHAPES_3D]

  actual = jax.jit(all_kernels)(_X1_3D, _X2_3D, _W)
  full = {n: reference_ntk(_dense3, _X1_3D, x2, _W, trace_axes=()) for n, x2 in _X2_3D.items()}
  for (t, d, n2, _), a in zip(SHAPES_3D, actual):
    assert_ntk_close(a, _apply_axes(full[n2], t, d), dtype=np.float32)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_output_shape_pytree(implementation):
  f, params, x1, x2 = _case("pytree_outputs", "float32", "n2")
  k = _shape(f, implementation, (), (), x1, x2, params)
  assert set(k) == {"a", "b"}
  assert k["a"].shape == (3, 2, 3, 3)
  assert k["b"].shape == (3, 2, 2, 2, 4, 4)
  k = _shape(f, implementation, (-1,), (0,), x1, _case("pytree_outputs", "float32", "n1")[3],
             params, vmap_axes=0)
  assert k["a"].shape == (3,)
  assert k["b"].shape == (3, 2, 2)


# ---------------------------------------------------------------------------------------------
# Implementation given as string aliases, ints and the enum.

_ALIASES = [
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
    ("SD", Implementation.STRUCTURED_DERIVATIVES),
    (3, Implementation.STRUCTURED_DERIVATIVES),
    (Implementation.STRUCTURED_DERIVATIVES, Implementation.STRUCTURED_DERIVATIVES),
]


@pytest.mark.parametrize("implementation, member", _ALIASES)
def test_implementation_aliases(implementation, member):
  f, params, x1, x2 = _case("mlp_tanh", "float32", "n2")
  kernel = ntk_fn(f, implementation=implementation, trace_axes=())
  assert kernel.implementation is member
  assert kernel.options.trace_axes == ()
  assert jax.eval_shape(kernel, x1, x2, params).shape == (3, 2, 3, 3)


@pytest.mark.parametrize("implementation", ["auto", "AUTO", 0, Implementation.AUTO])
def test_implementation_auto_aliases(implementation):
  # Only the alias resolution: the auto engine itself is tested with its own module.
  assert canonicalize_implementation(implementation) is Implementation.AUTO


def test_default_implementation_is_auto():
  assert inspect.signature(ntk_fn).parameters["implementation"].default == "auto"


# ---------------------------------------------------------------------------------------------
# dtype end to end (values in float64 are checked by test_float64_jit_matches_reference).

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float64_end_to_end_dtype(implementation, x64):
  for case in ("cnn", "pytree_outputs", "pytree_inputs"):
    f, params, x1, x2 = _case(case, "float64", "n2")
    assert _leaf_dtypes(params) == {np.dtype(np.float64)}
    kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0)
    assert _leaf_dtypes(jax.eval_shape(kernel, x1, x2, params)) == {np.dtype(np.float64)}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_stays_float32_under_x64(implementation, x64):
  # With x64 on, float32 params/inputs must not be silently promoted to float64.
  for case in ("cnn", "attention", "pytree_outputs"):
    f, params, x1, x2 = _case(case, "float32", "n2")
    for vmap_axes in (None, 0):
      kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=vmap_axes)
      assert _leaf_dtypes(jax.eval_shape(kernel, x1, x2, params)) == {np.dtype(np.float32)}
