"""`ntk_zoo.spectra`: the matrix-free NTK operator and its spectrum against the dense NTK.

The reference is `np.linalg.eigvalsh` of the full NTK from `ntk_fn(trace_axes=())`, laid out
(N·O, N·O) by `transpose(0, 2, 1, 3)`; for the conv net, J Jᵀ from `jax.jacrev` (same layout,
checked on the MLP; `ntk_fn`'s planning costs ~20 s there on a loaded 2-core machine).
Everything runs in float64 (`jax.enable_x64`, scoped to the fixtures and tests that need it)
except the float32 test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

import ntk_zoo
from ntk_zoo import spectra
from ntk_zoo.spectra import ConvergenceError, ntk_operator, ntk_spectrum


def mlp(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]  # (N, 3)


def mlp_params(dtype):
  rng = np.random.default_rng(0)
  return {"w1": jnp.asarray(rng.standard_normal((5, 32)) / np.sqrt(5), dtype),
          "b1": jnp.asarray(0.1 * rng.standard_normal(32), dtype),
          "w2": jnp.asarray(rng.standard_normal((32, 3)) / np.sqrt(32), dtype),
          "b2": jnp.zeros(3, dtype)}


def dense_ntk(f, params, x):
  k = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0,
                     implementation="jacobian_contraction")(x, None, params)  # (N, N, O, O)
  n, _, o, _ = k.shape
  return np.asarray(k, np.float64).transpose(0, 2, 1, 3).reshape(n * o, n * o)


def jacrev_ntk(f, params, x):
  jac = jax.jit(jax.jacrev(lambda p: f(p, x).reshape(-1)))(params)  # leaves (N·O, *leaf)
  j = np.concatenate([np.asarray(l).reshape(l.shape[0], -1)
                      for l in jax.tree_util.tree_leaves(jac)], 1)
  return j @ j.T


@pytest.fixture(scope="module")
def mlp_case():
  with jax.enable_x64(True):
    params = mlp_params(jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((12, 5)))
    theta = dense_ntk(mlp, params, x)
    return params, x, theta, ntk_spectrum(mlp, params, x, k=2)


@pytest.fixture(scope="module")
def resnet_case():
  with jax.enable_x64(True):
    model = ntk_zoo.models.get("resnet_tiny", num_classes=3, image_size=8)
    x = model.input_spec.dummy(6)
    theta = jacrev_ntk(model.apply, model.params, x)
    # batch_size=4 does not divide N=6: two chunks, the last one padded. column_block=1:
    # Hutch++ loops over matvecs (one compile fewer).
    return theta, ntk_spectrum(model.apply, model.params, x, k=2, batch_size=4, column_block=1)


def check_against_dense(s, theta):
  ev = np.linalg.eigvalsh(theta)
  k = s.largest.size
  assert s.size == theta.shape[0]
  np.testing.assert_allclose(s.largest, ev[::-1][:k], rtol=1e-3)
  np.testing.assert_allclose(s.smallest, ev[:k], rtol=1e-3)
  np.testing.assert_allclose(s.condition_number, ev[-1] / ev[0], rtol=1e-2)
  np.testing.assert_allclose(s.trace, np.trace(theta), rtol=1e-6)
  frob = np.sum(theta ** 2)
  assert abs(s.frobenius_sq - frob) <= max(4 * s.frobenius_rel_err, 1e-9) * frob
  eff = np.trace(theta) ** 2 / frob
  assert 1 <= s.effective_rank <= s.size
  np.testing.assert_allclose(s.effective_rank, eff, rtol=0.1)
  assert s.matvecs > 0 and s.seconds > 0 and s.tol == 1e-6


def test_operator_matches_dense(mlp_case, x64):
  params, x, theta, _ = mlp_case
  np.testing.assert_allclose(jacrev_ntk(mlp, params, x), theta, rtol=1e-10, atol=1e-12)
  rng = np.random.default_rng(2)
  v, vs = rng.standard_normal(36), rng.standard_normal((36, 20))  # 20: two column blocks
  assert ntk_operator(mlp, params, x, batch_size=100).batch_size == 12
  # Unchunked matmat and diagonal are covered by the spectrum tests (Hutch++ and the trace).
  op = ntk_operator(mlp, params, x)
  np.testing.assert_allclose(op @ v, theta @ v, rtol=1e-10, atol=1e-10)
  op = ntk_operator(mlp, params, x, batch_size=5)  # chunks of 5, 5, 2 (+3 padded)
  assert op.shape == (36, 36) and op.dtype == np.float64
  np.testing.assert_allclose(op @ v, theta @ v, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(op.matmat(vs), theta @ vs, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(op.rmatvec(v), theta @ v, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(op.diagonal(), np.diag(theta), rtol=1e-10)
  assert op.matvecs == 22


def test_mlp_spectrum_matches_dense(mlp_case, x64):
  _, _, theta, s = mlp_case
  check_against_dense(s, theta)
  assert np.all(np.diff(s.largest) <= 0) and np.all(np.diff(s.smallest) >= 0)


def test_resnet_spectrum_matches_dense(resnet_case, x64):
  theta, s = resnet_case
  check_against_dense(s, theta)


def test_chunked_equals_unchunked(mlp_case, x64):
  params, x, _, s = mlp_case
  c = ntk_spectrum(mlp, params, x, k=2, batch_size=5)  # 12 = 5 + 5 + 2 (padded to 5)
  np.testing.assert_allclose(c.largest, s.largest, rtol=1e-8)
  np.testing.assert_allclose(c.smallest, s.smallest, rtol=1e-8)
  np.testing.assert_allclose(c.trace, s.trace, rtol=1e-12)
  np.testing.assert_allclose(c.frobenius_sq, s.frobenius_sq, rtol=1e-8)  # same seed, probes


def test_vmap_axes_none_and_other_batch_axis(mlp_case, x64):
  params, x, theta, s = mlp_case
  v = np.random.default_rng(3).standard_normal(36)
  # Batch on axis 1 of x and of the output: same rows (i·O + o) as before.
  op = ntk_operator(lambda p, xt: mlp(p, xt.T).T, params, x.T, vmap_axes=1, batch_size=5)
  np.testing.assert_allclose(op @ v, theta @ v, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(op.diagonal(), np.diag(theta), rtol=1e-10)
  n = ntk_spectrum(mlp, params, x, which="largest", vmap_axes=None, column_block=1)
  np.testing.assert_allclose(n.largest, s.largest[:1], rtol=1e-8)
  np.testing.assert_allclose(n.trace, s.trace, rtol=1e-12)
  assert n.smallest.size == 0 and np.isnan(n.condition_number)


def test_float32_params(mlp_case):
  """float32 params: computed in float32, handed to scipy as float64 (close to the float64 NTK)."""
  _, x, theta, s64 = mlp_case
  params, x = mlp_params(jnp.float32), jnp.asarray(x, jnp.float32)
  assert not jax.config.jax_enable_x64
  s = ntk_spectrum(mlp, params, x, which="largest", tol=1e-5, batch_size=5, column_block=1)
  np.testing.assert_allclose(s.largest[0], s64.largest[0], rtol=1e-4)
  np.testing.assert_allclose(s.trace, np.trace(theta), rtol=1e-5)
  op = ntk_operator(mlp, params, x)
  assert op.dtype == np.float64 and op.dtype_compute == jnp.float32
  v = np.random.default_rng(4).standard_normal(36)
  assert (op @ v).dtype == np.float64


def test_hutchpp_error_is_calibrated():
  """The stated relative error matches the observed one on a flat spectrum (little to sketch)."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((300, 300))
  theta = a @ a.T / 300 + np.eye(300)
  op, exact = aslinearoperator(theta), np.sum(theta ** 2)
  z = []
  for seed in range(20):
    est, rel = spectra._hutchpp_frobenius_sq(op, 30, np.random.default_rng(seed))
    assert 0 < rel < 0.1
    z.append((est - exact) / (rel * est))
  assert np.mean(np.abs(z)) < 2 and np.max(np.abs(z)) < 5
  est, rel = spectra._hutchpp_frobenius_sq(op, 600, rng)  # s = 200 sketch, 200 probes
  assert abs(est - exact) < 4 * rel * est and rel < 2e-3
  est, rel = spectra._hutchpp_frobenius_sq(aslinearoperator(theta[:20, :20]), 64, rng)
  assert rel == 0 and np.isclose(est, np.sum(theta[:20, :20] ** 2), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"batch_size": 2.5}, "batch_size must be a positive int"),
    ({"batch_size": 4, "vmap_axes": None}, "batch_size needs a batch axis"),
    ({"vmap_axes": "0"}, "vmap_axes must be an int"),
    ({"k": 36}, r"k must be an int with 1 <= k < N·O = 36"),
    ({"k": 0}, r"k must be an int with 1 <= k < N·O = 36"),
    ({"which": "middle"}, "which must be 'largest', 'smallest' or both"),
    ({"which": ()}, "which must be 'largest', 'smallest' or both"),
    ({"num_probes": 3}, "num_probes must be an int >= 4"),
    ({"tol": -1.0}, "tol must be >= 0"),
])
def test_argument_errors(mlp_case, x64, kwargs, match):
  params, x, _, _ = mlp_case
  with pytest.raises(ValueError, match=match):
    ntk_spectrum(mlp, params, x, **kwargs)


