"""Structured derivatives on tiny real-world models, against the brute-force `reference_ntk`.

Each model is checked on the grid dtype x trace_axes x vmap_axes:

* float64 (`jax_enable_x64`): rtol 1e-10; float32: max-normalized error <= 1e-4 against the
  float64 reference (the numbers are drawn in float32 and cast, so both dtypes see the same
  values and one float64 reference serves both);
* trace_axes in {(), (-1,)}; vmap_axes in {None, 0} (every model is per-example along axis 0):
  each model runs all four (trace, vmap) combinations, two in float64 and the complementary
  two in float32, alternating over the models so that all eight triples are covered;
* x2 given (other values, same batch size; test_rules.py covers unequal batch sizes).

The kernel runs under `jax.jit` (compiled at XLA optimization level 0: one compilation per
grid point is the cost of this file). The float64 full reference is computed once per model;
the traced one is its mean over the diagonal of the last output axis.

The models cover what real linearized programs contain: embedding gathers (Flax `nn.Embed`,
tied embed/attend), max/avg pooling, grouped and depthwise convolutions, `nn.scan`-stacked and
`nn.remat`'d blocks, a layer used twice, ReLU/GELU (tanh and exact) in Flax and Haiku, Haiku
BatchNorm in inference mode, LayerNorm + softmax attention, and `jax.checkpoint`, `jax.jit`,
`jax.custom_jvp` and `jax.custom_vjp` functions inside the model. The last tests check that the
structured kernel is jit-able and that `jax.grad` through it matches the jacobian-contraction
kernel's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_zoo import ntk_fn
from ntk_zoo.testing import assert_ntk_close, reference_ntk

N1, N2 = 2, 2  # Equal sizes: the reference's jacobian compiles once for x1 and x2.
DTYPES = {"f64": np.float64, "f32": np.float32}
TRACE = {"full": (), "trace": (-1,)}
VMAP = {"novmap": None, "vmap0": 0}


def _jit(fn, *args):
  """fn(*args) under `jax.jit`, compiled at XLA optimization level 0 (cheap compiles)."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _normal(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _ids(seed: int, n: int, t: int, vocab: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (n, t)).astype(np.int32)


def _to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _cast(tree, dtype):
  """Float leaves to `dtype` (jnp arrays); integer leaves (ids, counters) unchanged."""
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating)
      else jnp.asarray(a), tree)


# ---------------------------------------------------------------------------------------------
# Models. Each builder returns (f, params, x1, x2) with float32 numpy leaves; `f` works in the
# dtype of its params and inputs.

def _init(init_fn: Callable, *args):
  """`init_fn(*args)` jit-compiled at XLA optimization level 0 (cheaper than eager init)."""
  return _jit(init_fn, *args)


def _flax(module: nn.Module, x1, x2, seed: int = 0):
  variables = _init(module.init, jax.random.key(seed), jnp.asarray(x1))
  f = lambda p, x: module.apply({"params": p}, x)
  return f, _to_numpy(variables["params"]), x1, x2


def _images(c: int = 2, hw: int = 5):
  return _normal(1, N1, hw, hw, c), _normal(2, N2, hw, hw, c)


def _seqs(t: int = 3, d: int = 4):
  return _normal(1, N1, t, d), _normal(2, N2, t, d)


class _EmbedModel(nn.Module):
  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(7, 4)(ids)  # (N, T, 4)
    return nn.Dense(3)(jnp.tanh(nn.Dense(4)(h)))  # (N, T, 3)


class _TiedEmbed(nn.Module):
  @nn.compact
  def __call__(self, ids):
    embed = nn.Embed(6, 4)
    h = jnp.tanh(nn.Dense(4)(embed(ids)))
    return embed.attend(h)  # (N, T, 6): logits over the vocabulary with the same table.


class _PoolCNN(nn.Module):
  pool: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(3, (3, 3), padding="SAME")(x))
    if self.pool == "max":
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    else:
      x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding="SAME")
    x = nn.Conv(2, (2, 2), strides=(2, 2))(x)
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


