"""Property test: structured derivatives == `reference_ntk` on random layer stacks.

A small grammar composes per-example networks on images (H, W, C), sequences (T, D) or vectors
(D,): dense layers (on the last axis), convolutions with random window/strides/padding/
dilation/groups (depthwise included), max and average pooling, layer norm, single-head softmax
attention, residual connections around shape-preserving layers, shared weights (a dense or conv
layer re-uses an earlier layer's parameters when the shapes allow), and `lax.scan` over a stack
of identical dense blocks; then flatten or global pooling, and a dense head. Each draw also
picks batch sizes, trace_axes in {(), (-1,)} and vmap_axes in {None, 0}, and checks the
float64 structured kernel against the brute-force reference (rtol 1e-10).

Deterministic (`derandomize=True`) and small (widths <= 6, images <= 6x6, N <= 3) so that the
25 draws take about a minute of CPU; the kernel is jit-compiled at XLA optimization level 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from jax import lax

from ntk_zoo import ntk_fn
from ntk_zoo.testing import assert_ntk_close, reference_ntk

MAX_WIDTH = 6
ACTIVATIONS = {"tanh": jnp.tanh, "gelu": jax.nn.gelu, "relu": jax.nn.relu, "none": lambda h: h}


def _jit(fn, *args):
  """fn(*args) under `jax.jit`, compiled at XLA optimization level 0 (cheap compiles)."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


# ---------------------------------------------------------------------------------------------
# The grammar. A network is a tuple of layer specs (plain tuples, printed on failure); shared
# parameter keys appear in several layers.
#
# Each case (architecture, batch sizes, trace/vmap axes, values) is drawn from a numpy
# generator seeded by one hypothesis integer: with only 25 draws, hypothesis' choice-by-choice
# exploration gave runs of near-identical networks differing in their last choices (17 distinct
# architectures, 3 of them convolutional); distinct seeds give 25 different cases. The failing
# case is printed (`note`) and replayed by its seed.


class _Chooser:
  """Architecture choices from one seed."""

  def __init__(self, seed: int):
    self._rng = np.random.default_rng(seed)

  def integer(self, lo: int, hi: int) -> int:  # Inclusive.
    return int(self._rng.integers(lo, hi + 1))

  def choice(self, options):
    return options[int(self._rng.integers(len(options)))]

  def coin(self, p: float = 0.5) -> bool:
    return bool(self._rng.random() < p)