def test_input_and_output_errors(mlp_case, x64):
  params, x, _, _ = mlp_case
  with pytest.raises(ValueError, match=r"x needs a batch axis 0.*x\[None\]"):
    ntk_operator(mlp, params, jnp.float64(1.0))
  with pytest.raises(ValueError, match=r"needs the 5 examples of x on axis 0.*x\[None\]"):
    ntk_operator(mlp, params, x[0])  # one example without its batch axis: output (3,)
  with pytest.raises(ValueError, match="same non-zero number of examples"):
    ntk_operator(lambda p, xs: mlp(p, xs[0]), params, (x, x[:3]))
  with pytest.raises(ValueError, match="f must return a single array"):
    ntk_operator(lambda p, xs: {"a": mlp(p, xs)}, params, x)
  with pytest.raises(ValueError, match="params must be a non-empty pytree of float arrays"):
    ntk_operator(lambda p, xs: mlp(params, xs) * p["n"], {"n": jnp.int32(2)}, x)


def test_no_convergence_names_the_fix(mlp_case, x64):
  params, x, _, _ = mlp_case
  with pytest.raises(ConvergenceError, match="larger maxiter.*looser tol") as info:
    ntk_spectrum(mlp, params, x, which="smallest", maxiter=1, tol=1e-14)
  assert type(info.value.__cause__).__name__ == "ArpackNoConvergence"


def test_logdet_matches_dense(mlp_case, x64):
  """Stochastic Lanczos quadrature: exact Lanczos (order = N·O), within 4 standard errors."""
  params, x, theta, _ = mlp_case
  f = mlp
  n = theta.shape[0]
  want = np.linalg.slogdet(theta + 1e-2 * np.eye(n))[1]
  got, sem = spectra.ntk_logdet(f, params, x, order=n, num_probes=128, shift=1e-2, batch_size=5)
  assert 0 < sem < 0.1 * abs(want)
  assert abs(got - want) < 4 * sem
  with pytest.raises(ValueError, match="order must be"):
    spectra.ntk_logdet(f, params, x, order=n + 1)