class _GroupedCNN(nn.Module):
  depthwise: bool

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(4, (2, 2))(x))
    if self.depthwise:  # One group per input channel, channel multiplier 2.
      x = nn.Conv(8, (3, 3), feature_group_count=4, padding="SAME")(x)
    else:
      x = nn.Conv(6, (3, 3), feature_group_count=2, strides=(2, 1), padding="SAME")(x)
    return nn.Dense(3)(jnp.mean(jnp.tanh(x), axis=(1, 2)))


class _ScanBlock(nn.Module):
  @nn.compact
  def __call__(self, h, _):
    return h + jnp.tanh(nn.Dense(4)(h)), None


class _ScanModel(nn.Module):
  @nn.compact
  def __call__(self, x):
    blocks = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=3)
    h, _ = blocks(name="blocks")(nn.Dense(4)(x), None)
    return nn.Dense(3)(h)


class _MLPBlock(nn.Module):
  @nn.compact
  def __call__(self, h):
    return h + nn.Dense(4)(nn.gelu(nn.Dense(5)(h)))


class _RematModel(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.remat(_MLPBlock)()(nn.Dense(4)(x))
    return nn.Dense(3)(nn.LayerNorm()(h))


class _SharedLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    shared = nn.Dense(4)
    h = shared(jnp.tanh(shared(x)))  # The same kernel and bias at two depths.
    return nn.Dense(3)(jnp.tanh(h))


class _FlaxMLP(nn.Module):
  activation: Callable

  @nn.compact
  def __call__(self, x):
    h = self.activation(nn.Dense(5)(x))
    h = self.activation(nn.Dense(4)(h))
    return nn.Dense(3)(h)


class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    h = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(h, h)
    h = nn.LayerNorm()(h)
    return nn.Dense(3)(h)  # (N, T, 3)


def _single_head_attention():
  """LayerNorm + softmax attention written out (one head), as a pure function."""
  p = {"ln": {"scale": 1.0 + _normal(10, 4, scale=0.1), "bias": _normal(11, 4, scale=0.1)},
       "q": _normal(12, 4, 4, scale=0.5), "k": _normal(13, 4, 4, scale=0.5),
       "v": _normal(14, 4, 4, scale=0.5), "out": _normal(15, 4, 3, scale=0.5)}

  def f(p, x):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
    h = (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["ln"]["scale"] + p["ln"]["bias"]
    q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
    att = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / 2.0, axis=-1)
    return jnp.einsum("nts,nsd->ntd", att, v) @ p["out"]

  return (f, p, *_seqs())


def _haiku_mlp(activation: Callable):
  def forward(x):
    h = activation(hk.Linear(5)(x))
    h = activation(hk.Linear(4)(h))
    return hk.Linear(3)(h)

  model = hk.without_apply_rng(hk.transform(forward))
  x1, x2 = _normal(1, N1, 4), _normal(2, N2, 4)
  params = _init(model.init, jax.random.key(0), jnp.asarray(x1))
  return model.apply, _to_numpy(params), x1, x2


def _haiku_batchnorm():
  def forward(x, is_training):
    h = hk.Conv2D(3, 3)(x)
    h = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.5)(h, is_training)
    h = jax.nn.relu(h)
    return hk.Linear(3)(hk.Flatten()(h))

  model = hk.transform_with_state(forward)
  x1, x2 = _images(hw=4)
  params, state = _init(functools.partial(model.init, is_training=True), jax.random.key(0),
                        jnp.asarray(x1))
  # One training step moves the running statistics away from (0, 1).
  _, state = _jit(functools.partial(model.apply, is_training=True), params, state, None,
                  jnp.asarray(_normal(3, 4, 4, 4, 2) + 1.0))
  state = _to_numpy(state)

  def f(p, x):
    return model.apply(p, _cast(state, x.dtype), None, x, is_training=False)[0]

  return f, _to_numpy(params), x1, x2


def _mlp_params(seed: int = 20):
  return {"w1": _normal(seed, 4, 5, scale=0.5), "b1": _normal(seed + 1, 5, scale=0.1),
          "w2": _normal(seed + 2, 5, 3, scale=0.5)}