def _out_size(n: int, k: int, s: int, pad, d: int = 1) -> int:
  k_eff = (k - 1) * d + 1
  if pad == "SAME":
    return -(-n // s)
  lo, hi = (0, 0) if pad == "VALID" else pad
  return (n + lo + hi - k_eff) // s + 1 if n + lo + hi >= k_eff else 0


def _reuse(r: _Chooser, registry: dict, fits, p: float = 0.7) -> str | None:
  """With probability p, the key of an earlier layer whose parameter signature `fits`."""
  same = [k for k, sig in registry.items() if fits(sig)]
  return r.choice(same) if same and r.coin(p) else None


def _conv_fits(c: int, shape_preserving: bool = False):
  return lambda sig: sig[0][2] * sig[1] == c and (not shape_preserving or sig[0][3] == c)


def _dense_fits(d_in: int, features: int | None = None):
  return lambda sig: sig[0] == d_in and features in (None, sig[1])


def _new_key(registry: dict, signature, prefix: str) -> str:
  key = f"{prefix}{len(registry)}"
  registry[key] = signature
  return key


def _conv(r: _Chooser, shape, convs: dict, shape_preserving: bool = False, share: float = 0.7):
  h, w, c = shape
  key = _reuse(r, convs, _conv_fits(c, shape_preserving), share)
  if key is not None:
    kshape, groups = convs[key]
  else:
    groups = r.choice([g for g in range(1, c + 1) if c % g == 0])  # g == c: depthwise.
    features = c if shape_preserving else groups * r.integer(1, MAX_WIDTH // groups)
    kshape = (r.integer(1, 3), r.integer(1, 3), c // groups, features)
    key = _new_key(convs, (kshape, groups), "conv")
  if shape_preserving:  # Residual branch: SAME, stride 1, as many features as channels.
    strides, padding, dilation = (1, 1), "SAME", (1, r.integer(1, 2))
  else:
    strides = (r.integer(1, 2), r.integer(1, 2))
    padding = r.choice(["SAME", "VALID", "explicit"])
    if padding == "explicit":
      padding = ((r.integer(0, 1), r.integer(0, 1)), (r.integer(0, 1), r.integer(0, 1)))
    dilation = (r.integer(1, 2), r.integer(1, 2))
  ph, pw = (padding, padding) if isinstance(padding, str) else padding
  out = (_out_size(h, kshape[0], strides[0], ph, dilation[0]),
         _out_size(w, kshape[1], strides[1], pw, dilation[1]), kshape[3])
  if min(out) < 1:  # Window wider than the padded image: SAME padding instead.
    padding = "SAME"
    out = (-(-h // strides[0]), -(-w // strides[1]), kshape[3])
  return ("conv", key, kshape, strides, padding, dilation, groups,
          r.choice(list(ACTIVATIONS))), out


def _dense(r: _Chooser, shape, denses: dict, features: int | None = None, share: float = 0.7):
  d_in = shape[-1]
  key = _reuse(r, denses, _dense_fits(d_in, features), share)
  if key is None:
    if features is None:  # Often square, so that later layers can share it.
      features = d_in if r.coin(0.5) else r.integer(1, MAX_WIDTH)
    key = _new_key(denses, (d_in, features), "dense")
  d_out = denses[key][1]
  return ("dense", key, d_in, d_out, r.choice(list(ACTIVATIONS))), (*shape[:-1], d_out)


def random_network(r: _Chooser) -> dict:
  """{"in_shape", "layers", "out_shape"}: a random per-example network (shapes w/o batch)."""
  kind = r.choice(["image", "image", "image", "sequence", "sequence", "vector"])
  if kind == "image":
    shape = (r.integer(2, 6), r.integer(2, 6), r.integer(1, 4))
  elif kind == "sequence":
    shape = (r.integer(1, 4), r.integer(1, MAX_WIDTH))
  else:
    shape = (r.integer(1, MAX_WIDTH),)
  in_shape = shape
  denses: dict = {}
  convs: dict = {}
  layers = []
  n_norms = 0
  for i in range(r.integer(1, 4)):
    ops = ["dense", "residual"] + (["layernorm"] if shape[-1] >= 2 else [])
    if len(shape) == 3:
      ops += ["conv", "conv", "pool", "pool", "to_vector"]
      if i == 0:  # Image networks start with a convolution or a pooling.
        ops = ["conv", "pool"]
    else:
      ops += ["scan", "scan"]
    if len(shape) == 2:
      ops += ["attention", "attention"]
    if any(map(_dense_fits(shape[-1]), denses.values())):
      ops += ["shared_dense"] * 3
    if len(shape) == 3 and any(map(_conv_fits(shape[-1]), convs.values())):
      ops += ["shared_conv"] * 3
    op = r.choice(ops)
    if op == "dense":
      layer, shape = _dense(r, shape, denses)
    elif op == "shared_dense":  # An earlier dense layer applied again.
      layer, shape = _dense(r, shape, denses, share=1.0)
    elif op == "shared_conv":
      layer, shape = _conv(r, shape, convs, share=1.0)
    elif op == "conv":
      layer, shape = _conv(r, shape, convs)
    elif op == "residual":
      if len(shape) == 3 and r.coin():
        inner, _ = _conv(r, shape, convs, shape_preserving=True)
      else:
        inner, _ = _dense(r, shape, denses, features=shape[-1])
      layer = ("residual", inner)
    elif op == "layernorm":
      layer = ("layernorm", f"norm{n_norms}", shape[-1])
      n_norms += 1
    elif op == "pool":
      h, w, c = shape
      window = (r.integer(1, min(3, h)), r.integer(1, min(3, w)))
      strides = (r.integer(1, 2), r.integer(1, 2))
      padding = r.choice(["SAME", "VALID"])
      layer = ("pool", r.choice(["max", "avg"]), window, strides, padding)
      shape = (_out_size(h, window[0], strides[0], padding),
               _out_size(w, window[1], strides[1], padding), c)
    elif op == "to_vector":
      h, w, c = shape
      how = r.choice(["flatten", "mean"]) if h * w * c <= 4 * MAX_WIDTH else "mean"
      layer = ("to_vector", how)
      shape = (h * w * c,) if how == "flatten" else (c,)
    elif op == "attention":
      layer = ("attention", f"attention{len(layers)}", shape[-1])
    else:  # scan
      layer = ("scan", f"scan{len(layers)}", r.integer(1, 3), shape[-1])
    layers.append(layer)
  head, out_shape = _dense(r, shape, denses, features=r.integer(1, 3))
  layers.append(head)
  return {"in_shape": in_shape, "layers": tuple(layers), "out_shape": out_shape}


# ---------------------------------------------------------------------------------------------
# Building and running a network.

def _param_shapes(layers) -> dict:
  shapes: dict = {}
  for layer in layers:
    kind = layer[0]
    if kind == "residual":
      shapes.update(_param_shapes((layer[1],)))
    elif kind == "dense":
      _, key, d_in, d_out, _ = layer
      shapes[key] = {"w": (d_in, d_out), "b": (d_out,)}
    elif kind == "conv":
      _, key, kshape, *_ = layer
      shapes[key] = {"w": kshape, "b": (kshape[-1],)}
    elif kind == "layernorm":
      shapes[layer[1]] = {"scale": (layer[2],), "bias": (layer[2],)}
    elif kind == "attention":
      d = layer[2]
      shapes[layer[1]] = {name: (d, d) for name in ("q", "k", "v", "o")}
    elif kind == "scan":
      _, key, depth, d = layer
      shapes[key] = {"w": (depth, d, d), "b": (depth, d)}
  return shapes


def _init(shapes: dict, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  params = {}
  for key, group in shapes.items():
    params[key] = {}
    for name, shape in group.items():
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      scale = 0.3 if name in ("b", "bias") else 1.0 / np.sqrt(max(fan_in, 1))
      value = scale * rng.standard_normal(shape)
      if name == "scale":
        value = 1.0 + value
      params[key][name] = jnp.asarray(value, jnp.float64)
  return params


def _apply_layer(p: dict, layer, h):
  kind = layer[0]
  if kind == "dense":
    _, key, _, _, act = layer
    return ACTIVATIONS[act](h @ p[key]["w"] + p[key]["b"])
  if kind == "conv":
    _, key, _, strides, padding, dilation, groups, act = layer
    y = lax.conv_general_dilated(h, p[key]["w"], strides, padding, rhs_dilation=dilation,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=groups, precision=lax.Precision.HIGHEST)
    return ACTIVATIONS[act](y + p[key]["b"])
  if kind == "residual":
    return h + _apply_layer(p, layer[1], h)
  if kind == "layernorm":
    mu = jnp.mean(h, -1, keepdims=True)
    var = jnp.mean((h - mu) ** 2, -1, keepdims=True)
    return (h - mu) * lax.rsqrt(var + 1e-3) * p[layer[1]]["scale"] + p[layer[1]]["bias"]
  if kind == "pool":
    _, how, window, strides, padding = layer
    pool = nn.max_pool if how == "max" else nn.avg_pool
    return pool(h, window, strides=strides, padding=padding)
  if kind == "to_vector":
    return h.reshape(h.shape[0], -1) if layer[1] == "flatten" else jnp.mean(h, axis=(1, 2))
  if kind == "attention":
    a = p[layer[1]]
    q, k, v = h @ a["q"], h @ a["k"], h @ a["v"]
    att = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / np.sqrt(h.shape[-1]), axis=-1)
    return jnp.einsum("nts,nsd->ntd", att, v) @ a["o"]
  if kind == "scan":
    s = p[layer[1]]

    def block(carry, wb):
      w, b = wb
      return jnp.tanh(carry @ w + b), None

    return lax.scan(block, h, (s["w"], s["b"]))[0]
  raise ValueError(f"unknown layer {layer!r}")


def network_fn(layers):
  def f(params, x):
    h = x
    for layer in layers:
      h = _apply_layer(params, layer, h)
    return h
  return f


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_structured_matches_reference_on_random_networks(seed):
  _check_random_network(seed)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_structured_matches_reference_on_more_random_networks(seed):
  _check_random_network(seed)


def _check_random_network(seed):
  r = _Chooser(seed)
  net = random_network(r)
  n1, n2 = r.integer(1, 3), r.integer(1, 3)
  trace_axes, vmap_axes = r.choice([(), (-1,)]), r.choice([None, 0])
  note(f"network: {net}\nn1={n1} n2={n2} trace_axes={trace_axes} vmap_axes={vmap_axes}")
  with jax.enable_x64(True):
    f = network_fn(net["layers"])
    params = _init(_param_shapes(net["layers"]), seed)
    rng = np.random.default_rng(seed + 1)
    x1 = jnp.asarray(rng.standard_normal((n1, *net["in_shape"])))
    x2 = jnp.asarray(rng.standard_normal((n2, *net["in_shape"])))
    assert jax.eval_shape(f, params, x1).shape == (n1, *net["out_shape"])
    kernel = ntk_fn(f, implementation="structured_derivatives", trace_axes=trace_axes,
                    vmap_axes=vmap_axes)
    actual = _jit(lambda a, b, p: kernel(a, b, p), x1, x2, params)
    expected = reference_ntk(f, x1, x2, params, trace_axes=trace_axes)
    assert actual.dtype == jnp.float64
    assert_ntk_close(actual, expected)
