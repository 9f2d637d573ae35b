"""The kernel is differentiable: `jax.grad` (under `jax.jit`) of scalar functions of the NTK with
respect to params and inputs, checked against central finite differences in float64.

* `test_grad_matches_finite_differences`: L = Σ W ⊙ sin(Θ(x1, x2)) (full NTK, W fixed random
  weights): directional derivatives along random directions in params, x1 and x2. Only smooth
  cases (tanh, gelu, softmax/layernorm), so finite differences are accurate.
* `test_logdet_grads_agree_with_jacobian_contraction`: L = log det(Θ(x1, x1) + I) on the CNN
  (convolutions, relu), x2=None: every engine's gradient equals the Jacobian-contraction one.
* `test_grad_under_jit_matches_eager_grad`: eager and jitted gradients agree.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_cases import CASES, IMPLEMENTATIONS
from ntk_zoo import ntk_fn

# (case, vmap_axes): smooth cases only; both vmap settings appear.
FD_CASES = [("attention", 0), ("pytree_outputs", 0), ("pytree_inputs", None)]
EPS = 1e-5
RTOL = 1e-6


def _sin_loss(f, implementation, vmap_axes, params, x1, x2):
  """L(params, x1, x2) = Σ_leaves Σ W ⊙ sin(Θ_full(x1, x2))."""
  kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=vmap_axes)
  rng = np.random.default_rng(0)
  w = [jnp.asarray(rng.standard_normal(k.shape), k.dtype)
       for k in jax.tree_util.tree_leaves(jax.eval_shape(kernel, x1, x2, params))]

  def loss(params, x1, x2):
    k12 = jax.tree_util.tree_leaves(kernel(x1, x2, params))
    return sum(jnp.sum(wk * jnp.sin(k)) for k, wk in zip(k12, w))

  return loss


def _random_like(tree, rng):
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.standard_normal(np.shape(a)), a.dtype), tree)


def _vdot(a, b):
  return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                             jax.tree_util.tree_leaves(b)))


def _axpy(alpha, v, x):
  return jax.tree_util.tree_map(lambda vi, xi: xi + alpha * vi, v, x)


@pytest.mark.parametrize("case, vmap_axes", FD_CASES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grad_matches_finite_differences(implementation, case, vmap_axes, x64):
  f, params, x1, x2 = CASES[case](jnp.float64)
  loss = jax.jit(_sin_loss(f, implementation, vmap_axes, params, x1, x2))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x1, x2)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))

  rng = np.random.default_rng(1)
  for argnum, name in [(0, "params"), (1, "x1"), (2, "x2"), (0, "params"), (1, "x1")]:
    args = [params, x1, x2]
    v = _random_like(args[argnum], rng)
    plus, minus = list(args), list(args)
    plus[argnum], minus[argnum] = _axpy(EPS, v, args[argnum]), _axpy(-EPS, v, args[argnum])
    fd = (loss(*plus) - loss(*minus)) / (2 * EPS)
    ad = _vdot(grads[argnum], v)
    np.testing.assert_allclose(ad, fd, rtol=RTOL, atol=RTOL * float(abs(fd)) + 1e-9,
                               err_msg=f"directional derivative w.r.t. {name}")


@functools.cache
def _logdet_grads(implementation: str):
  f, params, x1, _ = CASES["cnn"](jnp.float64)
  kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0)

  def loss(params, x1):
    k = kernel(x1, None, params)  # (N, N, O, O)
    n, o = k.shape[0], k.shape[2]
    k = jnp.transpose(k, (0, 2, 1, 3)).reshape(n * o, n * o)
    return jnp.linalg.slogdet(k + jnp.eye(n * o, dtype=k.dtype))[1]

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS[1:])
def test_logdet_grads_agree_with_jacobian_contraction(implementation, x64):
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-8, atol=1e-12),
                         _logdet_grads(implementation), _logdet_grads("jacobian_contraction"))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grad_under_jit_matches_eager_grad(implementation, x64):
  # A tiny model: eager differentiation compiles every op separately.
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.standard_normal((4, 3))), "b": jnp.asarray(rng.standard_normal(3))}
  x1, x2 = jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.standard_normal((2, 4)))

  def f(params, x):
    return jnp.tanh(x @ params["w"] + params["b"])

  kernel = ntk_fn(f, implementation=implementation, trace_axes=(), vmap_axes=0)

  def loss(params, x1):
    return jnp.sum(jnp.sin(kernel(x1, x2, params)))

  eager = jax.grad(loss, argnums=(0, 1))(params, x1)
  jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x1)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12), jitted, eager)