def _checkpointed():
  @jax.checkpoint
  def block(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"])

  f = lambda p, x: block(p, x) @ p["w2"]
  return (f, _mlp_params(), _normal(1, N1, 4), _normal(2, N2, 4))


def _jitted_inner():
  inner = jax.jit(lambda w, b, x: jax.nn.gelu(x @ w + b))
  f = lambda p, x: inner(p["w1"], p["b1"], x) @ p["w2"]
  return (f, _mlp_params(), _normal(1, N1, 4), _normal(2, N2, 4))


@jax.custom_jvp
def _softplus(x):
  return jnp.logaddexp(x, 0.0)


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return _softplus(x), jax.nn.sigmoid(x) * t


@jax.custom_jvp
def _dense_tanh(w, x):
  """A custom_jvp function of a parameter and an input."""
  return jnp.tanh(x @ w)


@_dense_tanh.defjvp
def _dense_tanh_jvp(primals, tangents):
  (w, x), (dw, dx) = primals, tangents
  y = jnp.tanh(x @ w)
  return y, (1.0 - y ** 2) * (x @ dw + dx @ w)


def _custom_jvp():
  f = lambda p, x: _softplus(_dense_tanh(p["w1"], x) + p["b1"]) @ p["w2"]
  return (f, _mlp_params(), _normal(1, N1, 4), _normal(2, N2, 4))


@jax.custom_vjp
def _dense_sin(w, x):
  """A custom_vjp function of a parameter and an input (fwd/bwd written by hand)."""
  return jnp.sin(x @ w)


def _dense_sin_fwd(w, x):
  return _dense_sin(w, x), (w, x)


def _dense_sin_bwd(res, g):
  w, x = res
  gz = g * jnp.cos(x @ w)
  return x.T @ gz, gz @ w.T


_dense_sin.defvjp(_dense_sin_fwd, _dense_sin_bwd)


def _custom_vjp():
  f = lambda p, x: jnp.tanh(_dense_sin(p["w1"], x) + p["b1"]) @ p["w2"]
  return (f, _mlp_params(), _normal(1, N1, 4), _normal(2, N2, 4))


MODELS: dict[str, Callable[[], tuple]] = {
    "flax_embed": lambda: _flax(_EmbedModel(), _ids(1, N1, 3, 7), _ids(2, N2, 3, 7)),
    "flax_tied_embed": lambda: _flax(_TiedEmbed(), _ids(1, N1, 3, 6), _ids(2, N2, 3, 6)),
    "flax_maxpool_cnn": lambda: _flax(_PoolCNN("max"), *_images()),
    "flax_avgpool_cnn": lambda: _flax(_PoolCNN("avg"), *_images()),
    "flax_grouped_conv": lambda: _flax(_GroupedCNN(False), *_images(hw=4)),
    "flax_depthwise_conv": lambda: _flax(_GroupedCNN(True), *_images(hw=4)),
    "flax_scan_blocks": lambda: _flax(_ScanModel(), _normal(1, N1, 4), _normal(2, N2, 4)),
    "flax_remat_block": lambda: _flax(_RematModel(), _normal(1, N1, 4), _normal(2, N2, 4)),
    "flax_shared_layer": lambda: _flax(_SharedLayer(), _normal(1, N1, 4), _normal(2, N2, 4)),
    "flax_relu": lambda: _flax(_FlaxMLP(jax.nn.relu), _normal(1, N1, 4), _normal(2, N2, 4)),
    "flax_gelu_tanh": lambda: _flax(_FlaxMLP(functools.partial(jax.nn.gelu, approximate=True)),
                                    _normal(1, N1, 4), _normal(2, N2, 4)),
    "flax_gelu_exact": lambda: _flax(
        _FlaxMLP(functools.partial(jax.nn.gelu, approximate=False)), _normal(1, N1, 4),
        _normal(2, N2, 4)),
    "haiku_relu": lambda: _haiku_mlp(jax.nn.relu),
    "haiku_gelu_tanh": lambda: _haiku_mlp(functools.partial(jax.nn.gelu, approximate=True)),
    "haiku_gelu_exact": lambda: _haiku_mlp(functools.partial(jax.nn.gelu, approximate=False)),
    "haiku_batchnorm_eval": _haiku_batchnorm,
    "flax_layernorm_attention": lambda: _flax(_Attention(), *_seqs()),
    "single_head_attention": _single_head_attention,
    "jax_checkpoint": _checkpointed,
    "jax_jit_inner": _jitted_inner,
    "custom_jvp": _custom_jvp,
    "custom_vjp": _custom_vjp,
}


@functools.cache
def _model(name: str):
  """(f, params, x1, x2) in float32 numpy, built once (with x64 off, as users would)."""
  with jax.enable_x64(False):
    return MODELS[name]()


def _case(name: str, dtype):
  f, params, x1, x2 = _model(name)
  return f, _cast(params, dtype), _cast(x1, dtype), _cast(x2, dtype)


@functools.cache
def _reference(name: str) -> tuple[np.ndarray, np.ndarray]:
  """Float64 (full, traced over the last output axis) reference kernels of a model."""
  with jax.enable_x64(True):
    f, params, x1, x2 = _case(name, np.float64)
    full = reference_ntk(f, x1, x2, params, trace_axes=())
    assert float(np.max(np.abs(full))) > 0
    return full, np.trace(full, axis1=-2, axis2=-1) / full.shape[-1]


# Complementary (trace, vmap) pairs: every model runs all four combinations once, two in each
# dtype, and the split alternates over the models so that every (dtype, trace, vmap) triple
# appears too (8 compilations per model would double this file's CPU time).
_PAIRS = ((("full", "novmap"), ("trace", "vmap0")), (("full", "vmap0"), ("trace", "novmap")))


def _grid() -> list:
  out = []
  for i, name in enumerate(MODELS):
    for j, dtype in enumerate(DTYPES):
      for trace, vmap in _PAIRS[(i + j) % 2]:
        out.append(pytest.param(name, dtype, trace, vmap, id=f"{name}-{dtype}-{trace}-{vmap}"))
  return out


@pytest.mark.parametrize("name, dtype, trace, vmap", _grid())
def test_model(name, dtype, trace, vmap):
  expected = _reference(name)[0 if trace == "full" else 1]
  with jax.enable_x64(dtype == "f64"):
    f, params, x1, x2 = _case(name, DTYPES[dtype])
    kernel = ntk_fn(f, implementation="structured_derivatives", trace_axes=TRACE[trace],
                    vmap_axes=VMAP[vmap])
    actual = _jit(lambda a, b, p: kernel(a, b, p), x1, x2, params)
  assert actual.dtype == DTYPES[dtype]
  # float64: rtol 1e-10; float32: max-normalized error <= 1e-4 against the float64 reference.
  assert_ntk_close(actual, expected, dtype=DTYPES[dtype])


def test_reference_trace_matches_reference_ntk(x64):
  """The traced reference derived from the full one is `reference_ntk(trace_axes=(-1,))`."""
  for name in ("flax_tied_embed", "single_head_attention"):
    f, params, x1, x2 = _case(name, np.float64)
    assert_ntk_close(_reference(name)[1], reference_ntk(f, x1, x2, params, trace_axes=(-1,)))


# ---------------------------------------------------------------------------------------------
# jit and grad through the structured kernel.

@pytest.mark.parametrize("name, vmap_axes", [("jax_checkpoint", None), ("flax_embed", 0),
                                             ("single_head_attention", 0)])
def test_jit_and_grad_match_jacobian_contraction(x64, name, vmap_axes):
  f, params, x1, x2 = _case(name, np.float64)
  sd = ntk_fn(f, implementation="structured_derivatives", trace_axes=(), vmap_axes=vmap_axes)
  jc = ntk_fn(f, implementation="jacobian_contraction", trace_axes=(), vmap_axes=vmap_axes)
  assert_ntk_close(jax.jit(sd)(x1, x2, params), _reference(name)[0])
  weights = jnp.asarray(np.random.default_rng(5).standard_normal(_reference(name)[0].shape))

  def loss(kernel):
    return lambda p: jnp.sum(weights * jnp.tanh(kernel(x1, x2, p)))

  g_sd = _jit(jax.grad(loss(sd)), params)
  g_jc = _jit(jax.grad(loss(jc)), params)
  assert jax.tree_util.tree_structure(g_sd) == jax.tree_util.tree_structure(g_jc)
  leaves_sd, leaves_jc = jax.tree_util.tree_leaves(g_sd), jax.tree_util.tree_leaves(g_jc)
  scale = max(float(np.max(np.abs(b))) for b in leaves_jc)
  assert scale > 0
  for a, b in zip(leaves_sd, leaves_jc):  # (The last layer's bias has zero gradient.)
    assert a.dtype == jnp.float64
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * scale)
